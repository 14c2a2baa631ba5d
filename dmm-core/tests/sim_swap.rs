// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reclaim on the simulation mechanism: every combination of policies reclaims
//! in cost order and loses no data; writes racing swap-out are never lost; a
//! full swap store keeps pages resident; the balloon gets its deadline before
//! swap, and a missed deadline is an event; device-populated pages win; a
//! corrupt (compressed) swap slot is an error on every touch, never zeros.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dmm::model::PageState;
use dmm::vm::{GuestRange, PolicySet, ReleaseReason, Stats, Vm, VmConfig, VmEvent};
use proptest::prelude::*;

const PS: u64 = 4096;

fn sim(pages: u64, policies: PolicySet, dir: &tempfile::TempDir) -> Arc<Vm> {
    sim_with(pages, policies, dir, false)
}

fn sim_with(
    pages: u64,
    policies: PolicySet,
    dir: &tempfile::TempDir,
    swap_compress: bool,
) -> Arc<Vm> {
    Vm::new_sim(VmConfig {
        swap_path: Some(dir.path().join("swap")),
        swap_compress,
        policies,
        ..VmConfig::new("sim-swap", pages * PS)
    })
    .unwrap()
}

/// Content of page `pfn` at version `v` (never all zeros for v > 0).
fn content(pfn: u64, v: u64) -> Vec<u8> {
    let mut p = vec![0u8; PS as usize];
    if v > 0 {
        for (i, c) in p.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&(pfn << 40 | v << 16 | i as u64).to_le_bytes());
        }
    }
    p
}

fn settled(vm: &Vm) -> Stats {
    // The policy thread may be mid-batch: one run_policies waits for it.
    vm.run_policies();
    vm.stats()
}

/// 64 pages: 0..8 reported free, 8..24 zeros, 24..64 data. Pool -> 16.
#[test]
fn every_policy_combination_reclaims_in_cost_order() {
    for bits in 0u8..16 {
        let set = PolicySet {
            report: bits & 1 != 0,
            share_zero: bits & 2 != 0,
            balloon: bits & 4 != 0,
            swap: bits & 8 != 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let vm = sim(64, set, &dir);
        for pfn in 0..64 {
            let v = u64::from(pfn >= 24);
            vm.sim_write(pfn, 0, &content(pfn, v)).unwrap();
        }
        vm.release(
            &[GuestRange {
                gpa: 0,
                len: 8 * PS,
            }],
            ReleaseReason::Report,
        )
        .unwrap();
        vm.set_pool_size(16 * PS).unwrap();
        let s = settled(&vm);
        let ctx = format!("{set:?}: {s:?}");
        assert_eq!(s.inflight_pages, 0, "{ctx}");
        // Without the report policy the reports are ignored: 0..8 stay zeros.
        let reported = if set.report { 8 } else { 0 };
        assert_eq!(s.reported_pages, reported, "{ctx}");
        let zero = if set.share_zero { 24 - reported } else { 0 };
        if set.share_zero {
            // Zero pages go before any data page is swapped.
            assert_eq!(s.zero_pages, zero, "{ctx}");
        }
        if set.swap {
            assert!(s.resident_pages <= 16, "{ctx}");
            assert!(s.swapped_pages >= 24, "{ctx}");
        } else {
            assert_eq!(s.swapped_pages, 0, "{ctx}");
            assert_eq!(s.resident_pages, 64 - reported - zero, "{ctx}");
        }
        // The simulated memory holds exactly the resident pages.
        assert_eq!(s.host_allocated_bytes, s.resident_pages * PS, "{ctx}");
        for pfn in 8..64 {
            let v = u64::from(pfn >= 24);
            assert_eq!(
                vm.sim_read(pfn).unwrap(),
                content(pfn, v),
                "pfn {pfn} {ctx}"
            );
        }
    }
}

#[test]
fn writes_racing_swap_out_are_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let vm = sim(512, PolicySet::parse("swap").unwrap(), &dir);
    for pfn in 0..512 {
        vm.sim_write(pfn, 0, &content(pfn, 1)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let (vm, stop) = (vm.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = vec![1u64; 512];
                let mut x = 0x2545_f491_4f6c_dd1du64 ^ t;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) || n < 5000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let pfn = (x % 170) * 3 + t;
                    if pfn >= 512 {
                        continue;
                    }
                    n += 1;
                    last[pfn as usize] += 1;
                    vm.sim_write(pfn, 0, &content(pfn, last[pfn as usize]))
                        .unwrap();
                }
                (t, last)
            })
        })
        .collect();
    for round in 0..40 {
        let pool = if round % 2 == 0 { 64 } else { 512 };
        vm.set_pool_size(pool * PS).unwrap();
        vm.run_policies();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let (t, last) = w.join().unwrap();
        for pfn in (t..512).step_by(3) {
            assert_eq!(
                vm.sim_read(pfn).unwrap(),
                content(pfn, last[pfn as usize]),
                "pfn {pfn}"
            );
        }
    }
    let s = vm.stats();
    assert!(s.swap_outs > 0 && s.swap_ins > 0, "{s:?}");
}

