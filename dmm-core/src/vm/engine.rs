// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The engine of one VM: model + mechanism + policies. It handles faults
//! (as the mechanism's [`FaultSink`]), releases and take-backs, and runs the
//! policy thread; [`super::Vm`] is its public face.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::pace::{self, Episode, Progress};
use super::{BatchOutcome, GuestRange, GuestStats, PolicySet, ReleaseReason, VmConfig, VmEvent};
use crate::mech::{runs, FaultSink, Mechanism};
use crate::model::{Backing, P2m, PageState, Pool, Rmap};
use crate::policy::balloon::{Balloon, BALLOON_PAGE};
use crate::policy::demand::Demand;
use crate::policy::report::Report;
use crate::policy::swap::Swap;
use crate::policy::zero::ZeroShare;
use crate::policy::{self, Aborts, Counters, Ctx, Pins, Policy};
use crate::swap::SwapStore;
use crate::{Error, Result};

/// How long a release waits for an in-flight page before ignoring it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the policy thread looks at the pool without being kicked.
const POLICY_PERIOD: Duration = Duration::from_secs(1);
/// How often it looks while resident is above the pool (waiting on the balloon).
const BEHIND_PERIOD: Duration = Duration::from_millis(50);
/// Guest memory the balloon leaves alone when swap can cover the rest.
pub(super) const BALLOON_RESERVE: u64 = 64 << 20;
/// New guest statistics move the balloon's target by at least this much.
const RESIZE_STEP: u64 = 16 << 20;
/// Swap reclaims at most this many bytes between two looks at the balloon.
const SWAP_STEP: u64 = 64 << 20;
/// Default time the balloon gets before swapping takes over.
pub(super) const DEFAULT_BALLOON_DEADLINE: Duration = Duration::from_secs(5);

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
    pub(super) aborts: Aborts,
    pub(super) pins: Pins,
    /// Balloon deadline in milliseconds.
    pub(super) deadline_ms: AtomicU64,
    /// Since when resident has been above the pool (`None`: it is not).
    behind_since: Mutex<Option<Instant>>,
    /// The current episode was flagged `reclaim-behind` already.
    behind_flagged: AtomicBool,
    /// Event subscribers, by subscription id.
    events: Mutex<Vec<(u64, Sender<VmEvent>)>>,
    next_subscription: AtomicU64,
    /// One reclaim at a time (the policy thread and `Vm::run_policies`).
    reclaiming: Mutex<()>,
    /// When the pool size last changed (the balloon's deadline runs from here).
    pool_changed_at: Mutex<Instant>,
    /// Where the guest's pace is measured from since then.
    episode: Mutex<Episode>,
    /// A pool change put resident above the pool: `pool-reached` is due.
    reach_pending: AtomicBool,
}

