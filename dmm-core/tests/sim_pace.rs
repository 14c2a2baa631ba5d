// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The balloon's pace on the simulation mechanism: what the balloon is not
//! asked for is swapped at once; a guest that gives pages slowly, or gives
//! the host nothing net, gets swap help long before its deadline (and keeps
//! its target); a guest that keeps pace, by ballooning or by free page
//! reports, gets no swapping at all; nothing the guest wrote is lost.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dmm::vm::{BalloonPush, GuestRange, GuestStats, PolicySet, ReleaseReason, Vm, VmConfig};

const PS: u64 = 4096;
const PAGES: u64 = 512;
const POOL: u64 = 128;

/// A VM of `PAGES` pages, every page written with its own content.
fn filled(policies: &str, dir: &tempfile::TempDir) -> Arc<Vm> {
    let vm = Vm::new_sim(VmConfig {
        swap_path: Some(dir.path().join("swap")),
        policies: PolicySet::parse(policies).unwrap(),
        ..VmConfig::new("sim-pace", PAGES * PS)
    })
    .unwrap();
    for pfn in 0..PAGES {
        vm.sim_write(pfn, 0, &content(pfn)).unwrap();
    }
    vm
}

fn content(pfn: u64) -> Vec<u8> {
    let mut p = vec![0u8; PS as usize];
    for (i, c) in p.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(pfn << 32 | i as u64 | 1).to_le_bytes());
    }
    p
}

/// A guest giving `chunk` pages every `period`, from the top of RAM down,
/// as balloon pages (reporting `actual`) or as free page reports, until it
/// gave `total` or is stopped. Returns the first pfn it gave.
fn guest(
    vm: &Arc<Vm>,
    reason: ReleaseReason,
    chunk: u64,
    period: Duration,
    total: u64,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<u64> {
    let (vm, stop) = (vm.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut given = 0;
        while given < total && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(period);
            let n = chunk.min(total - given);
            given += n;
            let range = GuestRange {
                gpa: (PAGES - given) * PS,
                len: n * PS,
            };
            vm.release(&[range], reason).unwrap();
            if reason == ReleaseReason::Balloon {
                vm.set_balloon_actual(u32::try_from(given).unwrap());
            }
        }
        PAGES - given
    })
}