#[test]
fn full_store_is_a_clear_error_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let vm = sim(64, PolicySet::parse("swap").unwrap(), &dir);
    for pfn in 0..64 {
        vm.sim_write(pfn, 0, &content(pfn, 7)).unwrap();
    }
    vm.set_swap_size(10 * PS).unwrap();
    vm.set_pool_size(8 * PS).unwrap();
    let s = settled(&vm);
    assert_eq!(s.swapped_pages, 10, "{s:?}");
    assert_eq!(s.resident_pages, 54, "{s:?}");
    assert!(s.swap_full > 0, "{s:?}");
    for pfn in 0..64 {
        assert_eq!(vm.sim_read(pfn).unwrap(), content(pfn, 7), "pfn {pfn}");
    }
    let e = vm.set_swap_size(4097).unwrap_err().to_string();
    assert!(e.contains("4097"), "{e}");
}

#[test]
fn balloon_gets_its_deadline_then_swap_and_behind_is_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let vm = sim(64, PolicySet::parse("balloon,swap").unwrap(), &dir);
    let _device = vm.subscribe_balloon();
    let events = vm.subscribe_events();
    vm.set_balloon_deadline(Duration::from_millis(300));
    for pfn in 0..64 {
        vm.sim_write(pfn, 0, &content(pfn, 3)).unwrap();
    }
    vm.set_swap_size(8 * PS).unwrap();
    vm.set_pool_size(16 * PS).unwrap();
    assert_eq!(vm.stats().balloon_target_pages, 48);
    vm.run_policies();
    assert_eq!(vm.stats().swapped_pages, 0, "the balloon goes first");
    std::thread::sleep(Duration::from_millis(400));
    let s = settled(&vm);
    // Swap did what the store allowed, then reclaim is behind: an event.
    assert_eq!(s.swapped_pages, 8, "{s:?}");
    assert_eq!(s.reclaim_behind, 1, "{s:?}");
    // The guest gave nothing by the deadline: the balloon stops asking for
    // more (a squeezed guest would OOM), swap covers what it can.
    assert_eq!(s.balloon_target_pages, 0, "{s:?}");
    let changed = events.recv_timeout(Duration::from_secs(2)).unwrap();
    assert!(
        matches!(changed, VmEvent::PoolSizeChanged { pool_size, .. } if pool_size == 16 * PS),
        "{changed:?}"
    );
    match events.recv_timeout(Duration::from_secs(2)).unwrap() {
        VmEvent::ReclaimBehind {
            excess_bytes,
            pool_size,
            ..
        } => {
            assert_eq!(pool_size, 16 * PS);
            assert_eq!(excess_bytes, 40 * PS);
        }
        other => panic!("expected reclaim-behind, got {other:?}"),
    }
    // The pool grows back: the balloon deflates, the flag clears.
    vm.set_pool_size(64 * PS).unwrap();
    assert_eq!(vm.stats().balloon_target_pages, 0);
}