impl Engine {
    pub(super) fn new(cfg: &VmConfig, pages: u64, mech: Arc<dyn Mechanism>) -> Result<Self> {
        let ps = cfg.page_size.bytes();
        let store = match (&cfg.swap_path, cfg.policies.swap) {
            (Some(path), true) => Some(
                SwapStore::open_from_env(path, cfg.size, ps)?.with_compression(cfg.swap_compress),
            ),
            _ => None,
        };
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
            zero: ZeroShare::default(),
            balloon: Balloon::new(cfg.policies.balloon, cfg.size),
            swap: Swap::new(store, pages),
            guest_stats: Mutex::new(GuestStats::default()),
            kick: Kick::default(),
            aborts: Aborts::default(),
            pins: Pins::default(),
            deadline_ms: AtomicU64::new(DEFAULT_BALLOON_DEADLINE.as_millis() as u64),
            behind_since: Mutex::new(None),
            behind_flagged: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            next_subscription: AtomicU64::new(0),
            reclaiming: Mutex::new(()),
            pool_changed_at: Mutex::new(Instant::now()),
            episode: Mutex::new(Episode::default()),
            reach_pending: AtomicBool::new(false),
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
            aborts: &self.aborts,
            pins: &self.pins,
        }
    }

    /// Policies asked about a fault, in order.
    fn fault_policies(&self) -> [&dyn Policy; 2] {
        [&self.demand, &self.swap]
    }

    /// Enabled reclaiming policies that cost the guest little, in order:
    /// reported pages, zero pages, the balloon. Swap comes after the
    /// balloon's deadline ([`Engine::run_policies`]).
    fn cheap_order(&self) -> Vec<&dyn Policy> {
        let p = self.policies;
        let all: [(bool, &dyn Policy); 3] = [
            (p.report, &self.report),
            (p.share_zero, &self.zero),
            (p.balloon, &self.balloon),
        ];
        all.into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| p)
            .collect()
    }

    /// A write hit the write-protected page `pfn`: wait while it is in flight
    /// (asking the reclaim to give it back), then make it writable (still
    /// resident) or just wake the writer (gone: it faults MISSING next).
    pub(super) fn handle_wp_fault(&self, pfn: u64) -> Result<()> {
        Counters::add(&self.counters.wp_faults, 1);
        loop {
            match self.p2m.get(pfn)? {
                PageState::InFlight => {
                    self.aborts.request(pfn);
                    self.p2m.wait_settled(pfn, SETTLE_TIMEOUT)?;
                }
                PageState::Resident => {
                    // Own the page while unprotecting it, so no reclaim can
                    // protect it in between and copy it while we open it.
                    if self
                        .p2m
                        .transition(pfn, PageState::Resident, PageState::InFlight)
                        .is_err()
                    {
                        continue;
                    }
                    self.aborts.clear(pfn);
                    self.swap.note_write(pfn);
                    let r = self.mech.write_protect(pfn, 1, false);
                    self.p2m
                        .transition(pfn, PageState::InFlight, PageState::Resident)?;
                    return r;
                }
                _ => {
                    self.aborts.clear(pfn);
                    return self.mech.wake(pfn, 1);
                }
            }
        }
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
        if reason == ReleaseReason::Report && !self.policies.report {
            // Free page reports are a policy: without it they are ignored.
            for r in ranges {
                if let Some(pfns) = self.pfns_of(r, &mut out) {
                    out.ignored += pfns.end - pfns.start;
                }
            }
            return Ok(out);
        }
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
                        if state == PageState::Swapped {
                            self.drop_swapped(pfn);
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

    /// Forgets the stored copy of a page the guest gave up while swapped.
    fn drop_swapped(&self, pfn: u64) {
        if let Some(slot) = self.p2m.take_swap_slot(pfn) {
            self.rmap.remove(Backing::SwapSlot(slot), pfn);
            if let Some(store) = self.swap.store() {
                store.release(slot);
            }
        }
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

    /// Pins (`on`) or unpins guest ranges.
    pub(super) fn pin(&self, ranges: &[GuestRange], on: bool) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        for r in ranges {
            let Some(pfns) = self.pfns_of(r, &mut out) else {
                continue;
            };
            let count = pfns.end - pfns.start;
            if on {
                self.pins.pin(pfns.start, count);
            } else {
                self.pins.unpin(pfns.start, count);
            }
            out.pages += count;
        }
        out
    }

    /// Sets the pool size and tells every policy.
    pub(super) fn set_pool_size(&self, bytes: u64) -> Result<()> {
        let previous = self.pool.size_bytes();
        self.pool.set_size(bytes)?;
        *self
            .pool_changed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let counts = self.p2m.counts();
        self.reach_pending
            .store(self.pool.excess(counts) > 0, Ordering::Relaxed);
        if previous != self.pool.size_bytes() {
            self.emit(VmEvent::PoolSizeChanged {
                pool_size: self.pool.size_bytes(),
                previous_pool_size: previous,
                resident_bytes: counts.committed() * self.page_size,
            });
        }
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
        *self.episode() = Episode {
            excess0: self.pool.excess(self.p2m.counts()) * self.page_size,
            guest0: self.guest_released(),
            ours0: self.ours_reclaimed(),
        };
        self.cap_balloon_to_guest_free();
        self.kick.kick(false);
        Ok(())
    }

    /// With swap covering the rest, the balloon asks the guest only for what
    /// it reported available beyond a reserve ([`BALLOON_RESERVE`] or 1/16
    /// of its RAM): a guest squeezed past that OOMs (measured: a 640 MiB
    /// guest with 512 MiB in tmpfs panicked). No guest statistics: no cap.
    ///
    /// The last numbers may be old (the device polls every few seconds): the
    /// device asks the guest for new ones when the target changes, and the
    /// target is sized again when they arrive ([`Engine::set_guest_stats`]).
    fn cap_balloon_to_guest_free(&self) {
        if !(self.policies.balloon && self.policies.swap) {
            return;
        }
        if let Some(cap) = self.balloon_cap() {
            if cap < self.balloon.target() {
                log::info!("balloon target capped at {cap} pages: swap covers the rest");
                let _ = self.balloon.set_target(cap);
            }
        }
    }

    /// The balloon pages the guest can give: what it holds plus what it
    /// reported available beyond the reserve (`None`: no statistics).
    fn balloon_cap(&self) -> Option<u32> {
        let available = self
            .guest_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values
            .get("available-memory")
            .copied()?;
        let reserve = BALLOON_RESERVE.max(self.size / 16);
        let spare = u64::from(self.balloon.actual())
            + available.saturating_sub(reserve) / crate::policy::balloon::BALLOON_PAGE;
        Some(u32::try_from(spare).unwrap_or(u32::MAX))
    }

    /// New guest statistics: within a shrink's deadline, the balloon's target
    /// is sized again from them (what the pool wants, capped by what the
    /// guest has available now).
    pub(super) fn set_guest_stats(&self, stats: GuestStats) {
        *self.guest_stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        if !(self.policies.balloon && self.policies.swap) {
            return;
        }
        if self.pool_changed_at().elapsed() >= self.deadline()
            || self.pool.excess(self.p2m.counts()) == 0
        {
            return;
        }
        // What the pool wants, capped by what the guest can give now (never
        // below what the balloon holds), in one step either way.
        let want = self.balloon.target_for_pool(self.pool.size_bytes());
        let sized = self.balloon_cap().map_or(want, |cap| cap.min(want));
        // Small moves are noise (each new target asks for statistics again).
        if u64::from(sized.abs_diff(self.balloon.target())) * BALLOON_PAGE >= RESIZE_STEP {
            log::info!(
                "balloon target {} -> {sized} pages by fresh guest statistics",
                self.balloon.target()
            );
            let _ = self.balloon.set_target(sized);
            self.kick.kick(false);
        }
    }

    /// Runs the reclaiming policies if resident exceeds the pool: the cheap
    /// ones at once; swap when the balloon had its deadline (at once when
    /// there is no balloon or no device listening to it). Flags
    /// `reclaim-behind` once per episode when the deadline passed and
    /// resident is still above the pool.
    pub(super) fn run_policies(&self) -> u64 {
        let _one = self.reclaiming.lock().unwrap_or_else(|p| p.into_inner());
        let excess = self.pool.excess(self.p2m.counts());
        if excess == 0 {
            *self.behind() = None;
            self.behind_flagged.store(false, Ordering::Relaxed);
            self.note_reached();
            return 0;
        }
        let now = Instant::now();
        let since = *self.behind().get_or_insert(now);
        let ctx = self.ctx();
        let mut freed = policy::reclaim(&ctx, &self.cheap_order(), excess);
        let left = self.pool.excess(self.p2m.counts());
        if left == 0 {
            self.note_reached();
            return freed;
        }
        let deadline = self.deadline();
        let past = now.duration_since(since) >= deadline;
        if self.policies.swap {
            freed += self.swap_behind_balloon(&ctx, left, deadline);
        }
        let left = self.pool.excess(self.p2m.counts());
        if left > 0 && past && !self.behind_flagged.swap(true, Ordering::Relaxed) {
            Counters::add(&self.counters.reclaim_behind, 1);
            let ev = VmEvent::ReclaimBehind {
                excess_bytes: left * self.page_size,
                pool_size: self.pool.size_bytes(),
                waited_ms: now.duration_since(since).as_millis() as u64,
            };
            log::warn!("reclaim behind: {ev:?}");
            self.emit(ev);
        }
        freed
    }

    /// Swaps what the balloon will not deliver in time; returns pages freed.
    ///
    /// The balloon gets its deadline once per pool change, and only while
    /// it is still on its way to the target: excess caused later by faults
    /// (swap-ins, first touches) goes to swap at once, as does all of it
    /// once the deadline passed (the target then settles at what the guest
    /// gave). Inside the deadline swap covers, concurrently, what the balloon
    /// was not asked for and what the guest's net pace will not deliver by
    /// the horizon ([`pace::swap_help`]), judged again every [`SWAP_STEP`].
    fn swap_behind_balloon(&self, ctx: &Ctx<'_>, mut left: u64, deadline: Duration) -> u64 {
        let ep = *self.episode();
        let changed = self.pool_changed_at();
        let ps = self.page_size;
        let horizon = pace::horizon(ep.excess0, deadline);
        let step = (SWAP_STEP / ps).max(1);
        // At most the excess seen on entry: faults meanwhile wait for the next run.
        let budget = left;
        let mut freed = 0;
        while left > 0 && freed < budget {
            let elapsed = changed.elapsed();
            let (target, actual) = (self.balloon.target(), self.balloon.actual());
            let balloon_pending =
                self.policies.balloon && self.balloon.subscribers() > 0 && actual < target;
            let want = if !balloon_pending {
                left
            } else if elapsed >= deadline {
                if self.balloon.settle_at_actual() {
                    log::info!(
                        "balloon deadline passed: target settled at the guest's {} pages, swap covers the rest",
                        self.balloon.actual()
                    );
                }
                left
            } else {
                let net = (ep.excess0.saturating_sub(left * ps))
                    .saturating_sub(self.ours_reclaimed().saturating_sub(ep.ours0));
                let p = Progress {
                    elapsed,
                    horizon,
                    started: self.guest_released() > ep.guest0,
                    net,
                    left: left * ps,
                    can_give: u64::from(target - actual) * BALLOON_PAGE,
                };
                pace::swap_help(&p).div_ceil(ps)
            };
            if want == 0 {
                break;
            }
            let got = policy::reclaim(ctx, &[&self.swap], want.min(step).min(budget - freed));
            freed += got;
            if got == 0 {
                break;
            }
            left = self.pool.excess(self.p2m.counts());
        }
        freed
    }

    /// Bytes the guest released itself so far (balloon and free page reports).
    fn guest_released(&self) -> u64 {
        Counters::get(&self.counters.reclaimed_balloon_bytes)
            + Counters::get(&self.counters.reclaimed_report_bytes)
    }

    /// Bytes we reclaimed so far (swap and zero pages).
    fn ours_reclaimed(&self) -> u64 {
        Counters::get(&self.counters.reclaimed_swap_bytes)
            + Counters::get(&self.counters.reclaimed_zero_bytes)
    }

    /// When the pool size last changed.
    fn pool_changed_at(&self) -> Instant {
        *self
            .pool_changed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The balloon's deadline.
    fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed))
    }

    fn episode(&self) -> MutexGuard<'_, Episode> {
        // Plain values: a poisoned lock still holds a usable one.
        self.episode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Emits `pool-reached` once per pool change that put resident above it.
    fn note_reached(&self) {
        if !self.reach_pending.swap(false, Ordering::Relaxed) {
            return;
        }
        let changed = self.pool_changed_at();
        self.emit(VmEvent::PoolReached {
            pool_size: self.pool.size_bytes(),
            resident_bytes: self.p2m.counts().committed() * self.page_size,
            took_ms: changed.elapsed().as_millis() as u64,
        });
    }

    fn behind(&self) -> MutexGuard<'_, Option<Instant>> {
        // An Option<Instant>: a poisoned lock still holds a usable value.
        self.behind_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while resident is above the pool.
    fn is_behind(&self) -> bool {
        self.pool.excess(self.p2m.counts()) > 0
    }

    /// A receiver of [`VmEvent`]s and its subscription id.
    pub(super) fn subscribe_events(&self) -> (u64, Receiver<VmEvent>) {
        let (tx, rx) = channel();
        let id = self.next_subscription.fetch_add(1, Ordering::Relaxed);
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, tx));
        (id, rx)
    }

    /// Ends subscription `id`: its receiver sees the channel closed.
    pub(super) fn unsubscribe_events(&self, id: u64) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| *i != id);
    }

    fn emit(&self, ev: VmEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, s)| s.send(ev.clone()).is_ok());
    }
}

impl FaultSink for Engine {
    fn on_fault(&self, pfn: u64, write: bool) -> Result<()> {
        self.handle_fault(pfn, write)
    }

    fn on_wp_fault(&self, pfn: u64) -> Result<()> {
        self.handle_wp_fault(pfn)
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
                let period = if engine.is_behind() {
                    BEHIND_PERIOD
                } else {
                    POLICY_PERIOD
                };
                k = match engine.kick.cv.wait_timeout(k, period) {
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
