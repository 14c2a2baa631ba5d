// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest's need grows: the balloon gives memory back before the guest's
//! own reclaim gets desperate, and swap holds the pool meanwhile (with the
//! swap policy on; without it the balloon is the only thing keeping the pool).
//!
//! The signal is the guest's available memory (`available-memory`,
//! VIRTIO_BALLOON_S_AVAIL: free memory plus what it can reclaim without I/O,
//! less its watermarks), which the device asks for every 250 ms while the
//! balloon holds pages (`vhost-balloon --stats-held-interval-ms`). Two
//! samples give the guest's demand: how fast available memory falls, not
//! counting what the balloon itself took or gave meanwhile. The balloon
//! gives back when available memory falls below half the reserve plus what
//! the demand takes until the next samples can act ([`look_ahead`]), and
//! then enough to bring it back to the whole reserve plus that.
//!
//! The balloon at a pool change leaves the guest a reserve (`sizing.rs`);
//! giving back at half of it keeps the two from fighting over noise. Once
//! the balloon gave back, its target only goes down until the pool changes
//! again: the memory is the guest's working set now, and swap holds the
//! pool (the guest's own frees go back by free page reporting).

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use super::engine::Engine;
use crate::policy::balloon::BALLOON_PAGE;

/// Demand is extrapolated over at most this long (slow statistics would
/// otherwise ask for everything).
pub(super) const LOOK_AHEAD_MAX: Duration = Duration::from_secs(2);

/// One guest statistics sample, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sample {
    /// The guest's `available-memory`.
    pub(super) available: u64,
    /// What the balloon held when it arrived (`actual`).
    pub(super) held: u64,
}

/// Time the demand runs before the balloon can answer the next sample:
/// two sample periods (one to see it, one for the deflate to land), at most
/// [`LOOK_AHEAD_MAX`].
pub(super) fn look_ahead(period: Duration) -> Duration {
    (period * 2).min(LOOK_AHEAD_MAX)
}

/// The guest's demand in bytes per second from `prev` to `now`, `period`
/// apart: the fall of available memory plus what the balloon held (a page
/// the balloon takes or gives moves between the two and is no demand).
pub(super) fn demand(prev: Sample, now: Sample, period: Duration) -> u64 {
    let secs = period.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    let before = prev.available.saturating_add(prev.held);
    let after = now.available.saturating_add(now.held);
    (before.saturating_sub(after) as f64 / secs) as u64
}

/// Bytes the balloon gives back now (at most what it holds), given the
/// previous sample and its distance (`None`: the first one), and the
/// guest's reserve. Zero while the guest has enough.
pub(super) fn give_back(prev: Option<(Sample, Duration)>, now: Sample, reserve: u64) -> u64 {
    let ahead = prev.map_or(0, |(p, period)| {
        let secs = look_ahead(period).as_secs_f64();
        (demand(p, now, period) as f64 * secs) as u64
    });
    let low = (reserve / 2).saturating_add(ahead);
    if now.available >= low {
        return 0;
    }
    reserve
        .saturating_add(ahead)
        .saturating_sub(now.available)
        .min(now.held)
}

/// What the engine remembers of the guest's need.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// The last sample and when it arrived.
    last: Option<(Instant, Sample)>,
    /// When the balloon last gave back for the guest's need.
    gave_back_at: Option<Instant>,
    /// Pages the guest took back (deflate) since it last wrote `actual`.
    deflated: u64,
}

impl Engine {
    fn watch(&self) -> MutexGuard<'_, Watch> {
        // Plain values: a poisoned lock still holds usable ones.
        self.need.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New `available-memory` from the guest: gives back what it needs
    /// ([`give_back`]). A deflate still on its way (target below `actual`)
    /// counts as available already, and not as held. Returns true when the guest is short
    /// (the balloon must not be sized up from these statistics).
    pub(super) fn give_back_for_need(&self, available: u64) -> bool {
        let now = Instant::now();
        let (target, actual) = (self.balloon.target(), self.balloon.actual());
        let on_its_way = u64::from(actual.saturating_sub(target)) * BALLOON_PAGE;
        let sample = Sample {
            available: available.saturating_add(on_its_way),
            held: u64::from(target.min(actual)) * BALLOON_PAGE,
        };
        let mut w = self.watch();
        let prev = w.last.map(|(at, s)| (s, now.duration_since(at)));
        w.last = Some((now, sample));
        let give = give_back(prev, sample, self.balloon_reserve());
        if give == 0 {
            return false;
        }
        let pages = u32::try_from(give.div_ceil(BALLOON_PAGE)).unwrap_or(u32::MAX);
        let new = target.min(actual).saturating_sub(pages);
        if new < target {
            log::info!(
                "guest needs memory ({} MiB available): balloon target {target} -> {new} pages, swap holds the pool",
                available >> 20
            );
            let _ = self.balloon.set_target(new);
            w.gave_back_at = Some(now);
            self.kick.kick(false);
        }
        true
    }

