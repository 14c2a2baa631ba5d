// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reclaim and pacing: the policy thread, pool changes, the reclaim order
//! (cheap policies at once, swap for what the balloon will not deliver in
//! time, judged by [`super::pace`]) and the `pool-reached` /
//! `reclaim-behind` bookkeeping of each shrink.

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::engine::Engine;
use super::pace::{self, Episode, Progress};
use super::VmEvent;
use crate::policy::balloon::BALLOON_PAGE;
use crate::policy::{self, Counters, Ctx, Policy};
use crate::Result;

/// How often the policy thread looks at the pool without being kicked.
const POLICY_PERIOD: Duration = Duration::from_secs(1);
/// How often it looks while resident is above the pool (waiting on the balloon).
const BEHIND_PERIOD: Duration = Duration::from_millis(50);
/// Swap reclaims at most this many bytes between two looks at the balloon.
const SWAP_STEP: u64 = 64 << 20;
/// Bringing swapped pages home stops with 1/16 of the pool free: the guest's
/// next first touches fill that without pushing the pool over (and swapping
/// again what just came home).
const HOME_MARGIN_DIV: u64 = 16;

/// What the policy thread is told.
#[derive(Debug, Default)]
pub(super) struct KickState {
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
impl Engine {
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
        self.hints_for_new_pool();
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
            self.bring_swapped_home();
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
        // Free memory is found first: swap waits for a hint round.
        let hinting = self.hinting();
        if self.policies.swap && !hinting {
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

    /// With the pool below its size, brings swapped pages home in the
    /// background (a batch per run; the policy thread is kicked again while
    /// more fit), keeping a [`HOME_MARGIN_DIV`]th of the pool free for the
    /// guest's first touches.
    fn bring_swapped_home(&self) {
        if !self.policies.swap {
            return;
        }
        // No margin when the pool holds all of guest RAM: nothing can
        // overflow it then.
        let total = self.pool.total_pages();
        let margin = |pool: u64| (pool / HOME_MARGIN_DIV).min(total.saturating_sub(pool));
        let (brought, more) = self.swap.bring_home(&self.ctx(), margin);
        if brought > 0 {
            log::debug!("brought {brought} swapped pages home");
        }
        if more {
            self.kick.kick(false);
        }
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

    /// Bytes the guest released itself so far (balloon, free page reports
    /// and hints).
    fn guest_released(&self) -> u64 {
        Counters::get(&self.counters.reclaimed_balloon_bytes)
            + Counters::get(&self.counters.reclaimed_report_bytes)
            + Counters::get(&self.counters.reclaimed_hint_bytes)
    }

    /// Bytes we reclaimed so far (swap and zero pages).
    fn ours_reclaimed(&self) -> u64 {
        Counters::get(&self.counters.reclaimed_swap_bytes)
            + Counters::get(&self.counters.reclaimed_zero_bytes)
    }

    /// When the pool size last changed.
    pub(super) fn pool_changed_at(&self) -> Instant {
        *self
            .pool_changed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The balloon's deadline.
    pub(super) fn deadline(&self) -> Duration {
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
