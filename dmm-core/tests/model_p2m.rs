// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property tests of the P2M state machine and of the `Vm` logic on the
//! simulation mechanism, against a plain model: a `Vec<PageState>`, a set of
//! present pages and counters.

#![allow(clippy::unwrap_used)]

use dmm::model::{P2m, PageState};
use dmm::vm::{GuestRange, PolicySet, ReleaseReason, Stats, Vm, VmConfig};
use dmm::Error;
use proptest::prelude::*;

const PS: u64 = 4096;

/// The table of `model/p2m.rs`'s docs (what a page taken from one state may
/// be settled to), written out independently.
fn allowed(from: PageState, to: PageState) -> bool {
    use PageState::*;
    const TABLE: &[(PageState, &[PageState])] = &[
        (Unpopulated, &[Unpopulated, Resident, Ballooned, Reported]),
        (
            Resident,
            &[Resident, Ballooned, Reported, Swapped, Zero, Unpopulated],
        ),
        (Ballooned, &[Ballooned, Unpopulated, Resident]),
        (Reported, &[Reported, Unpopulated, Resident, Ballooned]),
        (Zero, &[Zero, Unpopulated, Resident, Ballooned, Reported]),
        (Swapped, &[Swapped, Resident, Ballooned, Reported, Poisoned]),
        (InFlight, &[]),
        (Poisoned, &[Poisoned, Unpopulated, Ballooned, Reported]),
    ];
    TABLE.iter().any(|(f, tos)| *f == from && tos.contains(&to))
}

#[test]
fn transition_table_is_the_documented_one() {
    for from in PageState::ALL {
        for to in PageState::ALL {
            assert_eq!(
                dmm::model::p2m::allowed(from, to),
                allowed(from, to),
                "{from:?} -> {to:?}"
            );
        }
    }
}

fn state() -> impl Strategy<Value = PageState> {
    prop::sample::select(PageState::ALL.to_vec())
}

fn count(states: &[PageState], s: PageState) -> u64 {
    states.iter().filter(|&&x| x == s).count() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every take from the state a page is in (never InFlight) gives the one
    /// owner, shown InFlight, and the settle moves it where it is allowed to
    /// go; a take from another state is `IllegalTransition` naming the real
    /// state and changes nothing.
    #[test]
    fn p2m_state_machine(ops in prop::collection::vec((0u64..8, state(), state()), 1..200)) {
        let p2m = P2m::new(8);
        let mut model = vec![PageState::Unpopulated; 8];
        for (pfn, from, to) in ops {
            let cur = model[pfn as usize];
            match p2m.take(pfn, from) {
                Ok(page) => {
                    prop_assert!(cur == from && from != PageState::InFlight);
                    prop_assert_eq!(p2m.get(pfn).unwrap(), PageState::InFlight);
                    prop_assert!(p2m.take(pfn, PageState::InFlight).is_err());
                    prop_assert_eq!(p2m.counts().get(PageState::InFlight), 1);
                    let to = if allowed(from, to) { to } else { from };
                    page.settle(to);
                    model[pfn as usize] = to;
                }
                Err(e) => {
                    let named = if from == PageState::InFlight { from } else { cur };
                    prop_assert!(
                        cur != from || from == PageState::InFlight,
                        "{pfn} {cur:?}: take from {from:?} refused: {e:?}"
                    );
                    prop_assert!(
                        matches!(e, Error::IllegalTransition { pfn: p, from: f, .. } if p == pfn && f == named),
                        "{pfn} {cur:?} asked {from:?}: {e:?}"
                    );
                }
            }
            prop_assert_eq!(p2m.snapshot(0, 8).unwrap(), model.clone());
            for s in PageState::ALL {
                prop_assert_eq!(p2m.counts().get(s), count(&model, s), "count of {:?}", s);
            }
        }
        prop_assert!(p2m.take(8, PageState::Unpopulated).is_err());
    }
}

