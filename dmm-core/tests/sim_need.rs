// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A guest shrunk while idle whose need then grows, on the simulation
//! mechanism: the balloon gives memory back when the guest's available
//! memory runs low (vm/need.rs), swap holds the pool while the guest fills
//! what it got back, nothing it wrote is lost; a guest that deflates on its
//! own (deflate-on-oom) keeps its smaller balloon.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmm::vm::{GuestRange, GuestStats, PolicySet, ReleaseReason, Vm, VmConfig};

const PS: u64 = 4096;
const MIB: u64 = 1 << 20;
/// 256 MiB of guest RAM: the balloon's reserve is 64 MiB.
const PAGES: u64 = 65536;
const POOL: u64 = 96 * MIB / PS;
/// Pages the guest holds data in before the shrink (32 MiB).
const KEEP: u64 = 8192;

fn vm(policies: &str, dir: &tempfile::TempDir) -> Arc<Vm> {
    Vm::new_sim(VmConfig {
        swap_path: Some(dir.path().join("swap")),
        policies: PolicySet::parse(policies).unwrap(),
        ..VmConfig::new("sim-need", PAGES * PS)
    })
    .unwrap()
}

fn content(pfn: u64) -> Vec<u8> {
    let mut p = vec![0u8; PS as usize];
    for (i, c) in p.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(pfn << 32 | i as u64 | 1).to_le_bytes());
    }
    p
}

fn available(vm: &Vm, mib: u64) {
    let values = BTreeMap::from([("available-memory".to_string(), mib * MIB)]);
    vm.set_guest_stats(GuestStats { values });
}

fn top(from: u64, to: u64) -> GuestRange {
    GuestRange {
        gpa: from * PS,
        len: (to - from) * PS,
    }
}

/// The guest, idle with KEEP pages of data, is shrunk to the pool: its
/// balloon takes the target from the top of RAM down. Returns the target.
fn shrunk_while_idle(vm: &Vm) -> u64 {
    for pfn in 0..KEEP {
        vm.sim_write(pfn, 0, &content(pfn)).unwrap();
    }
    available(vm, 240);
    vm.set_pool_size(POOL * PS).unwrap();
    let target = vm.stats().balloon_target_pages;
    assert_eq!(target, PAGES - POOL, "{:?}", vm.stats());
    vm.release(&[top(PAGES - target, PAGES)], ReleaseReason::Balloon)
        .unwrap();
    vm.set_balloon_actual(u32::try_from(target).unwrap());
    target
}

#[test]
fn a_shrunk_guest_that_grows_gets_memory_back_and_swap_holds_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm("balloon,swap", &dir);
    let _device = vm.subscribe_balloon();
    let held = shrunk_while_idle(&vm);
    // Idle, with memory to spare: the balloon keeps what it took.
    available(&vm, 80);
    assert_eq!(vm.stats().balloon_target_pages, held);

    // Its need grows: 40 MiB less available 250 ms later.
    std::thread::sleep(Duration::from_millis(250));
    available(&vm, 40);
    let s = vm.stats();
    // Back to the 64 MiB reserve plus the 80 MiB the demand takes over the
    // next two periods: 104 MiB = 26624 pages.
    let given = held - s.balloon_target_pages;
    assert!(
        (26600..=26650).contains(&given),
        "gave {given} pages back: {s:?}"
    );

    // The guest deflates to the target and fills most of what it got
    // back, past the pool.
    let first = PAGES - held;
    vm.reclaim_back(&[top(first, first + given)]).unwrap();
    vm.set_balloon_actual(u32::try_from(s.balloon_target_pages).unwrap());
    let last = first + 20000;
    for pfn in first..last {
        vm.sim_write(pfn, 0, &content(pfn)).unwrap();
    }
    // A sample showing plenty within the deadline does not take it back.
    available(&vm, 200);
    assert_eq!(vm.stats().balloon_target_pages, held - given);

    // Swap holds the pool.
    let t0 = Instant::now();
    while vm.stats().resident_pages + vm.stats().inflight_pages > POOL {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "pool not held: {:?}",
            vm.stats()
        );
        vm.run_policies();
    }
    let s = vm.stats();
    assert!(s.swapped_pages > 0, "{s:?}");
    assert_eq!(s.pool_size, POOL * PS);
    for pfn in (0..KEEP).chain(first..last) {
        assert_eq!(vm.sim_read(pfn).unwrap(), content(pfn), "pfn {pfn}");
    }
    // A new shrink asks anew.
    vm.set_pool_size((POOL - 256) * PS).unwrap();
    assert!(vm.stats().balloon_target_pages > held - given);
}

#[test]
fn without_swap_the_balloon_keeps_the_pool() {
    // policies=balloon: nothing else keeps the pool; the balloon is not
    // given back on the guest's statistics.
    let dir = tempfile::tempdir().unwrap();
    let vm = vm("balloon", &dir);
    let held = shrunk_while_idle(&vm);
    available(&vm, 10);
    assert_eq!(vm.stats().balloon_target_pages, held);
}

#[test]
fn a_guest_that_deflates_on_its_own_keeps_its_smaller_balloon() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm("balloon,swap", &dir);
    let held = shrunk_while_idle(&vm);
    // Its OOM notifier deflates 256 pages (deflate-on-oom) and writes
    // actual: the target follows, asked again it would re-inflate.
    let first = PAGES - held;
    vm.reclaim_back(&[top(first, first + 256)]).unwrap();
    vm.set_balloon_actual(u32::try_from(held - 256).unwrap());
    assert_eq!(vm.stats().balloon_target_pages, held - 256);
    for pfn in first..first + 256 {
        vm.sim_write(pfn, 0, &content(pfn)).unwrap();
        assert_eq!(vm.sim_read(pfn).unwrap(), content(pfn));
    }
}

#[test]
fn a_balloon_that_shrinks_without_deflates_keeps_its_target() {
    // A driver that starts again (guest reboot) reports a small balloon
    // while inflating anew: not a request for memory.
    let dir = tempfile::tempdir().unwrap();
    let vm = vm("balloon,swap", &dir);
    let held = shrunk_while_idle(&vm);
    vm.set_balloon_actual(256);
    assert_eq!(vm.stats().balloon_target_pages, held);
    // Nor is a deflate the target asked for.
    vm.set_balloon_target(u32::try_from(held - 1024).unwrap())
        .unwrap();
    vm.set_balloon_actual(u32::try_from(held).unwrap());
    let first = PAGES - held;
    vm.reclaim_back(&[top(first, first + 1024)]).unwrap();
    vm.set_balloon_actual(u32::try_from(held - 1024).unwrap());
    assert_eq!(vm.stats().balloon_target_pages, held - 1024);
}
