// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The page-ownership protocol (`docs/architecture.md`, "Page ownership") on
//! a real memfd and userfaultfd, every actor on the same few pages at once:
//! writers and a reader (the guest: every access checks the page's version),
//! balloon releases and take-backs, free page reports, and the policy thread
//! swapping out and zero-reclaiming under a pool far below the working set
//! (so writes meet write-protected pages and reads swap pages in).
//!
//! The guest's rules, modelled honestly: each page has a guest-side lock. A
//! writer holds it while it checks and rewrites the page; a releaser holds it
//! from before the release until it has taken the page back (`reclaim_back`
//! after the balloon; nothing after a report, whose pages the guest reuses at
//! once) and read it back as zeros, then versions go on from there. Every
//! fourth version is all zeros, so zero reclaim meets pages being written.
//!
//! No write may be lost or invented and nothing may hang: a watchdog fails
//! the test with the page states when nothing progresses for 10 s.
//! `DMM_STRESS_SECS` sets the run time (default 60 s).

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dmm::model::PageState;
use dmm::vm::{GuestRange, ReleaseReason, Stats, Vm};

mod common;
use common::swap_guest;

const PS: u64 = 4096;
const WORDS: usize = (PS / 8) as usize;
/// All of guest RAM: every actor works on these pages.
const PAGES: u64 = 32;
/// Longest release, in pages.
const RUN: u64 = 4;
/// No progress for this long is a hang.
const STALL: Duration = Duration::from_secs(10);

/// What every word of `pfn` holds at version `ver`: zeros at every fourth.
fn word(pfn: u64, ver: u64) -> u64 {
    if ver % 4 == 0 {
        0
    } else {
        (pfn << 40) | ver
    }
}

