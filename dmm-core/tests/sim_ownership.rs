// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The ownership protocol of the P2M (`model/p2m.rs`): whoever moved a page
//! in flight alone moves it out, whatever the timeout; a release that meets
//! an owned page is completed by the owner when it settles.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmm::model::PageState;
use dmm::vm::{GuestRange, PageSize, PolicySet, ReleaseReason, Vm, VmConfig};

const PS: u64 = 4096;

fn sim(pages: u64, policies: &str) -> Arc<Vm> {
    Vm::new_sim(VmConfig {
        size: pages * PS,
        page_size: PageSize::Small,
        pool_size: None,
        control_path: None,
        swap_path: None,
        swap_compress: false,
        policies: PolicySet::parse(policies).unwrap(),
        name: "own".into(),
    })
    .unwrap()
}

fn page(pfn: u64) -> [GuestRange; 1] {
    [GuestRange {
        gpa: pfn * PS,
        len: PS,
    }]
}

/// Regression: a release used to wait 1 s on an in-flight page and then move
/// it to Ballooned under its owner, whose own settle then failed (and, in
/// eviction, left the rest of its batch in flight for ever).
#[test]
fn a_release_never_takes_an_owned_page_and_is_completed_by_the_owner() {
    let vm = sim(8, "balloon,report");
    vm.sim_write(3, 0, b"owned").unwrap();
    let held = vm.sim_hold(3, PageState::Resident).unwrap();
    let releaser = {
        let vm = vm.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let out = vm.release(&page(3), ReleaseReason::Balloon).unwrap();
            (out, t.elapsed())
        })
    };
    let (out, took) = releaser.join().unwrap();
    // Not waited for, and counted as given up.
    assert!(took < Duration::from_millis(200), "release waited {took:?}");
    assert_eq!((out.pages, out.ignored), (1, 0), "{out:?}");
    // Well past the old 1 s timeout the page is still the owner's.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(vm.page_states(3, 1).unwrap()[0], PageState::InFlight);
    assert!(vm.sim_present(3));
    // The owner's settle goes through, then the release completes.
    held.settle(PageState::Resident);
    assert_eq!(vm.page_states(3, 1).unwrap()[0], PageState::Ballooned);
    assert!(!vm.sim_present(3), "released page not punched");
    let s = vm.stats();
    assert_eq!(s.inflight_pages, 0);
    assert_eq!(s.ballooned_pages, 1);
    assert_eq!(s.reclaimed_balloon_bytes, PS);
    vm.shutdown();
}

/// A fault on an owned page waits for the owner, however long it takes,
/// and then sees what the owner left.
#[test]
fn a_fault_waits_for_the_owner() {
    let vm = sim(8, "none");
    vm.sim_write(5, 0, b"data").unwrap();
    let held = vm.sim_hold(5, PageState::Resident).unwrap();
    let reader = {
        let vm = vm.clone();
        std::thread::spawn(move || {
            // The page is present: a fault on it is what a writer blocked on
            // a write-protected page delivers.
            vm.sim_fault(5, true).unwrap();
            vm.sim_read(5).unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !reader.is_finished(),
        "the fault did not wait for the owner"
    );
    held.settle(PageState::Resident);
    let data = reader.join().unwrap();
    assert_eq!(&data[..4], b"data");
    vm.shutdown();
}

/// Two releases of an owned page (a report, then the balloon): the balloon's
/// claim wins, once.
#[test]
fn deferred_releases_merge() {
    let vm = sim(8, "balloon,report");
    vm.sim_write(2, 0, b"x").unwrap();
    let held = vm.sim_hold(2, PageState::Resident).unwrap();
    vm.release(&page(2), ReleaseReason::Balloon).unwrap();
    vm.release(&page(2), ReleaseReason::Report).unwrap();
    held.settle(PageState::Resident);
    assert_eq!(vm.page_states(2, 1).unwrap()[0], PageState::Ballooned);
    let s = vm.stats();
    assert_eq!((s.ballooned_pages, s.reported_pages), (1, 0));
    assert_eq!(s.reclaimed_balloon_bytes + s.reclaimed_report_bytes, PS);
    vm.shutdown();
}
