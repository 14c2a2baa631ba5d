// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Free page hint rounds: what the guest has free is found before swap
//! takes anything (`policy/hint.rs` has the page-level work).
//!
//! A pool change that puts resident above the pool asks the balloon device
//! for one round (zero policy on, write-protect available). The round ends
//! with the device's `hint-done`: the guest sent every free block it had,
//! or the device has no hinting. Swap waits for that while the round is
//! younger than [`HINT_WAIT`], since a page it took would be free memory
//! written to disk and read back when the guest re-uses it. The balloon
//! and the cheap policies run meanwhile as always.

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use super::engine::Engine;
use crate::policy::Counters;

/// How long swap waits for a round. Under TCG the guest hints about
/// 2 GiB/s (it zeroes each block it takes); 1.5 s covers a 2 GiB guest.
pub(super) const HINT_WAIT: Duration = Duration::from_millis(1500);
/// Round numbers the device protocol reserves (virtio: 0 STOP, 1 DONE).
const FIRST_ROUND: u32 = 2;

/// The hint rounds of one VM.
#[derive(Debug, Default)]
pub(super) struct Rounds {
    /// Last round asked (0: none yet).
    last: u32,
    /// The round under way and when it was asked.
    active: Option<(u32, Instant)>,
    /// A round was asked for the current pool change.
    asked: bool,
}

impl Engine {
    fn rounds(&self) -> MutexGuard<'_, Rounds> {
        // Plain values: a poisoned lock still holds usable ones.
        self.hints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new pool change may ask for a round.
    pub(super) fn hints_for_new_pool(&self) {
        self.rounds().asked = false;
    }

    /// Asks for a round if this pool change has not; true while a round is
    /// under way and younger than [`HINT_WAIT`] (swap waits).
    pub(super) fn hinting(&self) -> bool {
        if !(self.policies.share_zero && self.policies.balloon && self.mech.can_write_protect()) {
            return false;
        }
        let mut r = self.rounds();
        if let Some((round, at)) = r.active {
            if at.elapsed() < HINT_WAIT {
                return true;
            }
            log::info!(
                "free page hint round {round}: no answer after {} ms; swap goes on",
                HINT_WAIT.as_millis()
            );
            r.active = None;
            return false;
        }
        if r.asked {
            return false;
        }
        r.asked = true;
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
        r.active = Some((round, Instant::now()));
        true
    }

    /// The device ended round `round` after `pages` hinted pages.
    pub(super) fn hint_done(&self, round: u32, pages: u64) {
        let mut r = self.rounds();
        match r.active {
            Some((active, at)) if active == round => {
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
