// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Model check of the page-ownership protocol (`docs/architecture.md`,
//! "Page ownership") with loom: the real [`P2m`] (take, claim, settle,
//! wait_settled, swap slots; under `--cfg loom` its atomics, locks and
//! condvar are loom's, `src/sync.rs`) driven by actors that follow the call
//! sequences of eviction (`policy/evict.rs`), release (`policy/release.rs`),
//! faults and swap-in (`vm/faults.rs`, `evict::swap_in`) and demand fill
//! (`policy/demand.rs`), in every interleaving up to the preemption bound.
//!
//! What a page holds is a loom cell that only its owner may touch (loom
//! fails an access not ordered after the previous owner's). After each
//! interleaving: every page in one settled state, a swap slot iff Swapped
//! and no slot leaked, the counts equal the states, every release done when
//! it returned, what the guest wrote last still there, and no actor blocked
//! for ever (loom fails a deadlock, so a lost wake-up shows).
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" cargo test -p dmm-core --test loom_p2m --target-dir target/loom
//! ```
//!
//! (`LOOM_MAX_PREEMPTIONS`, default 3 here: about 25,000 interleavings in
//! 10 s; 4 takes about ten times longer.)

#![cfg(loom)]
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use dmm::model::p2m::{Claim, Owned, SETTLE_WAIT};
use dmm::model::{P2m, PageState};
use loom::cell::UnsafeCell;
use loom::sync::{Arc, Mutex};
use PageState::*;

/// The VM as the actors see it: the P2M, what each page holds, the swap
/// store, the write faults asking for their page back.
struct World {
    p2m: P2m,
    data: Vec<UnsafeCell<u64>>,
    store: Mutex<(u64, HashMap<u64, u64>)>,
    aborts: Mutex<HashSet<u64>>,
}

impl World {
    /// One page per entry: Resident holding the value, Swapped with the
    /// value in a slot, or Unpopulated.
    fn new(pages: &[(PageState, u64)]) -> Arc<World> {
        let w = World {
            p2m: P2m::new(pages.len() as u64),
            data: pages.iter().map(|_| UnsafeCell::new(0)).collect(),
            store: Mutex::new((0, HashMap::new())),
            aborts: Mutex::new(HashSet::new()),
        };
        for (pfn, &(state, value)) in (0..).zip(pages) {
            if state == Unpopulated {
                continue;
            }
            // Filled, then (swapped) evicted: the table's own paths.
            let page = w.p2m.take(pfn, Unpopulated).unwrap();
            w.write(&page, value);
            page.settle(Resident);
            if state == Swapped {
                let page = w.p2m.take(pfn, Resident).unwrap();
                page.set_swap_slot(w.put(value));
                w.write(&page, 0);
                page.settle(Swapped);
            }
            assert_eq!(w.p2m.get(pfn).unwrap(), state);
        }
        Arc::new(w)
    }

    /// What the owned page holds (the memfd's page).
    fn read(&self, page: &Owned<'_>) -> u64 {
        // SAFETY: a plain u64; loom checks that only the owner touches it.
        self.data[page.pfn() as usize].with(|p| unsafe { *p })
    }

    fn write(&self, page: &Owned<'_>, v: u64) {
        // SAFETY: as in `read`.
        self.data[page.pfn() as usize].with_mut(|p| unsafe { *p = v });
    }

    /// Stores a copy; returns its slot.
    fn put(&self, v: u64) -> u64 {
        let mut s = self.store.lock().unwrap();
        s.0 += 1;
        let slot = s.0;
        s.1.insert(slot, v);
        slot
    }

    fn load(&self, slot: u64) -> u64 {
        *self.store.lock().unwrap().1.get(&slot).unwrap()
    }

    fn free(&self, slot: u64) {
        assert!(self.store.lock().unwrap().1.remove(&slot).is_some());
    }
}

/// Eviction of `pfns` (`evict::evict`): take the resident ones, write-protect
/// and copy them, keep those a writer asked back, punch the others and
/// settle them Zero (all zeros) or Swapped (slot set first).
fn evict(w: &World, pfns: &[u64]) {
    let taken: Vec<Owned<'_>> = pfns
        .iter()
        .filter_map(|&pfn| w.p2m.take(pfn, Resident).ok())
        .collect();
    let copies: Vec<u64> = taken.iter().map(|p| w.read(p)).collect();
    let asked: HashSet<u64> = {
        let mut a = w.aborts.lock().unwrap();
        pfns.iter().copied().filter(|p| a.remove(p)).collect()
    };
    for (page, copy) in taken.into_iter().zip(copies) {
        if asked.contains(&page.pfn()) {
            page.settle(Resident);
        } else if copy == 0 {
            w.write(&page, 0);
            page.settle(Zero);
        } else {
            page.set_swap_slot(w.put(copy));
            w.write(&page, 0);
            page.settle(Swapped);
        }
    }
}

