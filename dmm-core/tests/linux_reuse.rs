// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory the guest gave up and uses again, on a real memfd and
//! userfaultfd: reported pages come back a 2 MiB block per fault, pages the
//! balloon gives back are populated when it does (no fault at all), while
//! the pool has room; what the guest wrote is never lost. Prints the fault
//! path's cost (µs per fault, pages per fault) for each way back
//! (`docs/architecture.md`, "Memory that comes back").

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use dmm::model::PageState;
use dmm::vm::{GuestRange, PolicySet, ReleaseReason, Vm, VmConfig};

mod common;
use common::Mapped;

const PS: u64 = 4096;
const MIB: u64 = 1 << 20;
const SIZE: u64 = 128 * MIB;
const PAGES: u64 = SIZE / PS;

fn vm(pool: Option<u64>) -> Arc<Vm> {
    Vm::new_linux(VmConfig {
        pool_size: pool,
        policies: PolicySet::parse("balloon,report").unwrap(),
        ..VmConfig::new("linux-reuse", SIZE)
    })
    .unwrap()
}

fn pattern(pfn: u64, seed: u64) -> u64 {
    (pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed) | 1
}

/// Writes one word per page of `pfns` (the touch a guest's first write is);
/// returns the seconds it took.
fn touch(map: &Mapped, pfns: std::ops::Range<u64>, seed: u64) -> f64 {
    let t = Instant::now();
    for pfn in pfns {
        // SAFETY: inside the mapping.
        unsafe { map.page_ptr(pfn, PS).write_volatile(pattern(pfn, seed)) };
    }
    t.elapsed().as_secs_f64()
}

/// Pages of `pfns` whose first word is not what `seed` wrote.
fn wrong(map: &Mapped, pfns: std::ops::Range<u64>, seed: u64) -> u64 {
    pfns.filter(|&pfn| {
        // SAFETY: inside the mapping.
        unsafe { map.page_ptr(pfn, PS).read_volatile() != pattern(pfn, seed) }
    })
    .count() as u64
}

/// All of guest RAM in 2 MiB ranges (how the guest reports free memory).
fn blocks() -> Vec<GuestRange> {
    (0..SIZE / (2 * MIB))
        .map(|i| GuestRange {
            gpa: i * 2 * MIB,
            len: 2 * MIB,
        })
        .collect()
}

/// Faults and fills of one touch of all of guest RAM, printed.
fn measure(label: &str, vm: &Vm, map: &Mapped, seed: u64) -> (u64, u64) {
    let before = vm.stats();
    let secs = touch(map, 0..PAGES, seed);
    let after = vm.stats();
    let faults = after.faults - before.faults;
    let fills = after.demand_fills - before.demand_fills;
    println!(
        "{label}: {PAGES} pages in {:.1} ms: {faults} faults, {:.1} pages/fault, {:.1} us/fault, {:.2} us/page",
        secs * 1e3,
        fills as f64 / faults.max(1) as f64,
        secs * 1e6 / faults.max(1) as f64,
        secs * 1e6 / PAGES as f64,
    );
    (faults, fills)
}