#[test]
fn pool_changes_and_reaching_the_pool_are_events() {
    let dir = tempfile::tempdir().unwrap();
    let vm = sim(64, PolicySet::parse("swap").unwrap(), &dir);
    for pfn in 0..64 {
        vm.sim_write(pfn, 0, &content(pfn, 5)).unwrap();
    }
    let events = vm.subscribe_events();
    let next = || events.recv_timeout(Duration::from_secs(2)).unwrap();
    vm.set_pool_size(16 * PS).unwrap();
    assert_eq!(
        next(),
        VmEvent::PoolSizeChanged {
            pool_size: 16 * PS,
            previous_pool_size: 64 * PS,
            resident_bytes: 64 * PS,
        }
    );
    vm.run_policies();
    match next() {
        VmEvent::PoolReached {
            pool_size,
            resident_bytes,
            ..
        } => {
            assert_eq!(pool_size, 16 * PS);
            assert!(resident_bytes <= 16 * PS, "{resident_bytes}");
        }
        other => panic!("expected pool-reached, got {other:?}"),
    }
    // The same size again is no change; growing is a change but reaches
    // nothing (resident was never above the new pool).
    vm.set_pool_size(16 * PS).unwrap();
    vm.set_pool_size(64 * PS).unwrap();
    vm.run_policies();
    assert!(matches!(
        next(),
        VmEvent::PoolSizeChanged { pool_size, previous_pool_size, .. }
            if pool_size == 64 * PS && previous_pool_size == 16 * PS
    ));
    assert!(events.recv_timeout(Duration::from_millis(300)).is_err());
    // A closed subscription ends its receiver after what was sent before.
    let (id, closing) = vm.subscribe_events_until_closed();
    vm.set_pool_size(32 * PS).unwrap();
    vm.unsubscribe_events(id);
    vm.set_pool_size(48 * PS).unwrap();
    assert!(matches!(
        closing.recv(),
        Ok(VmEvent::PoolSizeChanged { pool_size, .. }) if pool_size == 32 * PS
    ));
    assert!(closing.recv().is_err(), "a closed subscription got more");
    for pfn in 0..64 {
        assert_eq!(vm.sim_read(pfn).unwrap(), content(pfn, 5), "pfn {pfn}");
    }
}

#[test]
fn no_balloon_device_means_swap_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let vm = sim(64, PolicySet::parse("balloon,swap").unwrap(), &dir);
    for pfn in 0..64 {
        vm.sim_write(pfn, 0, &content(pfn, 3)).unwrap();
    }
    vm.set_pool_size(16 * PS).unwrap();
    let s = settled(&vm);
    assert!(s.resident_pages <= 16, "{s:?}");
}

#[test]
fn device_populated_page_is_kept_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let vm = sim(16, PolicySet::parse("swap").unwrap(), &dir);
    for pfn in 0..16 {
        vm.sim_write(pfn, 0, &content(pfn, 5)).unwrap();
    }
    vm.set_pool_size(0).unwrap();
    let s = settled(&vm);
    assert_eq!(s.swapped_pages, 16, "{s:?}");
    // Room again, so the policy thread leaves page 3 alone once it is in;
    // no fills ahead, so it stays swapped until its fault (bringing pages
    // home would race the device's write).
    vm.set_fault_around(PS).unwrap();
    vm.set_pool_size(16 * PS).unwrap();
    // A vCPU faults on page 3 and, before the fault is served, a device
    // process writes it through its own mapping (no userfaultfd there).
    vm.sim_populate(3).unwrap();
    vm.sim_fault(3, false).unwrap();
    let s = vm.stats();
    assert_eq!(s.device_populated_conflicts, 1, "{s:?}");
    // The device's page is kept (not overwritten by the stored copy).
    assert_eq!(vm.sim_read(3).unwrap(), content(3, 0));
    assert_eq!(vm.page_states(3, 1).unwrap()[0], PageState::Resident);
    // Others come back intact.
    assert_eq!(vm.sim_read(4).unwrap(), content(4, 5));
}

#[test]
fn pins_keep_pages_resident_and_bad_ranges_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let vm = sim(32, PolicySet::parse("swap,zero").unwrap(), &dir);
    for pfn in 0..32 {
        vm.sim_write(pfn, 0, &content(pfn, pfn % 2)).unwrap();
    }
    let out = vm.pin(&[
        GuestRange {
            gpa: 0,
            len: 8 * PS,
        },
        GuestRange { gpa: 1, len: PS },
        GuestRange {
            gpa: 31 * PS,
            len: 2 * PS,
        },
    ]);
    assert_eq!(out.pages, 8);
    assert_eq!(vm.stats().ignored_requests, 2);
    vm.set_pool_size(8 * PS).unwrap();
    let s = settled(&vm);
    assert!(s.resident_pages <= 8, "{s:?}");
    let states = vm.page_states(0, 8).unwrap();
    assert!(
        states.iter().all(|s| *s == PageState::Resident),
        "{states:?}"
    );
    vm.unpin(&[GuestRange {
        gpa: 0,
        len: 8 * PS,
    }]);
    vm.set_pool_size(0).unwrap();
    let s = settled(&vm);
    assert_eq!(s.resident_pages, 0, "{s:?}");
    assert_eq!(s.pinned_pages, 0);
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64),
    Read(u64),
    Pool(u64),
    Balloon(u64, u64),
    Report(u64, u64),
    Back(u64, u64),
}