/// The first zero version after `ver` (a page given up reads zeros after).
fn zero_after(ver: u64) -> u64 {
    (ver / 4 + 1) * 4
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The actors, for the watchdog's report.
const ACTORS: [&str; 6] = ["writer0", "writer1", "reader", "balloon", "report", "pool"];

#[derive(Default)]
struct Counts {
    writes: AtomicU64,
    reads: AtomicU64,
    balloon_pages: AtomicU64,
    report_pages: AtomicU64,
    /// Pages a take-back left Ballooned: another thread held them for a
    /// moment (a late write-protect fault); they fill on touch all the same.
    take_backs_ignored: AtomicU64,
    pool_changes: AtomicU64,
}

struct Shared {
    vm: Arc<Vm>,
    base: usize,
    /// Guest-side lock of each page, holding the version it must read.
    pages: Vec<Mutex<u64>>,
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
    /// Operations done by every actor (the watchdog looks at it).
    progress: AtomicU64,
    /// What each actor is on now (for the watchdog).
    at: Vec<Mutex<String>>,
    counts: Counts,
}

impl Shared {
    fn ptr(&self, pfn: u64, i: usize) -> *mut u64 {
        assert!(pfn < PAGES && i < WORDS);
        (self.base + (pfn * PS) as usize + i * 8) as *mut u64
    }

    fn lock(&self, pfn: u64) -> MutexGuard<'_, u64> {
        // A failing actor stops the test; its lock still holds the version.
        self.pages[pfn as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn set_at(&self, actor: usize, what: String) {
        *self.at[actor].lock().unwrap() = what;
    }

    fn fail(&self, msg: String) {
        let st = self.vm.page_states(0, PAGES).ok();
        self.failures
            .lock()
            .unwrap()
            .push(format!("{msg}; states {}", states_line(st.as_deref())));
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Reads every word of `pfn` (its guest lock held) and checks version
    /// `ver`; records a failure naming what was found.
    fn check(&self, pfn: u64, ver: u64, what: &str) -> bool {
        let want = word(pfn, ver);
        for i in 0..WORDS {
            // SAFETY: a word of the live mapping; this thread holds the page's guest lock.
            let got = unsafe { self.ptr(pfn, i).read_volatile() };
            if got != want {
                self.fail(format!(
                    "{what}: pfn {pfn} word {i}: want version {ver} ({want:#x}), found {got:#x} \
                     (pfn {} version {})",
                    got >> 40,
                    got & ((1 << 40) - 1)
                ));
                return false;
            }
        }
        self.counts.reads.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn write(&self, pfn: u64, ver: u64) {
        let v = word(pfn, ver);
        for i in 0..WORDS {
            // SAFETY: as in `check`.
            unsafe { self.ptr(pfn, i).write_volatile(v) };
        }
        self.counts.writes.fetch_add(1, Ordering::Relaxed);
    }

    fn tick(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    fn running(&self, until: Instant) -> bool {
        !self.stop.load(Ordering::SeqCst) && Instant::now() < until
    }

    /// A writer: checks a page's version and writes the next one.
    fn writer(&self, actor: usize, until: Instant) {
        let mut x = 0x9e37_79b9_7f4a_7c15 ^ actor as u64;
        while self.running(until) {
            let pfn = xorshift(&mut x) % PAGES;
            self.set_at(actor, format!("locking pfn {pfn}"));
            let mut ver = self.lock(pfn);
            self.set_at(actor, format!("writing pfn {pfn} version {}", *ver + 1));
            if !self.check(pfn, *ver, "write") {
                return;
            }
            self.write(pfn, *ver + 1);
            *ver += 1;
            drop(ver);
            self.tick();
        }
    }

    fn reader(&self, actor: usize, until: Instant) {
        let mut x = 0x1234_5678_9abc_def1;
        while self.running(until) {
            let pfn = xorshift(&mut x) % PAGES;
            self.set_at(actor, format!("locking pfn {pfn}"));
            let ver = self.lock(pfn);
            self.set_at(actor, format!("reading pfn {pfn} version {}", *ver));
            if !self.check(pfn, *ver, "read") {
                return;
            }
            drop(ver);
            self.tick();
        }
    }

    /// Gives up runs of pages (balloon or report) and takes them back.
    fn releaser(&self, actor: usize, reason: ReleaseReason, until: Instant) {
        let mut x = 0xfeed_beef_0000_0001 ^ actor as u64;
        while self.running(until) {
            let n = 1 + xorshift(&mut x) % RUN;
            let first = xorshift(&mut x) % (PAGES - n + 1);
            self.set_at(actor, format!("locking pfns {first}+{n}"));
            // Ascending, like the other releaser: no deadlock.
            let mut guards: Vec<_> = (first..first + n).map(|p| self.lock(p)).collect();
            for (p, ver) in (first..).zip(&guards) {
                if !self.check(p, **ver, "before release") {
                    return;
                }
            }
            let range = [GuestRange {
                gpa: first * PS,
                len: n * PS,
            }];
            self.set_at(actor, format!("releasing pfns {first}+{n} ({reason:?})"));
            let out = self.vm.release(&range, reason).unwrap();
            if (out.pages, out.ignored) != (n, 0) {
                self.fail(format!("release of pfns {first}+{n}: {out:?}"));
                return;
            }
            let given = match reason {
                ReleaseReason::Balloon => PageState::Ballooned,
                ReleaseReason::Report => PageState::Reported,
                ReleaseReason::Hint => unreachable!("the actors balloon and report only"),
            };
            // Done when it returns: the guest may use a reported page at
            // once, so nothing may release it later. (A late write-protect
            // fault may hold a page for a moment, and leaves it as it was.)
            let settled = Instant::now() + Duration::from_secs(1);
            let states = loop {
                let states = self.vm.page_states(first, n).unwrap();
                if !states.contains(&PageState::InFlight) || Instant::now() > settled {
                    break states;
                }
                std::thread::yield_now();
            };
            // A stale MISSING fault answered after the release may refill a
            // page with zeros (Resident or Zero): allowed, since the guest
            // gave the contents up; the content checks still catch loss.
            let ok =
                |s: &PageState| *s == given || matches!(s, PageState::Resident | PageState::Zero);
            if !states.iter().all(ok) {
                self.fail(format!(
                    "pfns {first}+{n} not {given:?} when the release returned: {}",
                    states_line(Some(&states))
                ));
                return;
            }
            let counter = match reason {
                ReleaseReason::Balloon => &self.counts.balloon_pages,
                ReleaseReason::Report => &self.counts.report_pages,
                ReleaseReason::Hint => unreachable!("the actors balloon and report only"),
            };
            counter.fetch_add(n, Ordering::Relaxed);
            // Given up for a moment: the policy thread may look at the pages.
            if xorshift(&mut x) % 2 == 0 {
                std::thread::sleep(Duration::from_micros(xorshift(&mut x) % 200));
            }
            if reason == ReleaseReason::Balloon {
                self.set_at(actor, format!("taking back pfns {first}+{n}"));
                let back = self.vm.reclaim_back(&range).unwrap();
                self.counts
                    .take_backs_ignored
                    .fetch_add(back.ignored, Ordering::Relaxed);
            }
            self.set_at(actor, format!("reading back pfns {first}+{n}"));
            for (p, ver) in (first..).zip(guards.iter_mut()) {
                if !self.check(p, 0, "after release") {
                    return;
                }
                **ver = zero_after(**ver);
            }
            drop(guards);
            self.tick();
        }
    }

    /// Moves the pool around below the working set and runs the policies.
    fn pool(&self, actor: usize, until: Instant) {
        let mut x = 0x5555_aaaa_0f0f_f0f0;
        while self.running(until) {
            let pool = xorshift(&mut x) % (PAGES / 2 + 1);
            self.set_at(actor, format!("pool {pool} pages"));
            self.vm.set_pool_size(pool * PS).unwrap();
            self.counts.pool_changes.fetch_add(1, Ordering::Relaxed);
            for _ in 0..1 + xorshift(&mut x) % 3 {
                self.vm.run_policies();
            }
            std::thread::sleep(Duration::from_micros(xorshift(&mut x) % 2000));
            self.tick();
        }
    }
}

fn states_line(states: Option<&[PageState]>) -> String {
    let Some(states) = states else {
        return "?".into();
    };
    states.iter().map(|s| s.letter()).collect()
}

/// Fails the whole test process (a hung actor cannot be joined) with what
/// every page and actor is doing, when nothing progresses for [`STALL`].
fn watchdog(sh: Arc<Shared>, done: Arc<AtomicBool>) {
    let (mut seen, mut since) = (u64::MAX, Instant::now());
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let now = sh.progress.load(Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, Instant::now());
            continue;
        }
        if since.elapsed() < STALL {
            continue;
        }
        // Straight to fd 2: the test harness's capture dies with the process.
        let mut err = std::io::stderr().lock();
        let states = sh.vm.page_states(0, PAGES).ok();
        let _ = writeln!(
            err,
            "linux_stress: no progress for {STALL:?}\n  states {}",
            states_line(states.as_deref())
        );
        for (pfn, page) in sh.pages.iter().enumerate() {
            let ver = page
                .try_lock()
                .map_or("locked".to_string(), |v| v.to_string());
            let _ = writeln!(err, "  pfn {pfn}: version {ver}");
        }
        for (name, at) in ACTORS.iter().zip(&sh.at) {
            let _ = writeln!(err, "  {name}: {}", at.lock().unwrap());
        }
        let _ = writeln!(err, "  {:?}", sh.vm.stats());
        std::process::exit(1);
    }
}

fn run_secs() -> u64 {
    std::env::var("DMM_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[test]
fn every_actor_on_the_same_pages() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().unwrap();
    let mapped = swap_guest(dir.path(), PAGES * PS, "swap,zero,report", false, "stress");
    let sh = Arc::new(Shared {
        vm: mapped.vm.clone(),
        base: mapped.addr(),
        pages: (0..PAGES).map(|_| Mutex::new(0)).collect(),
        stop: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
        progress: AtomicU64::new(0),
        at: ACTORS.iter().map(|_| Mutex::new(String::new())).collect(),
        counts: Counts::default(),
    });
    let done = Arc::new(AtomicBool::new(false));
    let dog = {
        let (sh, done) = (sh.clone(), done.clone());
        std::thread::spawn(move || watchdog(sh, done))
    };
    let secs = run_secs();
    let until = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for (actor, _) in ACTORS.iter().enumerate() {
            let sh = &*sh;
            s.spawn(move || {
                match actor {
                    0 | 1 => sh.writer(actor, until),
                    2 => sh.reader(actor, until),
                    3 => sh.releaser(actor, ReleaseReason::Balloon, until),
                    4 => sh.releaser(actor, ReleaseReason::Report, until),
                    _ => sh.pool(actor, until),
                }
                sh.set_at(actor, "done".into());
            });
        }
    });
    let failures = sh.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The pool back to all of RAM: nothing in flight once reclaim stops.
    let vm = &sh.vm;
    vm.set_pool_size(PAGES * PS).unwrap();
    vm.run_policies();
    let s = vm.stats();
    assert_eq!(s.inflight_pages, 0, "{s:?}");
    assert_accounting(&s);
    // Every page holds its last version (swapped pages come back).
    for pfn in 0..PAGES {
        let ver = *sh.lock(pfn);
        assert!(sh.check(pfn, ver, "final"), "{:?}", sh.failures.lock());
        sh.tick();
    }
    let s = vm.stats();
    assert_accounting(&s);
    done.store(true, Ordering::SeqCst);
    dog.join().unwrap();

    let c = &sh.counts;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let zero_reclaims = s.reclaimed_zero_bytes / PS;
    eprintln!(
        "linux_stress: {secs} s on {PAGES} pages: {} writes, {} verified reads, {} pages \
         ballooned, {} reported ({} met in flight: waited for the owner), {} take-backs ignored, \
         {} pool changes; \
         {} swap-outs, {} swap-ins, {} zero reclaims, {} wp faults, {} reclaim aborts, \
         {} faults",
        get(&c.writes),
        get(&c.reads),
        get(&c.balloon_pages),
        get(&c.report_pages),
        vm.release_waits(),
        get(&c.take_backs_ignored),
        get(&c.pool_changes),
        s.swap_outs,
        s.swap_ins,
        zero_reclaims,
        s.wp_faults,
        s.reclaim_aborts,
        s.faults,
    );
    // Every actor did its part, on the same pages.
    assert!(get(&c.writes) > 0 && get(&c.reads) > 0, "{s:?}");
    assert!(
        get(&c.balloon_pages) > 0 && get(&c.report_pages) > 0,
        "{s:?}"
    );
    assert!(s.swap_outs > 0 && s.swap_ins > 0, "{s:?}");
    assert!(zero_reclaims > 0 && s.wp_faults > 0, "{s:?}");
    assert!(
        vm.release_waits() > 0,
        "no release met an owned page: {s:?}"
    );
    drop(mapped);
}

/// The model adds up and agrees with the memfd's real allocation.
fn assert_accounting(s: &Stats) {
    assert_eq!(
        s.resident_pages
            + s.unpopulated_pages
            + s.zero_pages
            + s.ballooned_pages
            + s.reported_pages
            + s.swapped_pages
            + s.inflight_pages,
        PAGES,
        "{s:?}"
    );
    assert_eq!(s.resident_pages * PS, s.host_allocated_bytes, "{s:?}");
}
