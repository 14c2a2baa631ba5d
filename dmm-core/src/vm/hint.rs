// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Free page hint rounds: what the guest has free is found before swap
//! takes anything (`policy/hint.rs` has the page-level work).
//!
//! A pool change that puts resident above the pool may ask the balloon
//! device for one round (zero policy on, write-protect available). Only
//! free memory the host holds is worth a round: the guest zeroes every
//! block it hints, so a block the host never populated is filled and then
//! punched, and while the driver holds the blocks the balloon finds no free
//! page to take (measured, live scenario of `scripts/bench-pool.sh`: the
//! shrink took 2.55 s with a round against 1.0 s without). The guest's
//! statistics after the pool change (the device asks for them when the
//! target changes) tell: resident memory beyond what the guest uses (guest
//! RAM less its `free-memory`) is free memory the host holds. A round is
//! asked when that is at least a quarter of the excess or [`WORTH`],
//! whichever is less, or when no statistics came within [`STATS_WAIT`] of
//! the pool change (nothing known: look). The round ends
//! with the device's `hint-done`: the guest sent every free block it had,
//! or the device has no hinting. Swap waits meanwhile: a page it took now
//! would be free memory written to disk and read back when the guest
//! re-uses it. It waits while the decision waits for statistics (at most
//! [`STATS_WAIT`]), for the first [`HINT_PROBE`] of a round, and after that
//! while the round has given anything, up to [`HINT_WAIT`]. A round that
//! gave nothing by then (a driver that never answers) holds swap no longer.
//! The balloon and the cheap policies run meanwhile as always.
//! (Judging the round by the shrink's net pace instead, as the balloon is
//! judged, let swap start before the guest's first block arrived: the
//! cycle scenario then swapped 388-522 MiB of freed memory.)

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use super::engine::Engine;
use crate::policy::Counters;

/// How long swap waits for a round at most. Under TCG the guest hints
/// about 2 GiB/s (it zeroes each block it takes); 1.5 s covers a 2 GiB guest.
pub(super) const HINT_WAIT: Duration = Duration::from_millis(1500);
/// How long swap waits for a round's first block (the driver's work starts
/// on the config change; under TCG its first blocks come within 100 ms).
const HINT_PROBE: Duration = Duration::from_millis(300);
/// Round numbers the device protocol reserves (virtio: 0 STOP, 1 DONE).
const FIRST_ROUND: u32 = 2;
/// Free memory the host holds that is worth a round, at least.
const WORTH: u64 = 64 << 20;
/// How long a pool change waits for fresh guest statistics before it
/// decides without them.
const STATS_WAIT: Duration = Duration::from_millis(300);

/// The hint rounds of one VM.
#[derive(Debug, Default)]
pub(super) struct Rounds {
    /// Last round asked (0: none yet).
    last: u32,
    /// The round under way, when it was asked, and the hinted bytes then.
    active: Option<(u32, Instant, u64)>,
    /// The current pool change has decided (asked for a round or not).
    decided: bool,
    /// Guest statistics arrived since the pool changed.
    fresh_stats: bool,
}

impl Engine {
    fn rounds(&self) -> MutexGuard<'_, Rounds> {
        // Plain values: a poisoned lock still holds usable ones.
        self.hints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new pool change may ask for a round.
    pub(super) fn hints_for_new_pool(&self) {
        let mut r = self.rounds();
        r.decided = false;
        r.fresh_stats = false;
    }

    /// Fresh guest statistics: a pool change waiting for them decides now.
    pub(super) fn hints_see_stats(&self) {
        let waiting = {
            let mut r = self.rounds();
            r.fresh_stats = true;
            !r.decided
        };
        if waiting {
            self.kick.kick(false);
        }
    }

    /// Whether the guest's free memory the host holds is worth a round:
    /// `None` while fresh statistics may still come.
    fn worth_a_round(&self, fresh: bool) -> Option<bool> {
        let free = self
            .guest_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values
            .get("free-memory")
            .copied();
        if !fresh && self.pool_changed_at().elapsed() < STATS_WAIT {
            return None;
        }
        let Some(free) = free else {
            // No statistics at all: look.
            return Some(true);
        };
        // Guest RAM, not MemTotal: memory the guest kernel reserved is
        // resident and not free.
        let used = self.size.saturating_sub(free);
        let resident = self.p2m.counts().committed() * self.page_size;
        let held_free = resident.saturating_sub(used);
        let excess = self.pool.excess(self.p2m.counts()) * self.page_size;
        let worth = held_free >= WORTH.min(excess / 4);
        log::debug!(
            "free page hints: the host holds about {} MiB of the guest's free memory \
             ({} MiB over the pool): {}",
            held_free >> 20,
            excess >> 20,
            if worth { "a round" } else { "no round" }
        );
        Some(worth)
    }

    /// Asks for a round if this pool change has not decided and it is worth
    /// one; true while a round is under way and younger than [`HINT_WAIT`].
    pub(super) fn hinting(&self) -> bool {
        if !(self.policies.share_zero && self.policies.balloon && self.mech.can_write_protect()) {
            return false;
        }
        // No balloon device connected: no round can come, nothing to wait for.
        if self.balloon.subscribers() == 0 {
            return false;
        }
        let (decided, fresh) = {
            let r = self.rounds();
            (r.decided || r.active.is_some(), r.fresh_stats)
        };
        if !decided {
            match self.worth_a_round(fresh) {
                // Statistics may still come: swap waits for the decision.
                None => return true,
                Some(false) => {
                    self.rounds().decided = true;
                    return false;
                }
                Some(true) => {}
            }
        }
        let hinted = Counters::get(&self.counters.reclaimed_hint_bytes);
        let mut r = self.rounds();
        if let Some((round, at, hinted0)) = r.active {
            let age = at.elapsed();
            if age < HINT_PROBE || (age < HINT_WAIT && hinted > hinted0) {
                return true;
            }
            log::info!(
                "free page hint round {round}: no end after {} ms ({} MiB hinted); swap goes on",
                age.as_millis(),
                (hinted - hinted0) >> 20
            );
            r.active = None;
            return false;
        }
        if r.decided {
            return false;
        }
        r.decided = true;
        let round = match r.last.wrapping_add(1) {
            n if n < FIRST_ROUND => FIRST_ROUND,
            n => n,
        };
        r.last = round;
        if self.balloon.ask_hints(round) == 0 {
            return false;
        }
        Counters::add(&self.counters.hint_rounds, 1);
        log::debug!("free page hint round {round} asked");
        r.active = Some((round, Instant::now(), hinted));
        true
    }

    /// The device ended round `round` after `pages` hinted pages.
    pub(super) fn hint_done(&self, round: u32, pages: u64) {
        let mut r = self.rounds();
        match r.active {
            Some((active, at, _)) if active == round => {
                r.active = None;
                drop(r);
                log::info!(
                    "free page hint round {round}: {} MiB hinted in {} ms",
                    (pages * 4096) >> 20,
                    at.elapsed().as_millis()
                );
                self.kick.kick(false);
            }
            _ => log::debug!("free page hint round {round} ended (not the one under way)"),
        }
    }
}