#[derive(Debug, Clone)]
enum Op {
    Touch(u64),
    Release(u64, u64, bool),
    ReleaseBad(u64, u64),
    ReclaimBack(u64, u64),
    SetPool(u64),
    SetPoolBad(u64),
    Populate(u64),
    Illegal(u64, PageState, PageState),
}

const PAGES: u64 = 96;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PAGES).prop_map(Op::Touch),
        2 => (0..PAGES, 1u64..20, any::<bool>()).prop_map(|(p, n, b)| Op::Release(p, n, b)),
        1 => (0..PAGES * PS + 2 * PS, 0..4 * PS).prop_map(|(g, l)| Op::ReleaseBad(g, l)),
        1 => (0..PAGES, 1u64..20).prop_map(|(p, n)| Op::ReclaimBack(p, n)),
        1 => (0..=PAGES).prop_map(Op::SetPool),
        1 => (0..PAGES * PS * 2).prop_map(Op::SetPoolBad),
        1 => (0..PAGES).prop_map(Op::Populate),
        1 => (0..PAGES, state(), state()).prop_map(|(p, f, t)| Op::Illegal(p, f, t)),
    ]
}

/// The model of one simulated VM.
#[derive(Debug)]
struct Model {
    st: Vec<PageState>,
    present: Vec<bool>,
    pool: u64,
    around: u64,
    balloon: bool,
    faults: u64,
    fills: u64,
    take_back_fills: u64,
    balloon_bytes: u64,
    report_bytes: u64,
    ignored_requests: u64,
    target: u64,
}

impl Model {
    fn resident(&self) -> u64 {
        count(&self.st, PageState::Resident)
    }

    fn touch(&mut self, pfn: u64) {
        let i = pfn as usize;
        if self.present[i] {
            return;
        }
        self.faults += 1;
        self.present[i] = true;
        if self.st[i] == PageState::Resident {
            return;
        }
        assert!(self.st[i].is_fillable(), "touch of {:?}", self.st[i]);
        self.st[i] = PageState::Resident;
        self.fills += 1;
        let mut room = self.pool.saturating_sub(self.resident());
        if self.around == 1 {
            return;
        }
        // The fault-around block: untouched and reported pages.
        let start = pfn & !(self.around - 1);
        let near = start..(start + self.around).min(PAGES);
        for p in near.clone() {
            if room == 0 {
                return;
            }
            if p != pfn
                && matches!(
                    self.st[p as usize],
                    PageState::Unpopulated | PageState::Reported
                )
            {
                self.fill(p);
                room -= 1;
            }
        }
        // The 2 MiB re-use block: reported pages.
        let reuse = self.around.max(512);
        let start = pfn & !(reuse - 1);
        for p in start..(start + reuse).min(PAGES) {
            if room == 0 {
                return;
            }
            if !near.contains(&p) && self.st[p as usize] == PageState::Reported {
                self.fill(p);
                room -= 1;
            }
        }
    }

    fn fill(&mut self, p: u64) {
        self.st[p as usize] = PageState::Resident;
        self.present[p as usize] = true;
        self.fills += 1;
    }

    /// Returns (pages, bytes, ignored).
    fn release(&mut self, first: u64, n: u64, balloon: bool) -> (u64, u64, u64) {
        let to = if balloon {
            PageState::Ballooned
        } else {
            PageState::Reported
        };
        let (mut pages, mut bytes, mut ignored) = (0, 0, 0);
        if first + n > PAGES {
            self.ignored_requests += 1;
            return (0, 0, n);
        }
        for p in first..first + n {
            let s = self.st[p as usize];
            if s == to || !allowed(s, to) {
                ignored += 1;
                continue;
            }
            self.st[p as usize] = to;
            self.present[p as usize] = false;
            pages += 1;
            bytes += u64::from(s == PageState::Resident) * PS;
        }
        if balloon {
            self.balloon_bytes += bytes;
        } else {
            self.report_bytes += bytes;
        }
        (pages, bytes, ignored)
    }

