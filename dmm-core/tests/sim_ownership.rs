// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The ownership protocol of the P2M (`model/p2m.rs`): whoever moved a page
//! in flight alone moves it out, whatever the timeout; a release or a fault
//! that meets an owned page waits for the owner's settle, and a release is
//! done before it returns.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmm::model::PageState;
use dmm::vm::{GuestRange, PolicySet, ReleaseReason, Vm, VmConfig};

const PS: u64 = 4096;

fn sim(pages: u64, policies: &str) -> Arc<Vm> {
    Vm::new_sim(VmConfig {
        policies: PolicySet::parse(policies).unwrap(),
        ..VmConfig::new("own", pages * PS)
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
/// eviction, left the rest of its batch in flight for ever). A release waits
/// for the owner, however long it takes, and never takes the page before.
#[test]
fn a_release_never_takes_an_owned_page_and_waits_for_the_owner() {
    let vm = sim(8, "balloon,report");
    vm.sim_write(3, 0, b"owned").unwrap();
    let held = vm.sim_hold(3, PageState::Resident).unwrap();
    let releaser = {
        let vm = vm.clone();
        std::thread::spawn(move || vm.release(&page(3), ReleaseReason::Balloon).unwrap())
    };
    // Well past the old 1 s timeout the page is still the owner's.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!releaser.is_finished(), "the release did not wait");
    assert_eq!(vm.page_states(3, 1).unwrap()[0], PageState::InFlight);
    assert!(vm.sim_present(3));
    // The owner's settle goes through, then the release completes.
    held.settle(PageState::Resident);
    let out = releaser.join().unwrap();
    assert_eq!((out.pages, out.ignored), (1, 0), "{out:?}");
    assert_eq!(vm.page_states(3, 1).unwrap()[0], PageState::Ballooned);
    assert!(!vm.sim_present(3), "released page not punched");
    let s = vm.stats();
    assert_eq!(s.inflight_pages, 0);
    assert_eq!(s.ballooned_pages, 1);
    assert_eq!(s.reclaimed_balloon_bytes, PS);
    assert_eq!(vm.release_waits(), 1);
    vm.shutdown();
}

/// Regression: a release that met an owned page used to return at once and
/// leave the release to the owner, after its settle. The guest, told the
/// page was released, used it again at once (a reported page is free for its
/// allocator), and the owner's late release punched what it wrote.
#[test]
fn a_page_used_again_after_its_release_keeps_what_the_guest_wrote() {
    let vm = sim(8, "report");
    vm.sim_write(4, 0, b"old").unwrap();
    let held = vm.sim_hold(4, PageState::Resident).unwrap();
    let guest = {
        let vm = vm.clone();
        std::thread::spawn(move || {
            let out = vm.release(&page(4), ReleaseReason::Report).unwrap();
            let acked = Instant::now();
            vm.sim_write(4, 0, b"new").unwrap();
            (out, acked)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let settled = Instant::now();
    held.settle(PageState::Resident);
    let (out, acked) = guest.join().unwrap();
    assert_eq!(out.pages, 1, "{out:?}");
    assert_eq!(
        &vm.sim_read(4).unwrap()[..3],
        b"new",
        "the guest's write was lost"
    );
    assert!(
        acked > settled,
        "the release returned before the owner settled"
    );
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

/// Two releases of an owned page (the balloon and a report, from two
/// threads): both wait for the owner; the balloon's claim wins, once.
#[test]
fn releases_of_an_owned_page_merge() {
    let vm = sim(8, "balloon,report");
    vm.sim_write(2, 0, b"x").unwrap();
    let held = vm.sim_hold(2, PageState::Resident).unwrap();
    let releasers: Vec<_> = [ReleaseReason::Balloon, ReleaseReason::Report]
        .into_iter()
        .map(|reason| {
            let vm = vm.clone();
            std::thread::spawn(move || vm.release(&page(2), reason).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    held.settle(PageState::Resident);
    let outs: Vec<_> = releasers.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(outs.iter().all(|o| o.pages + o.ignored == 1), "{outs:?}");
    // A report after the balloon is ignored; the balloon after a report takes it.
    assert_eq!(vm.page_states(2, 1).unwrap()[0], PageState::Ballooned);
    let s = vm.stats();
    assert_eq!((s.ballooned_pages, s.reported_pages), (1, 0));
    // Host memory was given back once.
    assert_eq!(s.reclaimed_balloon_bytes + s.reclaimed_report_bytes, PS);
    vm.shutdown();
}
