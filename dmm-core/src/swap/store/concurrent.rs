// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The store's lock and its file I/O: loads never wait for a write or a
//! punch, and loads, stores and releases of the same slots at the same time
//! never free, reuse or punch a slot under a read or write of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{Io, SwapStore};
use crate::Error;

/// Long enough for anything that is not stuck.
const STUCK: Duration = Duration::from_secs(10);

/// A page distinct per `seed`: compressible text for even seeds, noise for odd.
fn page(seed: u64) -> Vec<u8> {
    if seed % 2 == 0 {
        let mut p = Vec::with_capacity(4096);
        let mut i = 0;
        while p.len() < 4096 {
            p.extend_from_slice(format!("page {seed} line {i}: lorem ipsum\n").as_bytes());
            i += 1;
        }
        p.truncate(4096);
        return p;
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn store(dir: &tempfile::TempDir, pages: u64, compress: bool) -> Arc<SwapStore> {
    let s = SwapStore::open(&dir.path().join("swap"), pages * 4096, 4096, false)
        .unwrap()
        .with_compression(compress);
    Arc::new(s)
}

fn set_hook(s: &SwapStore, hook: impl Fn(Io) + Send + Sync + 'static) {
    *s.io_hook.lock().unwrap() = Some(Arc::new(hook));
}

fn clear_hook(s: &SwapStore) {
    *s.io_hook.lock().unwrap() = None;
}

fn load(s: &SwapStore, slot: u64) -> Vec<u8> {
    let mut buf = vec![0; 4096];
    s.load(slot, &mut buf).unwrap();
    buf
}

/// Holds the file operations `pick` chooses: each one reports on `held`
/// and waits for a message on `go` (without the store's lock, if the
/// store is right).
struct Gate {
    held: Receiver<Io>,
    go: Sender<()>,
}

fn gate(s: &SwapStore, pick: impl Fn(Io) -> bool + Send + Sync + 'static) -> Gate {
    let (held_tx, held) = channel();
    let (go, go_rx) = channel::<()>();
    let (held_tx, go_rx) = (Mutex::new(held_tx), Mutex::new(go_rx));
    set_hook(s, move |io| {
        if pick(io) {
            let _ = held_tx.lock().unwrap().send(io);
            let _ = go_rx.lock().unwrap().recv_timeout(STUCK);
        }
    });
    Gate { held, go }
}

/// Runs `f` on another thread; its result, or a panic naming `what` when
/// it does not come back (it waits for the store's lock).
fn unblocked<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(STUCK) {
        Ok(v) => v,
        Err(_) => panic!("{what} waited for a file operation of another thread"),
    }
}

/// A swap-out batch whose every write is held: while each one is under
/// way a swap-in of another slot, the counters, a release and a store that
/// finds an identical page all go on (they would wait for the lock if the
/// write held it).
#[test]
fn loads_go_on_while_a_store_batch_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 64, false);
    let a = s.store(&page(1)).unwrap();
    let doomed = s.store(&page(3)).unwrap();
    let shared = s.store(&page(5)).unwrap();
    let g = gate(&s, |io| matches!(io, Io::Write(_)));
    let batch = 16;
    let writer = {
        let s = Arc::clone(&s);
        thread::spawn(move || {
            (0..batch)
                .map(|i| s.store(&page(100 + 2 * i)).unwrap())
                .collect::<Vec<_>>()
        })
    };
    for i in 0..batch {
        let io = g
            .held
            .recv_timeout(STUCK)
            .expect("the batch reached a write");
        assert!(matches!(io, Io::Write(_)), "{io:?}");
        let s2 = Arc::clone(&s);
        let (buf, stats) = unblocked("a load", move || (load(&s2, a), s2.stats()));
        assert_eq!(buf, page(1));
        let released = u64::from(i > 0);
        assert_eq!(
            stats.used,
            3 - released + i + 1,
            "the slot being written counts"
        );
        if i == 0 {
            let s2 = Arc::clone(&s);
            assert!(unblocked("a release", move || s2.release(doomed)));
            let s2 = Arc::clone(&s);
            let again = unblocked("a dedup store", move || s2.store(&page(5)).unwrap());
            assert_eq!(again, shared);
        }
        g.go.send(()).unwrap();
    }
    let slots = writer.join().unwrap();
    clear_hook(&s);
    for (i, &slot) in slots.iter().enumerate() {
        assert_eq!(load(&s, slot), page(100 + 2 * i as u64));
    }
}

/// A page being written is not shared yet: an identical page stored
/// meanwhile takes its own slot, and both read back.
#[test]
fn a_slot_being_written_is_not_shared() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 8, true);
    let fired = AtomicBool::new(false);
    let g = gate(&s, move |io| {
        matches!(io, Io::Write(_)) && !fired.swap(true, Ordering::SeqCst)
    });
    let first = {
        let s = Arc::clone(&s);
        thread::spawn(move || s.store(&page(2)).unwrap())
    };
    g.held.recv_timeout(STUCK).unwrap();
    let s2 = Arc::clone(&s);
    let second = unblocked("a second store", move || s2.store(&page(2)).unwrap());
    clear_hook(&s);
    g.go.send(()).unwrap();
    let first = first.join().unwrap();
    assert_ne!(first, second);
    assert_eq!(load(&s, first), page(2));
    assert_eq!(load(&s, second), page(2));
    assert_eq!(s.stats().dedup_hits, 0);
}

