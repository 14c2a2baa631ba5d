// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Balloon sizing from the guest's statistics: with swap covering the rest,
//! the balloon asks the guest only for what it reported available beyond a
//! reserve, and is sized again when fresh statistics arrive during a shrink.

use super::engine::Engine;
use super::GuestStats;
use crate::policy::balloon::BALLOON_PAGE;

/// Guest memory the balloon leaves alone when swap can cover the rest.
pub(super) const BALLOON_RESERVE: u64 = 64 << 20;
/// New guest statistics move the balloon's target by at least this much.
const RESIZE_STEP: u64 = 16 << 20;

impl Engine {
    /// With swap covering the rest, the balloon asks the guest only for what
    /// it reported available beyond a reserve ([`BALLOON_RESERVE`] or 1/16
    /// of its RAM): a guest squeezed past that OOMs (measured: a 640 MiB
    /// guest with 512 MiB in tmpfs panicked). No guest statistics: no cap.
    ///
    /// The last numbers may be old (the device polls every few seconds): the
    /// device asks the guest for new ones when the target changes, and the
    /// target is sized again when they arrive ([`Engine::set_guest_stats`]).
    pub(super) fn cap_balloon_to_guest_free(&self) {
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
        let reserve = self.balloon_reserve();
        let spare = u64::from(self.balloon.actual())
            + available.saturating_sub(reserve) / crate::policy::balloon::BALLOON_PAGE;
        Some(u32::try_from(spare).unwrap_or(u32::MAX))
    }

    /// Guest memory the balloon leaves alone: [`BALLOON_RESERVE`] or 1/16 of
    /// guest RAM, whichever is more.
    pub(super) fn balloon_reserve(&self) -> u64 {
        BALLOON_RESERVE.max(self.size / 16)
    }

    /// New guest statistics: a guest short of memory gets it back from the
    /// balloon (`need.rs`); otherwise, within a shrink's deadline, the
    /// balloon's target is sized again from them (what the pool wants,
    /// capped by what the guest has available now), unless the balloon
    /// gave back since the pool changed.
    pub(super) fn set_guest_stats(&self, stats: GuestStats) {
        let available = stats.values.get("available-memory").copied();
        *self.guest_stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        self.hints_see_stats();
        if !(self.policies.balloon && self.policies.swap) {
            return;
        }
        if available.is_some_and(|a| self.give_back_for_need(a))
            || self.gave_back_since_pool_change()
        {
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
}