const PAGES: u64 = 48;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PAGES).prop_map(Op::Write),
        3 => (0..PAGES).prop_map(Op::Read),
        2 => (0..=PAGES).prop_map(Op::Pool),
        1 => (0..PAGES, 1u64..6).prop_map(|(p, n)| Op::Balloon(p, n)),
        1 => (0..PAGES, 1u64..6).prop_map(|(p, n)| Op::Report(p, n)),
        1 => (0..PAGES, 1u64..6).prop_map(|(p, n)| Op::Back(p, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any sequence of writes, reads, pool changes, balloon and report
    /// releases: every page reads what was last written (zeros once given
    /// up), resident stays within the pool after reclaim.
    #[test]
    fn data_survives_any_sequence(ops in prop::collection::vec(op(), 1..120), bits in 0u8..16) {
        let set = PolicySet {
            report: bits & 1 != 0,
            share_zero: bits & 2 != 0,
            balloon: bits & 4 != 0,
            swap: bits & 8 != 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let vm = sim(PAGES, set, &dir);
        vm.set_balloon_deadline(Duration::ZERO);
        let mut model = vec![0u64; PAGES as usize];
        let mut n = 0;
        for op in ops {
            match op {
                Op::Write(p) => {
                    n += 1;
                    // Some writes are zeros: zero sharing sees them.
                    let v = if n % 5 == 0 { 0 } else { n };
                    vm.sim_write(p, 0, &content(p, v)).unwrap();
                    model[p as usize] = v;
                }
                Op::Read(p) => {
                    prop_assert_eq!(vm.sim_read(p).unwrap(), content(p, model[p as usize]), "pfn {}", p);
                }
                Op::Pool(pages) => {
                    vm.set_pool_size(pages * PS).unwrap();
                    vm.run_policies();
                    let s = vm.stats();
                    if set.swap {
                        prop_assert!(s.resident_pages <= pages, "{:?}", s);
                    }
                }
                Op::Balloon(p, k) | Op::Report(p, k) => {
                    let k = k.min(PAGES - p);
                    let reason = if matches!(op, Op::Balloon(..)) { ReleaseReason::Balloon } else { ReleaseReason::Report };
                    vm.release(&[GuestRange { gpa: p * PS, len: k * PS }], reason).unwrap();
                    // Reports are ignored without the report policy.
                    if reason == ReleaseReason::Balloon || set.report {
                        for q in p..p + k {
                            model[q as usize] = 0;
                        }
                    }
                }
                Op::Back(p, k) => {
                    let k = k.min(PAGES - p);
                    vm.reclaim_back(&[GuestRange { gpa: p * PS, len: k * PS }]).unwrap();
                }
            }
        }
        vm.run_policies();
        for p in 0..PAGES {
            prop_assert_eq!(vm.sim_read(p).unwrap(), content(p, model[p as usize]), "pfn {}", p);
        }
        // The reads above may have put resident over the pool again: stop the
        // policy thread (it finishes its batch) so the counts and the states
        // are one picture. Nothing stays in flight.
        vm.shutdown();
        let s = vm.stats();
        prop_assert_eq!(s.inflight_pages, 0);
        prop_assert_eq!(s.swapped_pages, vm.page_states(0, PAGES).unwrap().iter().filter(|s| **s == PageState::Swapped).count() as u64);
    }
}

#[test]
fn balloon_asks_only_what_the_guest_has_available_when_swap_covers() {
    let dir = tempfile::tempdir().unwrap();
    let pages = 32768; // 128 MiB
    let vm = sim(pages, PolicySet::parse("balloon,swap").unwrap(), &dir);
    let mut values = std::collections::BTreeMap::new();
    values.insert("available-memory".to_owned(), 100 << 20);
    vm.set_guest_stats(dmm::vm::GuestStats { values });
    vm.set_pool_size(32 << 20).unwrap();
    // 96 MiB wanted, 100 MiB available, 64 MiB kept in reserve: 36 MiB asked.
    assert_eq!(vm.stats().balloon_target_pages, (36 << 20) / 4096);
    // Without swap the balloon is the only way: it asks for everything.
    let dir2 = tempfile::tempdir().unwrap();
    let vm2 = sim(pages, PolicySet::parse("balloon").unwrap(), &dir2);
    let mut values = std::collections::BTreeMap::new();
    values.insert("available-memory".to_owned(), 100 << 20);
    vm2.set_guest_stats(dmm::vm::GuestStats { values });
    vm2.set_pool_size(32 << 20).unwrap();
    assert_eq!(vm2.stats().balloon_target_pages, (96 << 20) / 4096);
}

#[test]
fn balloon_is_sized_again_by_new_guest_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let pages = 32768; // 128 MiB
    let vm = sim(pages, PolicySet::parse("balloon,swap").unwrap(), &dir);
    let _device = vm.subscribe_balloon();
    vm.set_swap_size(0).unwrap(); // keep the excess: this is about the balloon
    for pfn in 0..pages {
        vm.sim_write(pfn, 0, &[1]).unwrap();
    }
    let stats = |mib: u64| {
        let mut values = std::collections::BTreeMap::new();
        values.insert("available-memory".to_owned(), mib << 20);
        dmm::vm::GuestStats { values }
    };
    // Numbers from before the guest freed its memory: the balloon asks for
    // 16 MiB (80 available, 64 reserve) until new ones arrive.
    vm.set_guest_stats(stats(80));
    vm.set_pool_size(32 << 20).unwrap();
    assert_eq!(vm.stats().balloon_target_pages, (16 << 20) / 4096);
    // New: 100 MiB available, 64 MiB reserve: 36 MiB asked.
    vm.set_guest_stats(stats(100));
    assert_eq!(vm.stats().balloon_target_pages, (36 << 20) / 4096);
    // Less available: the target drops; a move under 16 MiB is noise.
    vm.set_guest_stats(stats(70));
    assert_eq!(vm.stats().balloon_target_pages, (6 << 20) / 4096);
    vm.set_guest_stats(stats(80));
    assert_eq!(vm.stats().balloon_target_pages, (6 << 20) / 4096);
    // The guest freed more meanwhile: the target rises again, at most to
    // what the pool wants.
    vm.set_guest_stats(stats(1000));
    assert_eq!(vm.stats().balloon_target_pages, (96 << 20) / 4096);
}

/// The store's file, unlinked but open: through `/proc/self/fd`.
fn open_swap_file(path: &std::path::Path) -> std::fs::File {
    let want = format!("{} (deleted)", path.display());
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want) {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap();
        }
    }
    panic!("{want} is not open");
}

