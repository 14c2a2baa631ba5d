// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Linux mechanism end to end: a memfd mapped here, registered with
//! userfaultfd, touched from several threads; contents and the real
//! `st_blocks` of the memfd checked against the model.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use dmm::model::PageState;
use dmm::vm::{BalloonPush, GuestRange, PageSize, PolicySet, ReleaseReason, Vm, VmConfig};
use dmm::Error;

mod common;
use common::{st_blocks_bytes, Mapped};

const PS: u64 = 4096;
const MIB: u64 = 1 << 20;

fn cfg(size: u64, pool: Option<u64>, policies: &str) -> VmConfig {
    VmConfig {
        pool_size: pool,
        policies: PolicySet::parse(policies).unwrap(),
        ..VmConfig::new("linux-test", size)
    }
}

/// The VM's memfd mapped and attached ([`common::Mapped`]), with page patterns.
struct Mapping(Mapped);

impl Mapping {
    fn new(vm: Arc<Vm>) -> Self {
        Mapping(Mapped::new(vm))
    }

    fn page(&self, pfn: u64) -> *mut u64 {
        self.0.page_ptr(pfn, PS)
    }

    fn write(&self, pfn: u64, seed: u64) {
        let p = self.page(pfn);
        for i in 0..(PS / 8) as usize {
            // SAFETY: inside the mapping.
            unsafe { p.add(i).write_volatile(pattern(pfn, seed, i)) };
        }
    }

    /// Checksum-style check: every word of the page is the pattern (or zero).
    fn check(&self, pfn: u64, seed: Option<u64>) -> bool {
        let p = self.page(pfn);
        (0..(PS / 8) as usize).all(|i| {
            // SAFETY: inside the mapping.
            let v = unsafe { p.add(i).read_volatile() };
            v == seed.map_or(0, |s| pattern(pfn, s, i))
        })
    }
}

fn pattern(pfn: u64, seed: u64, i: usize) -> u64 {
    let mut x = pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed ^ (i as u64).rotate_left(32);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// memfds of this process named `dmm:<name>` (other tests run in parallel).
fn memfd_count(name: &str) -> usize {
    let tag = format!("dmm:{name}");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains(&tag))
        .count()
}

fn assert_accounting(vm: &Vm) {
    let s = vm.stats();
    let blocks = st_blocks_bytes(vm.memfd().unwrap());
    assert_eq!(
        s.resident_pages * PS,
        blocks,
        "resident pages vs st_blocks: {s:?}"
    );
    assert_eq!(s.host_allocated_bytes, blocks);
    let sum = s.resident_pages
        + s.unpopulated_pages
        + s.zero_pages
        + s.ballooned_pages
        + s.reported_pages
        + s.swapped_pages
        + s.inflight_pages;
    assert_eq!(sum * PS, s.size);
}

#[test]
fn touch_verify_release_refault() {
    let size = 256 * MIB;
    let pages = size / PS;
    let vm = Vm::new_linux(cfg(size, None, "none")).unwrap();
    let fd = vm.memfd().unwrap();
    assert_eq!(st_blocks_bytes(fd), 0);
    let map = Arc::new(Mapping::new(vm.clone()));
    let (offered, enabled) = vm.uffd_features().unwrap();
    eprintln!("uffd features offered 0x{offered:x} enabled 0x{enabled:x}");

    // Pick 8192 random pages, touched by 4 threads.
    let seed = 0x1234_5678_9abc_def1;
    let mut rng = seed;
    let mut chosen = BTreeSet::new();
    while chosen.len() < 8192 {
        chosen.insert(xorshift(&mut rng) % pages);
    }
    let chosen: Vec<u64> = chosen.into_iter().collect();
    let mut order = chosen.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, (xorshift(&mut rng) % (i as u64 + 1)) as usize);
    }
    std::thread::scope(|s| {
        for part in order.chunks(order.len() / 4) {
            let map = &map;
            s.spawn(move || part.iter().for_each(|&pfn| map.write(pfn, seed)));
        }
    });
    let s = vm.stats();
    assert!(s.faults > 0 && s.faults <= 8192, "{s:?}");
    assert!(s.resident_pages >= 8192, "{s:?}");
    assert_eq!(s.demand_fills, s.resident_pages);
    assert_accounting(&vm);

    // Every page: the pattern where written, zeros elsewhere (reading faults too).
    let written: BTreeSet<u64> = chosen.iter().copied().collect();
    for pfn in 0..pages {
        let want = written.contains(&pfn).then_some(seed);
        assert!(map.check(pfn, want), "pfn {pfn} content wrong");
    }
    assert_eq!(vm.stats().resident_pages, pages);
    assert_accounting(&vm);

    // Release ranges: st_blocks drops by exactly those pages.
    let ranges = [
        (0u64, 1u64),
        (5, 3),
        (100, 64),
        (4096, 1000),
        (pages - 17, 17),
    ];
    let released: u64 = ranges.iter().map(|r| r.1).sum();
    let before = st_blocks_bytes(fd);
    let req: Vec<GuestRange> = ranges
        .iter()
        .map(|&(p, n)| GuestRange {
            gpa: p * PS,
            len: n * PS,
        })
        .collect();
    let out = vm.release(&req, ReleaseReason::Balloon).unwrap();
    assert_eq!(out.pages, released);
    assert_eq!(out.bytes, released * PS);
    assert_eq!(out.ignored, 0);
    assert_eq!(before - st_blocks_bytes(fd), released * PS);
    assert_eq!(vm.stats().ballooned_pages, released);
    assert_eq!(vm.stats().reclaimed_balloon_bytes, released * PS);
    assert_eq!(
        vm.page_states(100, 64).unwrap(),
        vec![PageState::Ballooned; 64]
    );
    assert_accounting(&vm);

    // Released again: already in that state, ignored.
    let again = vm.release(&req[..1], ReleaseReason::Balloon).unwrap();
    assert_eq!((again.pages, again.ignored), (0, 1));

    // They read zero, refault cleanly, and keep new data.
    let faults = vm.stats().faults;
    for &(p, n) in &ranges {
        for pfn in p..p + n {
            assert!(map.check(pfn, None), "released pfn {pfn} not zero");
        }
    }
    assert!(vm.stats().faults > faults);
    // Released pages are never filled ahead: each one read faulted alone.
    assert_eq!(vm.stats().resident_pages, pages);
    assert_eq!(vm.stats().ballooned_pages, 0);
    for &(p, n) in &ranges {
        for pfn in p..p + n {
            map.write(pfn, seed ^ 1);
            assert!(map.check(pfn, Some(seed ^ 1)));
        }
    }
    assert!(map.check(6000, written.contains(&6000).then_some(seed)));
    assert_accounting(&vm);
}