/// A release of `pfns` to `to` (`release::release`): claim each; give up
/// the ones taken; then, owning nothing, wait for each busy page's owner and
/// claim it again.
fn release(w: &World, pfns: &[u64], to: PageState) {
    let mut busy = Vec::new();
    for &pfn in pfns {
        match w.p2m.claim(pfn, to).unwrap() {
            Claim::Taken(page) => give_up(w, page, to),
            Claim::Busy => busy.push(pfn),
            Claim::Ignored(_) => {}
        }
    }
    for pfn in busy {
        loop {
            if w.p2m.wait_settled(pfn, SETTLE_WAIT).unwrap() == InFlight {
                continue;
            }
            match w.p2m.claim(pfn, to).unwrap() {
                Claim::Taken(page) => {
                    give_up(w, page, to);
                    break;
                }
                Claim::Busy => {}
                Claim::Ignored(_) => break,
            }
        }
    }
}

/// Drops the stored copy, punches, settles (`release::give_up`).
fn give_up(w: &World, page: Owned<'_>, to: PageState) {
    if page.from() == Swapped {
        w.free(page.take_swap_slot().unwrap());
    }
    w.write(&page, 0);
    page.settle(to);
}

/// A guest access to `pfn`, a write of `value` or a read (`vm/faults.rs`):
/// an owned page is waited for (a write asks an eviction to give it back); a
/// swapped page is swapped in (slot taken, copy installed, Resident); a page
/// without content is zero-filled; the access itself is made owning the
/// resident page (what write protection and the fault's wake-up order for
/// the real one). Returns what it read.
fn access(w: &World, pfn: u64, value: Option<u64>) -> u64 {
    loop {
        let state = w.p2m.get(pfn).unwrap();
        if state == InFlight {
            if value.is_some() {
                w.aborts.lock().unwrap().insert(pfn);
            }
            w.p2m.wait_settled(pfn, SETTLE_WAIT).unwrap();
            continue;
        }
        let Ok(page) = w.p2m.take(pfn, state) else {
            continue;
        };
        match state {
            Swapped => {
                let slot = page.take_swap_slot().unwrap();
                let v = w.load(slot);
                w.free(slot);
                w.write(&page, v);
                page.settle(Resident);
            }
            Resident => {
                let v = w.read(&page);
                if let Some(n) = value {
                    w.write(&page, n);
                    w.aborts.lock().unwrap().remove(&pfn);
                }
                page.settle(Resident);
                return v;
            }
            _ => {
                w.write(&page, 0);
                page.settle(Resident);
            }
        }
    }
}

/// The end of an interleaving: nothing in flight, a slot iff Swapped and no
/// other slot stored, the counts equal the states. Returns each page's
/// state and what it holds (its slot's copy when swapped).
fn settled(w: &World) -> Vec<(PageState, u64)> {
    let mut out = Vec::new();
    for pfn in 0..w.p2m.pages() {
        let state = w.p2m.get(pfn).unwrap();
        assert_ne!(state, InFlight, "pfn {pfn} left in flight");
        let page = w.p2m.take(pfn, state).unwrap();
        let slot = page.take_swap_slot();
        assert_eq!(
            slot.is_some(),
            state == Swapped,
            "pfn {pfn} {state:?}: slot {slot:?}"
        );
        let held = match slot {
            Some(s) => {
                page.set_swap_slot(s);
                w.load(s)
            }
            None => w.read(&page),
        };
        page.settle(state);
        out.push((state, held));
    }
    let swapped = out.iter().filter(|(s, _)| *s == Swapped).count();
    assert_eq!(w.store.lock().unwrap().1.len(), swapped, "slots leaked");
    for s in PageState::ALL {
        let n = out.iter().filter(|(st, _)| *st == s).count() as u64;
        assert_eq!(w.p2m.counts().get(s), n, "count of {s:?}");
    }
    out
}