    /// True when the balloon gave back for the guest's need since the pool
    /// last changed: its target then only goes down.
    pub(super) fn gave_back_since_pool_change(&self) -> bool {
        let changed = self.pool_changed_at();
        self.watch().gave_back_at.is_some_and(|at| at >= changed)
    }

    /// The guest took `pages` back from the balloon (deflate queue).
    pub(super) fn note_deflate(&self, pages: u64) {
        self.watch().deflated += pages;
    }

    /// The device reports the guest's `actual`. A guest that deflated
    /// although its target asked it to hold at least as much (its OOM
    /// notifier with VIRTIO_BALLOON_F_DEFLATE_ON_OOM) has its smaller balloon
    /// accepted as the new target: asked again, it would inflate into the
    /// same shortage. A balloon that shrinks without deflates (a driver
    /// restart) is not taken as a request.
    pub(super) fn set_balloon_actual(&self, num_pages: u32) {
        let mut w = self.watch();
        let deflated = std::mem::take(&mut w.deflated);
        let prev = self.balloon.actual();
        self.balloon.set_actual(num_pages);
        let target = self.balloon.target();
        if num_pages < prev && target >= prev && deflated > 0 {
            log::info!(
                "guest deflated its balloon on its own ({prev} -> {num_pages} pages): target follows"
            );
            let _ = self.balloon.set_target(num_pages);
            w.gave_back_at = Some(Instant::now());
            self.kick.kick(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const R: u64 = 64 * MIB;

    fn s(available: u64, held: u64) -> Sample {
        Sample {
            available: available * MIB,
            held: held * MIB,
        }
    }

    #[test]
    fn enough_available_gives_nothing() {
        assert_eq!(give_back(None, s(300, 600), R), 0);
        assert_eq!(give_back(None, s(32, 600), R), 0);
        // Steady: no demand.
        let q = Duration::from_millis(250);
        assert_eq!(give_back(Some((s(40, 600), q)), s(40, 600), R), 0);
    }

    #[test]
    fn short_guest_gets_the_reserve_back() {
        // 20 MiB available, nothing known about its pace: back to 64.
        assert_eq!(give_back(None, s(20, 600), R), 44 * MIB);
        // Never more than the balloon holds.
        assert_eq!(give_back(None, s(0, 10), R), 10 * MIB);
        assert_eq!(give_back(None, s(0, 0), R), 0);
    }

    #[test]
    fn demand_is_looked_ahead() {
        // 100 MiB taken in 250 ms: 400 MiB/s, 200 MiB over the next 500 ms.
        let q = Duration::from_millis(250);
        let prev = Some((s(300, 600), q));
        // 200 MiB available is below 32 + 200: back to 64 + 200.
        assert_eq!(give_back(prev, s(200, 600), R), 64 * MIB);
        assert_eq!(demand(s(300, 600), s(200, 600), q), 400 * MIB);
    }

    #[test]
    fn the_balloon_moving_is_no_demand() {
        let q = Duration::from_millis(250);
        // The balloon took 100 MiB: available fell by as much.
        assert_eq!(demand(s(300, 500), s(200, 600), q), 0);
        // The balloon gave 100 MiB back and the guest used 50 of it.
        assert_eq!(demand(s(100, 600), s(150, 500), q), 200 * MIB);
    }

    #[test]
    fn slow_samples_look_ahead_at_most_two_seconds() {
        assert_eq!(
            look_ahead(Duration::from_millis(250)),
            Duration::from_millis(500)
        );
        assert_eq!(look_ahead(Duration::from_secs(5)), LOOK_AHEAD_MAX);
        // 10 MiB/s over 5 s: 20 MiB ahead, not 100.
        let prev = Some((s(90, 600), Duration::from_secs(5)));
        assert_eq!(give_back(prev, s(40, 600), R), 44 * MIB);
    }
}