#[test]
fn pool_limits_fault_around() {
    let size = 64 * MIB;
    let vm = Vm::new_linux(cfg(size, Some(MIB), "none")).unwrap();
    let map = Mapping::new(vm.clone());
    for pfn in 0..1000 {
        map.write(pfn, 7);
    }
    let s = vm.stats();
    // 16 faults of 16 pages fill the 256-page pool; then one page per fault.
    assert_eq!(s.resident_pages, 1000, "{s:?}");
    assert_eq!(s.faults, 16 + 744, "{s:?}");
    assert_accounting(&vm);
    for pfn in 0..1000 {
        assert!(map.check(pfn, Some(7)));
    }
}

#[test]
fn fault_around_is_tunable() {
    let vm = Vm::new_linux(cfg(16 * MIB, None, "none")).unwrap();
    assert_eq!(vm.fault_around(), 64 << 10);
    assert!(vm
        .set_fault_around(3 * PS)
        .unwrap_err()
        .to_string()
        .contains("12288"));
    vm.set_fault_around(PS).unwrap();
    let map = Mapping::new(vm.clone());
    map.write(3, 1);
    assert_eq!(vm.stats().resident_pages, 1);
    vm.set_fault_around(256 << 10).unwrap();
    map.write(200, 1);
    assert_eq!(vm.stats().resident_pages, 1 + 64);
    assert_eq!(
        vm.page_states(191, 3).unwrap(),
        vec![
            PageState::Unpopulated,
            PageState::Resident,
            PageState::Resident
        ]
    );
    assert_accounting(&vm);
}

/// The next balloon target pushed to a subscriber.
fn target(rx: &std::sync::mpsc::Receiver<BalloonPush>) -> u32 {
    match rx.recv().unwrap() {
        BalloonPush::Target(t) => t.num_pages,
        other => panic!("{other:?}"),
    }
}