#[test]
fn corrupt_compressed_slot_is_an_error_never_zeros() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let pages = 64;
    let vm = sim_with(pages, PolicySet::parse("swap").unwrap(), &dir, true);
    for pfn in 0..pages {
        vm.sim_write(pfn, 0, &content(pfn, 1)).unwrap();
    }
    vm.set_pool_size(0).unwrap();
    let s = settled(&vm);
    assert_eq!(s.swapped_pages, pages, "{s:?}");
    assert_eq!(s.swap_compressed_slots, pages, "{s:?}");
    // Every slot becomes garbage.
    let f = open_swap_file(&dir.path().join("swap"));
    let len = f.metadata().unwrap().len();
    f.write_all_at(&vec![0xa5; len as usize], 0).unwrap();
    for attempt in 1..=2 {
        let e = vm.sim_read(7).unwrap_err();
        assert!(
            matches!(e, dmm::Error::MemoryError { gpa } if gpa == 7 * 4096),
            "attempt {attempt}: {e}"
        );
        // Poisoned: not zero-filled, not resident; one error delivered.
        assert_eq!(vm.page_states(7, 1).unwrap()[0], PageState::Poisoned);
        assert!(!vm.sim_present(7));
        let s = vm.stats();
        assert_eq!((s.swap_corrupt, s.memory_errors), (1, 1), "{s:?}");
    }
}