/// The figures of `docs/architecture.md`: first touch, re-use of reported
/// pages, re-use after a balloon deflate. Reported pages come back a 2 MiB
/// block per fault, deflated ones without a fault.
#[test]
fn fault_path_cost() {
    let vm = vm(None);
    let map = Mapped::new(vm.clone());
    let (faults, fills) = measure("first touch (64 KiB fault-around)", &vm, &map, 1);
    assert_eq!((faults, fills), (PAGES / 16, PAGES));

    let out = vm.release(&blocks(), ReleaseReason::Report).unwrap();
    assert_eq!(out.pages, PAGES);
    assert_eq!(map.held(), 0);
    let (faults, fills) = measure("re-use of reported pages", &vm, &map, 2);
    assert_eq!(fills, PAGES);
    assert_eq!(faults, PAGES / 512, "one fault per 2 MiB block");
    assert_eq!(wrong(&map, 0..PAGES, 2), 0);
    assert_eq!(map.held(), SIZE);

    vm.release(&blocks(), ReleaseReason::Balloon).unwrap();
    assert_eq!(map.held(), 0);
    let t = Instant::now();
    let back = vm.reclaim_back(&blocks()).unwrap();
    println!(
        "take-back of {PAGES} pages, populated: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(back.pages, PAGES);
    assert_eq!(vm.stats().take_back_fills, PAGES);
    assert_eq!(map.held(), SIZE, "st_blocks after the take-back");
    let (faults, _) = measure("re-use after a balloon deflate", &vm, &map, 3);
    assert_eq!(faults, 0);
    assert_eq!(wrong(&map, 0..PAGES, 3), 0);
}

/// A take-back populates only what the pool has room for; the rest is
/// filled on touch, and what the guest wrote before a release and after
/// the take-back is all there.
#[test]
fn take_back_respects_the_pool() {
    let vm = vm(Some(SIZE / 2));
    let map = Mapped::new(vm.clone());
    let half = PAGES / 2;
    touch(&map, 0..half, 5);
    vm.release(
        &[GuestRange {
            gpa: 0,
            len: SIZE / 4,
        }],
        ReleaseReason::Balloon,
    )
    .unwrap();
    // Resident: the upper quarter written; room: a quarter of guest RAM.
    let resident = vm.stats().resident_pages;
    assert_eq!(resident, PAGES / 4);
    let back = vm
        .reclaim_back(&[GuestRange {
            gpa: 0,
            len: SIZE / 4,
        }])
        .unwrap();
    assert_eq!(back.pages, PAGES / 4);
    let s = vm.stats();
    assert_eq!(s.take_back_fills, PAGES / 4, "{s:?}");
    assert_eq!(s.resident_pages, PAGES / 2);
    assert_eq!(map.held(), SIZE / 2, "populated up to the pool, no further");
    // Pool full: a second take-back populates nothing.
    vm.release(
        &[GuestRange {
            gpa: SIZE / 2,
            len: SIZE / 4,
        }],
        ReleaseReason::Balloon,
    )
    .unwrap();
    vm.reclaim_back(&[GuestRange {
        gpa: SIZE / 2,
        len: SIZE / 4,
    }])
    .unwrap();
    let states = vm.page_states(half, PAGES / 4).unwrap();
    assert!(states.iter().all(|&s| s == PageState::Unpopulated));
    assert_eq!(vm.stats().take_back_fills, PAGES / 4);
    // Data: the quarter never released kept what was written; the rest
    // reads zeros and takes new writes.
    assert_eq!(wrong(&map, PAGES / 4..half, 5), 0);
    touch(&map, 0..PAGES / 4, 6);
    assert_eq!(wrong(&map, 0..PAGES / 4, 6), 0);
    assert_eq!(wrong(&map, PAGES / 4..half, 5), 0);
}

/// Reported pages of a 2 MiB block are filled together, but only while the
/// pool has room, and never Ballooned pages next to them.
#[test]
fn reported_fill_ahead_stops_at_the_pool_and_the_balloon() {
    let vm = vm(None);
    let map = Mapped::new(vm.clone());
    touch(&map, 0..2048, 1);
    // Block 0: its first half reported, its second ballooned.
    vm.release(&[GuestRange { gpa: 0, len: MIB }], ReleaseReason::Report)
        .unwrap();
    vm.release(&[GuestRange { gpa: MIB, len: MIB }], ReleaseReason::Balloon)
        .unwrap();
    let before = vm.stats();
    touch(&map, 0..1, 2);
    let s = vm.stats();
    assert_eq!(s.faults - before.faults, 1);
    assert_eq!(s.demand_fills - before.demand_fills, 256);
    let states = vm.page_states(0, 512).unwrap();
    assert!(states[..256].iter().all(|&s| s == PageState::Resident));
    assert!(states[256..].iter().all(|&s| s == PageState::Ballooned));
    // Block 1 reported, and a pool with room for 100 pages: the fill stops
    // there (the faulting page and 99 more).
    vm.release(
        &[GuestRange {
            gpa: 2 * MIB,
            len: 2 * MIB,
        }],
        ReleaseReason::Report,
    )
    .unwrap();
    let resident = vm.stats().resident_pages;
    vm.set_pool_size((resident + 100) * PS).unwrap();
    touch(&map, 700..701, 2);
    let states = vm.page_states(512, 512).unwrap();
    let filled = states.iter().filter(|&&s| s == PageState::Resident).count();
    assert_eq!(filled, 100);
    assert_eq!(states[700 - 512], PageState::Resident);
    assert_eq!(wrong(&map, 700..701, 2), 0);
    assert_eq!(wrong(&map, 1024..2048, 1), 0);
}

/// How to populate what the balloon gives back, measured: `UFFDIO_ZEROPAGE`
/// (the take-back's way) against `fallocate` on the memfd, each followed by
/// the guest's touch of every page. Neither touch reaches the fault thread;
/// after `fallocate` every page still takes a minor fault in the kernel.
#[test]
fn populate_costs() {
    let vm = vm(None);
    let map = Mapped::new(vm.clone());
    touch(&map, 0..PAGES, 1);
    vm.release(&blocks(), ReleaseReason::Balloon).unwrap();
    let t = Instant::now();
    vm.reclaim_back(&blocks()).unwrap();
    let zeropage = t.elapsed().as_secs_f64();
    let faults = vm.stats().faults;
    let touched = touch(&map, 0..PAGES, 2);
    assert_eq!(vm.stats().faults, faults);
    println!(
        "UFFDIO_ZEROPAGE: populate {:.2} us/page, then touch {:.2} us/page",
        zeropage * 1e6 / PAGES as f64,
        touched * 1e6 / PAGES as f64
    );

    vm.release(&blocks(), ReleaseReason::Balloon).unwrap();
    vm.set_fault_around(PS).unwrap(); // the take-back populates nothing
    vm.reclaim_back(&blocks()).unwrap();
    assert_eq!(map.held(), 0);
    let fd = vm.memfd().unwrap();
    let t = Instant::now();
    // SAFETY: plain fallocate on the VM's memfd (behind the model's back:
    // this VM is only measured from here on).
    let rc = unsafe { libc::fallocate(fd, 0, 0, SIZE as libc::off_t) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    let fallocated = t.elapsed().as_secs_f64();
    assert_eq!(map.held(), SIZE);
    let faults = vm.stats().faults;
    let touched = touch(&map, 0..PAGES, 3);
    assert_eq!(vm.stats().faults, faults);
    println!(
        "fallocate: populate {:.2} us/page, then touch {:.2} us/page",
        fallocated * 1e6 / PAGES as f64,
        touched * 1e6 / PAGES as f64
    );
    assert_eq!(wrong(&map, 0..PAGES, 3), 0);
}