#[test]
fn pool_drives_balloon_target() {
    let size = 64 * MIB;
    let vm = Vm::new_linux(cfg(size, None, "balloon")).unwrap();
    let rx = vm.subscribe_balloon();
    assert_eq!(target(&rx), 0);
    vm.set_pool_size(16 * MIB).unwrap();
    assert_eq!(target(&rx), (48 * MIB / PS) as u32);
    assert_eq!(vm.stats().pool_size, 16 * MIB);
    assert_eq!(vm.stats().balloon_target_pages, 48 * MIB / PS);
    vm.set_pool_size(60 * MIB).unwrap();
    assert_eq!(target(&rx), (4 * MIB / PS) as u32);
    // A second subscriber gets the current value first.
    let rx2 = vm.subscribe_balloon();
    assert_eq!(target(&rx2), (4 * MIB / PS) as u32);
    drop(rx);
    vm.set_balloon_target(10).unwrap();
    assert_eq!(target(&rx2), 10);
    vm.set_balloon_actual(9);
    assert_eq!(vm.stats().balloon_actual_pages, 9);
    // Bad values are named and change nothing.
    let e = vm.set_pool_size(size + PS).unwrap_err().to_string();
    assert!(e.contains(&(size + PS).to_string()), "{e}");
    let e = vm.set_pool_size(12345).unwrap_err().to_string();
    assert!(e.contains("12345"), "{e}");
    let e = vm.set_balloon_target(u32::MAX).unwrap_err().to_string();
    assert!(e.contains(&u32::MAX.to_string()), "{e}");
    assert_eq!(vm.stats().pool_size, 60 * MIB);
    assert_eq!(vm.stats().balloon_target_pages, 10);
    assert!(rx2.try_recv().is_err());

    // Without the balloon policy the pool does not move the target.
    let plain = Vm::new_linux(cfg(size, None, "none")).unwrap();
    plain.set_pool_size(MIB).unwrap();
    assert_eq!(plain.stats().balloon_target_pages, 0);
}

#[test]
fn bad_ranges_are_ignored_and_counted() {
    let size = 16 * MIB;
    let vm = Vm::new_linux(cfg(size, None, "none")).unwrap();
    let map = Mapping::new(vm.clone());
    for pfn in 0..(size / PS) {
        map.write(pfn, 3);
    }
    let before = st_blocks_bytes(vm.memfd().unwrap());
    let bad = [
        GuestRange { gpa: size, len: PS },
        GuestRange {
            gpa: size - PS,
            len: 2 * PS,
        },
        GuestRange { gpa: 100, len: PS },
        GuestRange { gpa: 0, len: 100 },
        GuestRange { gpa: 0, len: 0 },
        GuestRange {
            gpa: u64::MAX - PS + 1,
            len: PS,
        },
    ];
    let out = vm.release(&bad, ReleaseReason::Report).unwrap();
    assert_eq!(out.pages, 0);
    assert!(out.ignored >= bad.len() as u64);
    assert_eq!(vm.stats().ignored_requests, bad.len() as u64);
    assert_eq!(st_blocks_bytes(vm.memfd().unwrap()), before);
    for pfn in 0..(size / PS) {
        assert!(map.check(pfn, Some(3)));
    }
    let back = vm.reclaim_back(&bad).unwrap();
    assert_eq!(back.pages, 0);
}

#[test]
fn reported_then_reclaimed_back() {
    let vm = Vm::new_linux(cfg(8 * MIB, None, "report")).unwrap();
    let map = Mapping::new(vm.clone());
    for pfn in 0..64 {
        map.write(pfn, 5);
    }
    let r = [GuestRange {
        gpa: 16 * PS,
        len: 16 * PS,
    }];
    let out = vm.release(&r, ReleaseReason::Report).unwrap();
    assert_eq!((out.pages, out.bytes), (16, 16 * PS));
    assert_eq!(vm.stats().reported_pages, 16);
    assert_eq!(vm.stats().reclaimed_report_bytes, 16 * PS);
    let back = vm.reclaim_back(&r).unwrap();
    assert_eq!((back.pages, back.ignored), (16, 0));
    // Populated at the take-back (no pool limit): zeros, no fault to come.
    assert_eq!(vm.page_states(16, 1).unwrap(), vec![PageState::Resident]);
    assert_eq!(vm.stats().take_back_fills, 16);
    let faults = vm.stats().faults;
    assert!(map.check(20, None));
    assert_eq!(vm.stats().faults, faults);
    assert!(map.check(40, Some(5)));
    assert_accounting(&vm);
}

#[test]
fn bad_config_is_named_and_creates_nothing() {
    let cfg = |size, pool, policies| VmConfig {
        name: "bad-config".into(),
        ..cfg(size, pool, policies)
    };
    let fds = memfd_count("bad-config");
    let e = Vm::new_linux(cfg(0, None, "none")).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("size 0"),
        "{e}"
    );
    let e = Vm::new_linux(cfg(MIB + 1, None, "none")).unwrap_err();
    assert!(e.to_string().contains(&(MIB + 1).to_string()), "{e}");
    let e = Vm::new_linux(cfg(MIB, Some(2 * MIB), "none")).unwrap_err();
    assert!(e.to_string().contains(&(2 * MIB).to_string()), "{e}");
    let e = Vm::new_linux(cfg(MIB, Some(100), "none")).unwrap_err();
    assert!(e.to_string().contains("100"), "{e}");
    let e = Vm::new_linux(cfg(MIB, None, "swap")).unwrap_err();
    assert!(e.to_string().contains("swap"), "{e}");
    let mut huge = cfg(64 * MIB, None, "none");
    huge.page_size = PageSize::Huge2M;
    let free: u64 =
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
            .map(|s| s.trim().parse().unwrap_or(0))
            .unwrap_or(0);
    if free < 32 {
        let e = Vm::new_linux(huge).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("nr_hugepages"), "{e}");
    }
    let mut nul = cfg(MIB, None, "none");
    nul.name = "a\0b".into();
    assert!(Vm::new_linux(nul).unwrap_err().to_string().contains("NUL"));
    assert_eq!(memfd_count("bad-config"), fds);
    // The count does see a VM that was created.
    let vm = Vm::new_linux(cfg(MIB, None, "none")).unwrap();
    assert_eq!(memfd_count("bad-config"), fds + 1);
    drop(vm);
}