/// Waits until resident (with in-flight) is within the pool; returns how
/// long it took.
fn reach(vm: &Vm, t0: Instant, timeout: Duration) -> Duration {
    loop {
        let s = vm.stats();
        if s.resident_pages + s.inflight_pages <= POOL {
            break;
        }
        assert!(t0.elapsed() < timeout, "pool not reached: {:?}", vm.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

#[test]
fn a_slow_balloon_gets_swap_help_before_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let vm = filled("balloon,swap", &dir);
    let _device = vm.subscribe_balloon();
    vm.set_balloon_deadline(Duration::from_secs(3));
    let stop = Arc::new(AtomicBool::new(false));
    vm.set_pool_size(POOL * PS).unwrap();
    // 40 pages/s: about 120 of the 384 pages by the deadline.
    let g = guest(
        &vm,
        ReleaseReason::Balloon,
        2,
        Duration::from_millis(50),
        PAGES - POOL,
        &stop,
    );
    std::thread::sleep(Duration::from_millis(1000));
    let s = vm.stats();
    stop.store(true, Ordering::Relaxed);
    let first_given = g.join().unwrap();
    // A third of the way to the deadline swap covers what the balloon will
    // miss; the balloon keeps its whole target and is still working.
    assert!(s.swapped_pages >= 200, "{s:?}");
    assert!(s.reclaimed_balloon_bytes > 0, "{s:?}");
    assert_eq!(s.balloon_target_pages, PAGES - POOL, "{s:?}");
    assert_eq!(s.reclaim_behind, 0, "{s:?}");
    for pfn in 0..first_given {
        assert_eq!(vm.sim_read(pfn).unwrap(), content(pfn), "pfn {pfn}");
    }
}

#[test]
fn a_balloon_giving_the_host_nothing_gets_swap_at_once() {
    // The guest balloons free pages the host never held: it zero-fills each
    // (init_on_alloc) and releases it, busy but net zero.
    let dir = tempfile::tempdir().unwrap();
    let vm = filled("balloon,swap", &dir);
    let held = 3 * PAGES / 4;
    vm.release(
        &[GuestRange {
            gpa: held * PS,
            len: (PAGES - held) * PS,
        }],
        ReleaseReason::Balloon,
    )
    .unwrap();
    vm.reclaim_back(&[GuestRange {
        gpa: held * PS,
        len: (PAGES - held) * PS,
    }])
    .unwrap();
    let _device = vm.subscribe_balloon();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    vm.set_pool_size(POOL * PS).unwrap();
    let g = {
        let (vm, stop) = (vm.clone(), stop.clone());
        std::thread::spawn(move || {
            for (i, pfn) in (held..PAGES).rev().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
                vm.sim_write(pfn, 0, &[0u8; PS as usize]).unwrap();
                let range = GuestRange {
                    gpa: pfn * PS,
                    len: PS,
                };
                vm.release(&[range], ReleaseReason::Balloon).unwrap();
                vm.set_balloon_actual(u32::try_from(i + 1).unwrap());
            }
        })
    };
    let took = reach(&vm, t0, Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    g.join().unwrap();
    let s = vm.stats();
    // The default deadline is 5 s: swap did not wait for it.
    assert!(took < Duration::from_secs(2), "took {took:?}: {s:?}");
    assert!(s.swapped_pages >= held - POOL - 8, "{s:?}");
    for pfn in 0..held {
        assert_eq!(vm.sim_read(pfn).unwrap(), content(pfn), "pfn {pfn}");
    }
}

#[test]
fn what_the_balloon_is_not_asked_for_is_swapped_at_once() {
    // 128 MiB guest, all written, pool 32 MiB; the guest has 100 MiB
    // available: the balloon is asked for 36 MiB (64 MiB reserve), swap
    // takes the other 60 MiB without waiting for the balloon's pace.
    let dir = tempfile::tempdir().unwrap();
    let pages = 32768;
    let vm = Vm::new_sim(VmConfig {
        swap_path: Some(dir.path().join("swap")),
        policies: PolicySet::parse("balloon,swap").unwrap(),
        ..VmConfig::new("sim-pace", pages * PS)
    })
    .unwrap();
    for pfn in 0..pages {
        vm.sim_write(pfn, 0, &content(pfn)).unwrap();
    }
    let _device = vm.subscribe_balloon();
    let mut values = std::collections::BTreeMap::new();
    values.insert("available-memory".to_owned(), 100 << 20);
    vm.set_guest_stats(dmm::vm::GuestStats { values });
    vm.set_pool_size(32 << 20).unwrap();
    vm.run_policies();
    let s = vm.stats();
    assert_eq!(s.balloon_target_pages, (36 << 20) / PS, "{s:?}");
    // (More only if the policy thread judged the silent balloon meanwhile.)
    assert!(s.swapped_pages >= (60 << 20) / PS, "{s:?}");
    assert!(s.resident_pages <= (68 << 20) / PS, "{s:?}");
}

/// The guest gives the whole excess by `reason`, 48 pages every 25 ms
/// (balloon) or 30 ms (reports): the 384 pages in about 0.2 s, well on
/// pace. Returns the VM once the pool is reached and the guest is done.
fn guest_on_pace(policies: &str, reason: ReleaseReason, dir: &tempfile::TempDir) -> Arc<Vm> {
    let vm = filled(policies, dir);
    let _device = vm.subscribe_balloon();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    vm.set_pool_size(POOL * PS).unwrap();
    let period = if reason == ReleaseReason::Balloon {
        25
    } else {
        30
    };
    let g = guest(
        &vm,
        reason,
        48,
        Duration::from_millis(period),
        PAGES - POOL,
        &stop,
    );
    reach(&vm, t0, Duration::from_secs(8));
    g.join().unwrap();
    vm.run_policies();
    vm
}

#[test]
fn a_balloon_on_pace_gets_no_swapping() {
    let dir = tempfile::tempdir().unwrap();
    let vm = guest_on_pace("balloon,swap", ReleaseReason::Balloon, &dir);
    let s = vm.stats();
    assert_eq!(s.swap_outs, 0, "{s:?}");
    assert_eq!(s.reclaimed_balloon_bytes, (PAGES - POOL) * PS, "{s:?}");
    for pfn in 0..POOL {
        assert_eq!(vm.sim_read(pfn).unwrap(), content(pfn), "pfn {pfn}");
    }
}

#[test]
fn free_page_reports_on_pace_mean_no_swapping() {
    // Scenario (ii) of the pool benchmark: the guest freed most of its RAM;
    // its reports keep pace although the balloon gives nothing.
    let dir = tempfile::tempdir().unwrap();
    let vm = guest_on_pace("balloon,swap,report", ReleaseReason::Report, &dir);
    let s = vm.stats();
    assert_eq!(s.swap_outs, 0, "{s:?}");
    assert_eq!(s.reported_pages, PAGES - POOL, "{s:?}");
}

/// The device's next free page hint request, waiting at most a second.
fn hint_round(rx: &std::sync::mpsc::Receiver<BalloonPush>) -> Option<u32> {
    let until = Instant::now() + Duration::from_secs(1);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(BalloonPush::FreePageHint { round }) => return Some(round),
            Ok(BalloonPush::Target(_)) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Guest statistics saying `free` pages are free.
fn free_stats(free: u64) -> GuestStats {
    GuestStats {
        values: [("free-memory".to_string(), free * PS)]
            .into_iter()
            .collect(),
    }
}

#[test]
fn a_shrink_finds_hinted_free_memory_before_it_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let vm = filled("balloon,zero,swap", &dir);
    let free = PAGES / 2;
    let device = vm.subscribe_balloon();
    let t0 = Instant::now();
    vm.set_pool_size(POOL * PS).unwrap();
    // The guest's statistics after the pool change: half its RAM is free,
    // and the host holds all of it: worth a round.
    vm.set_guest_stats(free_stats(free));
    let round = hint_round(&device).expect("a hint round is asked");
    assert!(round >= 2, "virtio reserves rounds 0 and 1: {round}");
    // The driver takes the free half as blocks, zeroing them as it
    // allocates them (init_on_alloc), and hints them.
    for pfn in 0..free {
        vm.sim_write(pfn, 0, &vec![0u8; PS as usize]).unwrap();
    }
    vm.release(
        &[GuestRange {
            gpa: 0,
            len: free * PS,
        }],
        ReleaseReason::Hint,
    )
    .unwrap();
    assert_eq!(vm.stats().swap_outs, 0, "{:?}", vm.stats());
    vm.hint_done(round, free);
    // The rest of the excess goes to swap: only memory the guest uses.
    reach(&vm, t0, Duration::from_secs(3));
    let s = vm.stats();
    // The zero scanner may meet some of those pages first.
    assert_eq!(
        s.reclaimed_hint_bytes + s.reclaimed_zero_bytes,
        free * PS,
        "{s:?}"
    );
    assert!(s.swap_outs <= PAGES - free - POOL + 64, "{s:?}");
    assert_eq!(s.hint_rounds, 1, "one round per pool change: {s:?}");
    for pfn in free..PAGES {
        assert_eq!(vm.sim_read(pfn).unwrap(), content(pfn), "pfn {pfn}");
    }
    for pfn in 0..free {
        assert!(
            vm.sim_read(pfn).unwrap().iter().all(|&b| b == 0),
            "pfn {pfn}"
        );
    }
}

#[test]
fn no_round_when_the_host_holds_none_of_the_free_memory() {
    // A guest whose free memory the host never populated: a round would
    // make it zero (and the host fill) every free block for nothing.
    let dir = tempfile::tempdir().unwrap();
    let vm = filled("balloon,zero,swap,report", &dir);
    let populated = PAGES / 2;
    vm.release(
        &[GuestRange {
            gpa: populated * PS,
            len: (PAGES - populated) * PS,
        }],
        ReleaseReason::Report,
    )
    .unwrap();
    let device = vm.subscribe_balloon();
    vm.set_pool_size(POOL * PS).unwrap();
    vm.set_guest_stats(free_stats(PAGES - populated));
    assert_eq!(hint_round(&device), None, "{:?}", vm.stats());
    assert_eq!(vm.stats().hint_rounds, 0);
}

#[test]
fn a_hint_round_without_an_answer_holds_swap_no_longer_than_a_silent_balloon() {
    let dir = tempfile::tempdir().unwrap();
    let vm = filled("balloon,zero,swap", &dir);
    let device = vm.subscribe_balloon();
    let t0 = Instant::now();
    vm.set_pool_size(POOL * PS).unwrap();
    assert!(hint_round(&device).is_some());
    // No hint-done ever comes, nothing is given: judged at the horizon.
    let took = reach(&vm, t0, Duration::from_secs(5));
    assert!(took < Duration::from_millis(1400), "swap waited {took:?}");
    assert!(vm.stats().swap_outs > 0);
}
