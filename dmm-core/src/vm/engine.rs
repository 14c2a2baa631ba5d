// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The engine of one VM: model + mechanism + policies. It handles faults
//! (as the mechanism's [`FaultSink`]), releases and take-backs, and runs the
//! policy thread; [`super::Vm`] is its public face.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::{BatchOutcome, GuestRange, GuestStats, PolicySet, ReleaseReason, Stats, VmConfig};
use crate::mech::{runs, FaultSink, Mechanism};
use crate::model::{Backing, P2m, PageState, Pool, Rmap};
use crate::policy::balloon::Balloon;
use crate::policy::demand::Demand;
use crate::policy::report::Report;
use crate::policy::swap::Swap;
use crate::policy::zero::ZeroShare;
use crate::policy::{self, Counters, Ctx, Policy};
use crate::{Error, Result};

/// How long a release waits for an in-flight page before ignoring it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the policy thread looks at the pool without being kicked.
const POLICY_PERIOD: Duration = Duration::from_secs(1);

/// Checks a config; returns the number of pages.
pub(super) fn validate(cfg: &VmConfig) -> Result<u64> {
    let ps = cfg.page_size.bytes();
    if cfg.size == 0 || cfg.size % ps != 0 {
        return Err(Error::InvalidArgument(format!(
            "guest RAM size {} must be a non-zero multiple of the page size {ps}",
            cfg.size
        )));
    }
    if cfg.policies.swap && cfg.swap_path.is_none() {
        return Err(Error::InvalidArgument(
            "policy 'swap' needs a swap path (swap_path is unset)".into(),
        ));
    }
    Ok(cfg.size / ps)
}

/// What the policy thread is told.
#[derive(Debug, Default)]
struct KickState {
    /// Look at the pool now.
    kicked: bool,
    /// Exit.
    stop: bool,
}

/// Wakes the policy thread.
#[derive(Debug, Default)]
pub(super) struct Kick {
    state: Mutex<KickState>,
    cv: Condvar,
}

impl Kick {
    fn lock(&self) -> MutexGuard<'_, KickState> {
        // Two flags: a poisoned lock still holds usable values.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the policy thread; with `stop`, makes it exit.
    pub(super) fn kick(&self, stop: bool) {
        let mut k = self.lock();
        k.kicked = true;
        k.stop |= stop;
        self.cv.notify_all();
    }
}

/// The state shared by the Vm, its fault thread and its policy thread.
#[derive(Debug)]
pub(super) struct Engine {
    pub(super) size: u64,
    pub(super) page_size: u64,
    pub(super) policies: PolicySet,
    pub(super) p2m: P2m,
    pub(super) pool: Pool,
    pub(super) rmap: Rmap,
    pub(super) mech: Arc<dyn Mechanism>,
    pub(super) counters: Counters,
    pub(super) demand: Demand,
    pub(super) report: Report,
    pub(super) zero: ZeroShare,
    pub(super) balloon: Balloon,
    pub(super) swap: Swap,
    pub(super) guest_stats: Mutex<GuestStats>,
    pub(super) kick: Kick,
}

impl Engine {
    pub(super) fn new(cfg: &VmConfig, pages: u64, mech: Arc<dyn Mechanism>) -> Result<Self> {
        let ps = cfg.page_size.bytes();
        let core = Engine {
            size: cfg.size,
            page_size: ps,
            policies: cfg.policies,
            p2m: P2m::new(pages),
            pool: Pool::new(pages, ps, cfg.pool_size)?,
            rmap: Rmap::default(),
            mech,
            counters: Counters::default(),
            demand: Demand::new(ps),
            report: Report,
            zero: ZeroShare,
            balloon: Balloon::new(cfg.policies.balloon, cfg.size),
            swap: Swap,
            guest_stats: Mutex::new(GuestStats::default()),
            kick: Kick::default(),
        };
        core.balloon
            .on_pool_change(&core.ctx(), core.pool.size_pages());
        Ok(core)
    }