    fn reclaim_back(&mut self, first: u64, n: u64) -> (u64, u64) {
        if first + n > PAGES {
            self.ignored_requests += 1;
            return (0, n);
        }
        let (mut pages, mut ignored) = (0, 0);
        // With fill-ahead on, the pages taken back are populated while the
        // pool has room (room as before the take-back).
        let mut room = if self.around > 1 {
            self.pool.saturating_sub(self.resident())
        } else {
            0
        };
        for p in first..first + n {
            let i = p as usize;
            if matches!(
                self.st[i],
                PageState::Ballooned | PageState::Reported | PageState::Zero
            ) {
                if room > 0 {
                    room -= 1;
                    self.st[i] = PageState::Resident;
                    self.present[i] = true;
                    self.take_back_fills += 1;
                } else {
                    self.st[i] = PageState::Unpopulated;
                }
                pages += 1;
            } else {
                ignored += 1;
            }
        }
        (pages, ignored)
    }

    fn check(&self, vm: &Vm) -> Result<(), TestCaseError> {
        prop_assert_eq!(vm.page_states(0, PAGES).unwrap(), self.st.clone());
        let s: Stats = vm.stats();
        let c = |x| count(&self.st, x);
        prop_assert_eq!(s.resident_pages, c(PageState::Resident));
        prop_assert_eq!(s.unpopulated_pages, c(PageState::Unpopulated));
        prop_assert_eq!(s.ballooned_pages, c(PageState::Ballooned));
        prop_assert_eq!(s.reported_pages, c(PageState::Reported));
        prop_assert_eq!(s.zero_pages + s.swapped_pages + s.inflight_pages, 0);
        prop_assert_eq!(s.pool_size, self.pool * PS);
        prop_assert_eq!(s.faults, self.faults);
        prop_assert_eq!(s.demand_fills, self.fills);
        prop_assert_eq!(s.take_back_fills, self.take_back_fills);
        prop_assert_eq!(s.reclaimed_balloon_bytes, self.balloon_bytes);
        prop_assert_eq!(s.reclaimed_report_bytes, self.report_bytes);
        prop_assert_eq!(s.ignored_requests, self.ignored_requests);
        prop_assert_eq!(s.balloon_target_pages, self.target);
        let present = self.present.iter().filter(|&&p| p).count() as u64;
        prop_assert_eq!(s.host_allocated_bytes, present * PS);
        for p in 0..PAGES {
            prop_assert_eq!(vm.sim_present(p), self.present[p as usize], "present {}", p);
        }
        Ok(())
    }
}