/// Checks `f` in every interleaving up to `LOOM_MAX_PREEMPTIONS` (default
/// 3) preemptions; prints how many there were.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    let start = RUNS.load(std::sync::atomic::Ordering::Relaxed);
    b.check(move || {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    let runs = RUNS.load(std::sync::atomic::Ordering::Relaxed) - start;
    eprintln!(
        "loom_p2m: {name}: {runs} interleavings (preemption bound {:?})",
        b.preemption_bound
    );
}

/// The guest reports a page free while it is being evicted, hears back, and
/// writes it at once: the release is done when it returns, and the write
/// stays.
#[test]
fn a_write_right_after_a_release_stays() {
    model("a_write_right_after_a_release_stays", || {
        let w = World::new(&[(Resident, 7)]);
        let evictor = {
            let w = w.clone();
            loom::thread::spawn(move || evict(&w, &[0]))
        };
        release(&w, &[0], Reported);
        assert_eq!(
            w.p2m.get(0).unwrap(),
            Reported,
            "release not done at return"
        );
        access(&w, 0, Some(9));
        evictor.join().unwrap();
        let end = settled(&w);
        assert!(matches!(end[0], (Resident | Swapped, 9)), "{end:?}");
    });
}

/// An eviction of two pages while a write hits one and a read the other:
/// the write asks its page back or lands after the swap-in, the read sees
/// what the page held.
#[test]
fn writes_and_reads_during_eviction() {
    model("writes_and_reads_during_eviction", || {
        let w = World::new(&[(Resident, 7), (Resident, 5)]);
        let evictor = {
            let w = w.clone();
            loom::thread::spawn(move || evict(&w, &[0, 1]))
        };
        let reader = {
            let w = w.clone();
            loom::thread::spawn(move || access(&w, 1, None))
        };
        assert_eq!(access(&w, 0, Some(8)), 7);
        assert_eq!(reader.join().unwrap(), 5);
        evictor.join().unwrap();
        let end = settled(&w);
        assert_eq!((end[0].1, end[1].1), (8, 5), "{end:?}");
    });
}

/// A release meets a swap-in and a fill on its pages (a device or a racing
/// vCPU): each page ends in one place, the swapped page's slot is freed
/// exactly once, what was read is what the page held.
#[test]
fn release_meets_swap_in_and_fill() {
    model("release_meets_swap_in_and_fill", || {
        let w = World::new(&[(Swapped, 5), (Unpopulated, 0)]);
        let swapper = {
            let w = w.clone();
            loom::thread::spawn(move || access(&w, 0, None))
        };
        let filler = {
            let w = w.clone();
            loom::thread::spawn(move || access(&w, 1, None))
        };
        release(&w, &[0, 1], Ballooned);
        let read = swapper.join().unwrap();
        assert!(read == 5 || read == 0, "swap-in read {read}");
        assert_eq!(filler.join().unwrap(), 0);
        let end = settled(&w);
        for (state, held) in &end {
            assert!(matches!(state, Ballooned | Resident), "{end:?}");
            if *state == Ballooned {
                assert_eq!(*held, 0, "{end:?}");
            }
        }
        // A read after the release sees zeros; one before it the data.
        if end[0].0 == Resident {
            assert_eq!(end[0].1, read, "{end:?}");
        }
    });
}

/// The balloon and a report release a page being evicted: both wait for
/// the eviction, the balloon's claim wins whatever the order.
#[test]
fn balloon_and_report_over_an_eviction() {
    model("balloon_and_report_over_an_eviction", || {
        let w = World::new(&[(Resident, 7)]);
        let evictor = {
            let w = w.clone();
            loom::thread::spawn(move || evict(&w, &[0]))
        };
        let reporter = {
            let w = w.clone();
            loom::thread::spawn(move || release(&w, &[0], Reported))
        };
        release(&w, &[0], Ballooned);
        reporter.join().unwrap();
        evictor.join().unwrap();
        let end = settled(&w);
        assert_eq!(end[0], (Ballooned, 0), "{end:?}");
    });
}

/// One eviction batch over two pages while a write hits one and the balloon
/// takes the other: the write stays, the release waits for the batch and is
/// done when it returns.
#[test]
fn a_batch_meets_a_write_and_a_release() {
    model("a_batch_meets_a_write_and_a_release", || {
        let w = World::new(&[(Resident, 7), (Resident, 5)]);
        let evictor = {
            let w = w.clone();
            loom::thread::spawn(move || evict(&w, &[0, 1]))
        };
        let writer = {
            let w = w.clone();
            loom::thread::spawn(move || access(&w, 0, Some(8)))
        };
        release(&w, &[1], Ballooned);
        assert_eq!(
            w.p2m.get(1).unwrap(),
            Ballooned,
            "release not done at return"
        );
        assert_eq!(writer.join().unwrap(), 7);
        evictor.join().unwrap();
        let end = settled(&w);
        assert!(matches!(end[0], (Resident | Swapped, 8)), "{end:?}");
        assert_eq!(end[1], (Ballooned, 0), "{end:?}");
    });
}

/// A settle and a take of the same page back to back while another thread
/// reads the counts (the policy thread's `committed()`): no count ever goes
/// below zero (a settle that counted its page after storing the state let
/// the next owner count it out first: u64::MAX for a moment).
#[test]
fn counts_never_go_below_zero() {
    model("counts_never_go_below_zero", || {
        let w = World::new(&[(Unpopulated, 0)]);
        let filler = {
            let w = w.clone();
            loom::thread::spawn(move || {
                if let Ok(page) = w.p2m.take(0, Unpopulated) {
                    page.settle(Resident);
                }
            })
        };
        let evictor = {
            let w = w.clone();
            loom::thread::spawn(move || {
                if let Ok(page) = w.p2m.take(0, Resident) {
                    page.settle(Zero);
                }
            })
        };
        for _ in 0..2 {
            for s in PageState::ALL {
                // Add-first: during two changes a page counts in at most
                // two places at once, never below zero.
                let n = w.p2m.counts().get(s);
                assert!(n <= 2, "count of {s:?} is {n}");
            }
        }
        filler.join().unwrap();
        evictor.join().unwrap();
        settled(&w);
    });
}
