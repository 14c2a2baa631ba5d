// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Free page reports release memory only when the `report` policy is on.
#![allow(clippy::unwrap_used)]

use dmm::model::PageState;
use dmm::vm::{GuestRange, PolicySet, ReleaseReason, Vm, VmConfig};

fn vm(policies: &str) -> std::sync::Arc<Vm> {
    let vm = Vm::new_sim(VmConfig {
        policies: PolicySet::parse(policies).unwrap(),
        ..VmConfig::new("report-policy", 16 * 4096)
    })
    .unwrap();
    for pfn in 0..8 {
        vm.sim_touch(pfn, true).unwrap();
    }
    vm
}

const RANGE: [GuestRange; 1] = [GuestRange {
    gpa: 2 * 4096,
    len: 4 * 4096,
}];

#[test]
fn reports_are_ignored_without_the_policy() {
    let vm = vm("balloon");
    let out = vm.release(&RANGE, ReleaseReason::Report).unwrap();
    assert_eq!((out.pages, out.ignored), (0, 4));
    assert!(vm
        .page_states(2, 4)
        .unwrap()
        .iter()
        .all(|s| *s == PageState::Resident));
    assert_eq!(vm.stats().reclaimed_report_bytes, 0);
}

#[test]
fn reports_release_with_the_policy() {
    let vm = vm("balloon,report");
    let out = vm.release(&RANGE, ReleaseReason::Report).unwrap();
    assert_eq!((out.pages, out.ignored), (4, 0));
    assert!(vm
        .page_states(2, 4)
        .unwrap()
        .iter()
        .all(|s| *s == PageState::Reported));
    assert_eq!(vm.stats().reclaimed_report_bytes, 4 * 4096);
}

#[test]
fn balloon_releases_whatever_the_report_policy() {
    let vm = vm("balloon");
    let out = vm.release(&RANGE, ReleaseReason::Balloon).unwrap();
    assert_eq!(out.pages, 4);
}