    pub(super) fn ctx(&self) -> Ctx<'_> {
        Ctx {
            p2m: &self.p2m,
            pool: &self.pool,
            rmap: &self.rmap,
            mech: &*self.mech,
            counters: &self.counters,
            size: self.size,
        }
    }

    /// Policies asked about a fault, in order.
    fn fault_policies(&self) -> [&dyn Policy; 2] {
        [&self.demand, &self.swap]
    }

    /// Enabled reclaiming policies in order of cost to the guest.
    fn reclaim_order(&self) -> Vec<&dyn Policy> {
        let p = self.policies;
        let all: [(bool, &dyn Policy); 4] = [
            (p.report, &self.report),
            (p.share_zero, &self.zero),
            (p.balloon, &self.balloon),
            (p.swap, &self.swap),
        ];
        all.into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| p)
            .collect()
    }

    pub(super) fn handle_fault(&self, pfn: u64, write: bool) -> Result<()> {
        Counters::add(&self.counters.faults, 1);
        let ctx = self.ctx();
        loop {
            let state = self.p2m.get(pfn)?;
            match state {
                PageState::InFlight => {
                    self.p2m.wait_settled(pfn, SETTLE_TIMEOUT)?;
                    continue;
                }
                // Missing although resident: a duplicate fault on a page just
                // filled, or a page punched behind us. Fill (or just wake).
                PageState::Resident => {
                    self.mech.fill_zero(pfn, 1)?;
                    return self.mech.wake(pfn, 1);
                }
                _ => {}
            }
            let mut raced = false;
            for p in self.fault_policies() {
                match p.on_fault(&ctx, pfn, state, write) {
                    Ok(true) => {
                        if self.pool.excess(self.p2m.counts()) > 0 {
                            self.kick.kick(false);
                        }
                        return Ok(());
                    }
                    Ok(false) => {}
                    // The page changed state under us: look again.
                    Err(Error::IllegalTransition { pfn: p, .. }) if p == pfn => {
                        raced = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !raced {
                return Err(Error::Unsupported(format!(
                    "fault on pfn {pfn} in state {state:?}: no policy handles it"
                )));
            }
        }
    }

    /// `UFFD_EVENT_REMOVE`: `MADV_REMOVE` (QEMU's discard of shared RAM
    /// punches, then `MADV_DONTNEED`s) is about to drop these pages from the
    /// file. A lone `MADV_DONTNEED` on the shared mapping only unmaps them:
    /// then the P2M under-counts until the pages are released again, while
    /// `host_allocated_bytes` (from `st_blocks`) stays exact.
    fn handle_remove(&self, first: u64, count: u64) {
        for pfn in first..first.saturating_add(count).min(self.p2m.pages()) {
            // Only resident pages lose memory; others have none to lose.
            let _ = self
                .p2m
                .transition(pfn, PageState::Resident, PageState::Unpopulated);
        }
    }

    /// Valid pfn range of a guest range, or `None` (counted as ignored).
    fn pfns_of(&self, r: &GuestRange, out: &mut BatchOutcome) -> Option<std::ops::Range<u64>> {
        let ps = self.page_size;
        let ok = r.len > 0
            && r.gpa % ps == 0
            && r.len % ps == 0
            && r.gpa.checked_add(r.len).is_some_and(|end| end <= self.size);
        if ok {
            Some(r.gpa / ps..(r.gpa + r.len) / ps)
        } else {
            out.ignored += r.len.div_ceil(ps).max(1);
            Counters::add(&self.counters.ignored_requests, 1);
            log::debug!("ignored range gpa 0x{:x} len 0x{:x}", r.gpa, r.len);
            None
        }
    }

    pub(super) fn release(
        &self,
        ranges: &[GuestRange],
        reason: ReleaseReason,
    ) -> Result<BatchOutcome> {
        let to = match reason {
            ReleaseReason::Balloon => PageState::Ballooned,
            ReleaseReason::Report => PageState::Reported,
        };
        let mut out = BatchOutcome::default();
        let mut changed = Vec::new();
        let mut resident = 0;
        for r in ranges {
            let Some(pfns) = self.pfns_of(r, &mut out) else {
                continue;
            };
            for pfn in pfns {
                let mut state = self.p2m.get(pfn)?;
                if state == PageState::InFlight {
                    state = self.p2m.wait_settled(pfn, SETTLE_TIMEOUT)?;
                }
                if state == to || !crate::model::p2m::allowed(state, to) {
                    out.ignored += 1;
                    continue;
                }
                match self.p2m.transition(pfn, state, to) {
                    Ok(()) => {
                        if state == PageState::Zero {
                            self.rmap.remove(Backing::ZeroPage, pfn);
                        }
                        changed.push(pfn);
                        resident += u64::from(state == PageState::Resident);
                    }
                    Err(Error::IllegalTransition { .. }) => out.ignored += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        changed.sort_unstable();
        // Punch every page whose state changed, whatever it was: a device
        // process may have populated it without faulting through us.
        for (first, count) in runs(changed.iter().copied()) {
            self.mech.punch(first, count)?;
        }
        out.pages = changed.len() as u64;
        out.bytes = resident * self.page_size;
        let counter = match reason {
            ReleaseReason::Balloon => &self.counters.reclaimed_balloon_bytes,
            ReleaseReason::Report => &self.counters.reclaimed_report_bytes,
        };
        Counters::add(counter, out.bytes);
        Ok(out)
    }

    pub(super) fn reclaim_back(&self, ranges: &[GuestRange]) -> Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        for r in ranges {
            let Some(pfns) = self.pfns_of(r, &mut out) else {
                continue;
            };
            for pfn in pfns {
                let state = self.p2m.get(pfn)?;
                let back = matches!(
                    state,
                    PageState::Ballooned | PageState::Reported | PageState::Zero
                ) && self
                    .p2m
                    .transition(pfn, state, PageState::Unpopulated)
                    .is_ok();
                if back {
                    if state == PageState::Zero {
                        self.rmap.remove(Backing::ZeroPage, pfn);
                    }
                    out.pages += 1;
                } else {
                    out.ignored += 1;
                }
            }
        }
        Ok(out)
    }

    /// Sets the pool size and tells every policy.
    pub(super) fn set_pool_size(&self, bytes: u64) -> Result<()> {
        self.pool.set_size(bytes)?;
        let ctx = self.ctx();
        let pages = self.pool.size_pages();
        let all: [&dyn Policy; 5] = [
            &self.demand,
            &self.report,
            &self.zero,
            &self.balloon,
            &self.swap,
        ];
        for p in all {
            p.on_pool_change(&ctx, pages);
        }
        self.kick.kick(false);
        Ok(())
    }

    /// Runs the reclaiming policies if resident exceeds the pool.
    pub(super) fn run_policies(&self) -> u64 {
        let excess = self.pool.excess(self.p2m.counts());
        if excess == 0 {
            return 0;
        }
        policy::reclaim(&self.ctx(), &self.reclaim_order(), excess)
    }

    pub(super) fn stats(&self) -> Stats {
        let c = self.p2m.counts();
        let n = &self.counters;
        Stats {
            size: self.size,
            page_size: self.page_size,
            pool_size: self.pool.size_bytes(),
            resident_pages: c.get(PageState::Resident),
            unpopulated_pages: c.get(PageState::Unpopulated),
            zero_pages: c.get(PageState::Zero),
            ballooned_pages: c.get(PageState::Ballooned),
            reported_pages: c.get(PageState::Reported),
            swapped_pages: c.get(PageState::Swapped),
            inflight_pages: c.get(PageState::InFlight),
            faults: Counters::get(&n.faults),
            demand_fills: Counters::get(&n.demand_fills),
            swap_ins: Counters::get(&n.swap_ins),
            swap_outs: Counters::get(&n.swap_outs),
            reclaimed_balloon_bytes: Counters::get(&n.reclaimed_balloon_bytes),
            reclaimed_report_bytes: Counters::get(&n.reclaimed_report_bytes),
            reclaimed_zero_bytes: Counters::get(&n.reclaimed_zero_bytes),
            reclaimed_swap_bytes: Counters::get(&n.reclaimed_swap_bytes),
            balloon_target_pages: u64::from(self.balloon.target()),
            balloon_actual_pages: u64::from(self.balloon.actual()),
            ignored_requests: Counters::get(&n.ignored_requests),
            host_allocated_bytes: self.mech.host_allocated_bytes(),
        }
    }
}

impl FaultSink for Engine {
    fn on_fault(&self, pfn: u64, write: bool) -> Result<()> {
        self.handle_fault(pfn, write)
    }

    fn on_remove(&self, first: u64, count: u64) {
        self.handle_remove(first, count);
    }

    fn on_ignored(&self) {
        Counters::add(&self.counters.ignored_requests, 1);
    }
}

/// The policy thread: runs the reclaiming policies when kicked (pool change,
/// a fill past the pool) or every `POLICY_PERIOD`, until stopped.
pub(super) fn policy_loop(engine: &Engine) {
    loop {
        {
            let mut k = engine.kick.lock();
            if !k.kicked && !k.stop {
                k = match engine.kick.cv.wait_timeout(k, POLICY_PERIOD) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
            if k.stop {
                return;
            }
            k.kicked = false;
        }
        engine.run_policies();
    }
}