fn range(first: u64, n: u64) -> [GuestRange; 1] {
    [GuestRange {
        gpa: first * PS,
        len: n * PS,
    }]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The Vm on the simulation mechanism behaves as the model, op by op.
    #[test]
    fn vm_matches_model(
        ops in prop::collection::vec(op(), 1..120),
        around_log in 0u32..5,
        pool in 0..=PAGES,
        balloon in any::<bool>(),
    ) {
        let vm = Vm::new_sim(VmConfig {
            pool_size: Some(pool * PS),
            policies: PolicySet { balloon, report: true, ..PolicySet::default() },
            ..VmConfig::new("model", PAGES * PS)
        })
        .unwrap();
        let around = 1u64 << around_log;
        vm.set_fault_around(around * PS).unwrap();
        let mut m = Model {
            st: vec![PageState::Unpopulated; PAGES as usize],
            present: vec![false; PAGES as usize],
            pool,
            around,
            balloon,
            faults: 0,
            fills: 0,
            take_back_fills: 0,
            balloon_bytes: 0,
            report_bytes: 0,
            ignored_requests: 0,
            target: if balloon { PAGES - pool } else { 0 },
        };
        m.check(&vm)?;
        for op in ops {
            match op {
                Op::Touch(p) => {
                    vm.sim_touch(p, true).unwrap();
                    m.touch(p);
                }
                Op::Release(p, n, b) => {
                    let reason = if b { ReleaseReason::Balloon } else { ReleaseReason::Report };
                    let out = vm.release(&range(p, n), reason).unwrap();
                    let (pages, bytes, ignored) = m.release(p, n, b);
                    prop_assert_eq!((out.pages, out.bytes, out.ignored), (pages, bytes, ignored));
                }
                Op::ReleaseBad(gpa, len) => {
                    let r = [GuestRange { gpa, len }];
                    let valid = len > 0 && gpa % PS == 0 && len % PS == 0 && gpa + len <= PAGES * PS;
                    let out = vm.release(&r, ReleaseReason::Balloon).unwrap();
                    if valid {
                        let (pages, bytes, ignored) = m.release(gpa / PS, len / PS, true);
                        prop_assert_eq!((out.pages, out.bytes, out.ignored), (pages, bytes, ignored));
                    } else {
                        m.ignored_requests += 1;
                        prop_assert_eq!(out.pages, 0);
                        prop_assert!(out.ignored >= 1);
                    }
                }
                Op::ReclaimBack(p, n) => {
                    let out = vm.reclaim_back(&range(p, n)).unwrap();
                    prop_assert_eq!((out.pages, out.ignored), m.reclaim_back(p, n));
                }
                Op::SetPool(pages) => {
                    vm.set_pool_size(pages * PS).unwrap();
                    m.pool = pages;
                    if m.balloon {
                        m.target = PAGES - pages;
                    }
                }
                Op::SetPoolBad(bytes) => {
                    let r = vm.set_pool_size(bytes);
                    if bytes % PS == 0 && bytes <= PAGES * PS {
                        prop_assert!(r.is_ok());
                        m.pool = bytes / PS;
                        if m.balloon {
                            m.target = PAGES - m.pool;
                        }
                    } else {
                        let e = r.unwrap_err();
                        prop_assert!(matches!(e, Error::InvalidArgument(_)));
                        prop_assert!(e.to_string().contains(&bytes.to_string()), "{}", e);
                    }
                }
                Op::Populate(p) => {
                    vm.sim_populate(p).unwrap();
                    m.present[p as usize] = true;
                }
                Op::Illegal(p, from, to) => {
                    let r = vm.sim_transition(p, from, to);
                    if m.st[p as usize] == from && allowed(from, to) {
                        // A legal one: undo it to keep the model simple.
                        prop_assert!(r.is_ok());
                        vm.sim_transition(p, to, from).ok();
                        if vm.page_states(p, 1).unwrap()[0] != from {
                            // Not reversible (e.g. Resident -> Unpopulated): follow it.
                            m.st[p as usize] = to;
                        }
                    } else {
                        prop_assert!(matches!(r, Err(Error::IllegalTransition { .. })), "{:?}", r);
                    }
                }
            }
            m.check(&vm)?;
        }
        // The policy engine has nothing it may take without the guest here.
        prop_assert_eq!(vm.run_policies(), 0);
        m.check(&vm)?;
    }
}

#[test]
fn sim_rejects_linux_only_calls() {
    let vm = Vm::new_sim(VmConfig {
        ..VmConfig::new("sim", 16 * PS)
    })
    .unwrap();
    assert!(vm.memfd().is_none());
    // SAFETY: the simulation never uses the pointer.
    let e = unsafe { vm.attach(std::ptr::NonNull::<u8>::dangling().as_ptr(), 16 * PS) };
    assert!(matches!(e, Err(Error::Unsupported(_))));
    assert!(vm.sim_touch(16, false).is_err());
    vm.sim_touch(3, false).unwrap();
    assert_eq!(vm.stats().resident_pages, 16);
    vm.shutdown();
}