#[test]
fn attach_checks_and_shutdown_unregisters() {
    let vm = Vm::new_linux(cfg(4 * MIB, None, "none")).unwrap();
    // SAFETY: rejected before any use of the pointer.
    let e = unsafe { vm.attach(std::ptr::null_mut(), 4 * MIB) }.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let map = Mapping::new(vm.clone());
    // SAFETY: rejected: already attached.
    let e = unsafe { vm.attach(map.0.addr() as *mut u8, 4 * MIB) }.unwrap_err();
    assert!(matches!(e, Error::State(_)), "{e}");
    map.write(0, 9);
    vm.shutdown();
    vm.shutdown();
    // No uffd any more: the kernel fills directly, the model does not see it.
    let faults = vm.stats().faults;
    map.write(500, 9);
    assert!(map.check(500, Some(9)));
    assert!(map.check(0, Some(9)));
    assert_eq!(vm.stats().faults, faults);
}

#[test]
fn madv_remove_behind_our_back_is_seen() {
    let size = 16 * MIB;
    let vm = Vm::new_linux(cfg(size, None, "none")).unwrap();
    let map = Mapping::new(vm.clone());
    for pfn in 0..(size / PS) {
        map.write(pfn, 11);
    }
    assert_eq!(vm.stats().resident_pages, size / PS);
    // SAFETY: a page-aligned range inside our mapping.
    let rc = unsafe {
        libc::madvise(
            (map.0.addr() + (64 * PS) as usize) as *mut libc::c_void,
            (32 * PS) as usize,
            libc::MADV_REMOVE,
        )
    };
    assert_eq!(rc, 0);
    // The event is handled on the fault thread just after madvise returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while vm.stats().unpopulated_pages < 32 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        vm.page_states(63, 34).unwrap()[1..33],
        vec![PageState::Unpopulated; 32]
    );
    assert_eq!(vm.page_states(63, 1).unwrap()[0], PageState::Resident);
    assert_eq!(vm.page_states(96, 1).unwrap()[0], PageState::Resident);
    assert_accounting(&vm);
    let faults = vm.stats().faults;
    assert!(map.check(70, None));
    assert!(vm.stats().faults > faults);
    assert!(map.check(63, Some(11)) && map.check(96, Some(11)));
    assert_accounting(&vm);
}

/// 2 MiB hugetlb guest RAM (UFFDIO_COPY fills). Runs only where free 2 MiB
/// hugepages exist (`echo 16 > /proc/sys/vm/nr_hugepages`).
#[test]
fn hugetlb_when_available() {
    let free: u64 =
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
            .map(|s| s.trim().parse().unwrap_or(0))
            .unwrap_or(0);
    if free < 8 {
        eprintln!("skipped: {free} free 2 MiB hugepages (need 8)");
        return;
    }
    let size = 16 * MIB;
    let mut c = cfg(size, None, "none");
    c.page_size = PageSize::Huge2M;
    let vm = Vm::new_linux(c).unwrap();
    let map = Mapping::new(vm.clone());
    for pfn in [0u64, 1000, 4095] {
        map.write(pfn, 21);
    }
    let s = vm.stats();
    assert_eq!(
        (s.page_size, s.resident_pages, s.faults),
        (2 * MIB, 3, 3),
        "{s:?}"
    );
    assert_eq!(s.host_allocated_bytes, 3 * 2 * MIB);
    assert!(map.check(1000, Some(21)) && map.check(1001, None));
    let out = vm
        .release(
            &[GuestRange {
                gpa: 2 * MIB,
                len: 2 * MIB,
            }],
            ReleaseReason::Balloon,
        )
        .unwrap();
    assert_eq!((out.pages, out.bytes), (1, 2 * MIB));
    // Not 2 MiB aligned: ignored.
    let out = vm
        .release(&[GuestRange { gpa: 0, len: PS }], ReleaseReason::Balloon)
        .unwrap();
    assert_eq!((out.pages, out.ignored), (0, 1));
    assert_eq!(vm.stats().host_allocated_bytes, 2 * 2 * MIB);
    assert!(map.check(1000, None));
    assert_eq!(vm.stats().resident_pages, 3);
}