/// Punching freed extents runs without the lock, and none of them is
/// handed out before the punch is done.
#[test]
fn loads_and_stores_go_on_while_extents_are_punched() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 64, false);
    // Raw pages, four to an extent: two extents to free, one kept full.
    let gone: Vec<u64> = (0..8).map(|i| s.store(&page(3 + 2 * i)).unwrap()).collect();
    let keep: Vec<u64> = (0..4)
        .map(|i| s.store(&page(41 + 2 * i)).unwrap())
        .collect();
    for &slot in &gone {
        assert!(s.release(slot));
    }
    let before = s.allocated_bytes();
    let g = gate(&s, |io| io == Io::Punch);
    let trim = {
        let s = Arc::clone(&s);
        thread::spawn(move || s.trim())
    };
    g.held.recv_timeout(STUCK).unwrap();
    let s2 = Arc::clone(&s);
    let first = keep[0];
    let (buf, fresh) = unblocked("a load and a store", move || {
        (load(&s2, first), s2.store(&page(99)).unwrap())
    });
    assert_eq!(buf, page(41));
    // The free extents are being punched: the new page took a new one.
    assert!(fresh > *keep.iter().max().unwrap(), "slot {fresh}");
    clear_hook(&s);
    g.go.send(()).unwrap();
    trim.join().unwrap();
    assert!(s.allocated_bytes() < before, "punched");
    assert_eq!(load(&s, fresh), page(99));
    // Once punched, the extents are handed out again (after the new
    // extent's free slots).
    let more: Vec<u64> = (0..4)
        .map(|i| s.store(&page(201 + 2 * i)).unwrap())
        .collect();
    assert!(gone.contains(&more[3]), "{more:?}");
    for (i, &slot) in more.iter().enumerate() {
        assert_eq!(load(&s, slot), page(201 + 2 * i as u64));
    }
}

/// A dedup compare reads a slot while its last user releases it: the slot
/// is freed only after the read (no new page may land in it meanwhile), and
/// it is not shared.
#[test]
fn a_slot_under_a_dedup_compare_is_freed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 8, false);
    let a = s.store(&page(1)).unwrap();
    let g = gate(&s, move |io| io == Io::Read(a));
    let dup = {
        let s = Arc::clone(&s);
        thread::spawn(move || s.store(&page(1)).unwrap())
    };
    g.held.recv_timeout(STUCK).unwrap();
    assert!(s.release(a), "the last user");
    assert_eq!(s.stats().used, 1, "still read: not freed");
    assert!(
        matches!(s.load(a, &mut vec![0; 4096]), Err(Error::State(_))),
        "a released slot holds no page"
    );
    let other = s.store(&page(3)).unwrap();
    assert_ne!(other, a, "a slot under a read was reused");
    clear_hook(&s);
    g.go.send(()).unwrap();
    let d = dup.join().unwrap();
    assert_eq!(load(&s, d), page(1));
    assert_eq!(load(&s, other), page(3));
    let st = s.stats();
    assert_eq!((st.used, st.dedup_hits), (2, 0), "{st:?}");
    assert!(s.release(d) && s.release(other));
    assert_eq!(s.stats().used, 0);
}

/// Threads store, load and release pages of a few contents at once, so
/// that they share slots (dedup), free them under each other's reads and
/// get them reused, with a trimmer punching freed extents; file operations
/// are slowed down at random to widen every window. Every load must give
/// back its page, and at the end the store must be empty.
#[test]
fn loads_stores_releases_on_the_same_slots_at_once() {
    const THREADS: u64 = 4;
    const OPS: u64 = 3000;
    const CONTENTS: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 40, true);
    let calls = AtomicU64::new(0);
    set_hook(&s, move |_| {
        match calls.fetch_add(1, Ordering::Relaxed) % 7 {
            0 => thread::sleep(Duration::from_micros(30)),
            1 | 2 => thread::yield_now(),
            _ => {}
        }
    });
    let done = Arc::new(AtomicBool::new(false));
    let trimmer = {
        let (s, done) = (Arc::clone(&s), Arc::clone(&done));
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                s.trim();
                let _ = s.stats();
                thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                let mut rng = 0x2545_F491_4F6C_DD1D_u64 ^ (t + 1).wrapping_mul(0x9E37_79B9);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut held: Vec<(u64, u64)> = Vec::new();
                let mut buf = vec![0u8; 4096];
                for _ in 0..OPS {
                    let r = next();
                    match r % 10 {
                        0..=3 if held.len() < 10 => {
                            let seed = next() % CONTENTS;
                            match s.store(&page(seed)) {
                                Ok(slot) => held.push((slot, seed)),
                                Err(Error::SwapFull { .. }) => {}
                                Err(e) => panic!("store: {e}"),
                            }
                        }
                        0..=7 if !held.is_empty() => {
                            let (slot, seed) = held[(r >> 8) as usize % held.len()];
                            s.load(slot, &mut buf).unwrap();
                            assert!(buf == page(seed), "slot {slot}: not page {seed}");
                        }
                        _ if !held.is_empty() => {
                            let (slot, _) = held.swap_remove((r >> 8) as usize % held.len());
                            s.release(slot);
                        }
                        _ => {}
                    }
                }
                for (slot, seed) in held {
                    s.load(slot, &mut buf).unwrap();
                    assert!(buf == page(seed), "slot {slot}: not page {seed}");
                    s.release(slot);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    trimmer.join().unwrap();
    let st = s.stats();
    assert_eq!(
        (st.used, st.compressed, st.stored_bytes, st.corrupt),
        (0, 0, 0, 0),
        "{st:?}"
    );
    assert!(st.dedup_hits > 0, "no slot was shared: {st:?}");
    s.trim();
    assert_eq!(s.allocated_bytes(), 0, "every extent punched");
}
