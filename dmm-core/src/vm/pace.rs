// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How much swap helps the balloon while the balloon is inside its deadline.
//!
//! The balloon is asked first, but it runs at the guest's speed, and what it
//! gives the host is only the guest's free pages the host holds: a free page
//! the host never populated (or already took back) is zero-filled by the
//! guest when it allocates it for the balloon (`init_on_alloc`), then
//! released, a net gain of nothing. Rather than wait for the deadline and
//! then swap, swap covers concurrently:
//!
//! 1. at once, what the balloon was not asked for ([`Progress::can_give`]:
//!    the target is capped at the guest's available memory beyond a reserve);
//! 2. once the guest has been watched for [`PROBE`], what its net pace (the
//!    resident memory it gave back, by the balloon or free page reports,
//!    less what it populated meanwhile) will not deliver by the horizon: the
//!    time the shrink takes at [`RECLAIM_PACE`], at least [`MIN_HORIZON`]
//!    and at most the deadline. After the horizon swap covers all that is
//!    left; the balloon keeps its target until the deadline.
//!
//! A guest that keeps pace gets no swapping. The balloon keeps its target
//! while swap helps; pages swapped meanwhile stay swapped until touched.

use std::time::Duration;

/// The pace the pool shrinks at, bytes per second: what the guest does not
/// deliver at this pace, swap does. Measured under TCG: the balloon alone
/// gives 200-750 MiB/s, swap about 1.2 GiB/s (`BENCHMARKS.md`).
pub(super) const RECLAIM_PACE: u64 = 1536 << 20;
/// The shortest horizon: a small shrink still gives the guest this long.
pub(super) const MIN_HORIZON: Duration = Duration::from_millis(500);
/// The guest's pace is not judged before this (its driver takes a moment).
pub(super) const PROBE: Duration = Duration::from_millis(200);
/// A guest that has released nothing at all is judged after this (or at the
/// horizon when that is sooner): its balloon driver may be missing.
pub(super) const SILENCE: Duration = Duration::from_secs(1);

/// One change of the pool: what the guest's pace is measured from.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Episode {
    /// Excess over the pool right after the change, bytes.
    pub(super) excess0: u64,
    /// Bytes the guest had released by then (balloon and reports, gross).
    pub(super) guest0: u64,
    /// Bytes we had reclaimed by then (swap and zero pages).
    pub(super) ours0: u64,
}

/// Where one shrink stands, in bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    /// Since the pool changed.
    pub(super) elapsed: Duration,
    /// Time the guest has to deliver ([`horizon`]).
    pub(super) horizon: Duration,
    /// The guest has released something since the pool changed.
    pub(super) started: bool,
    /// Resident memory the guest gave back since then, net of what it
    /// populated meanwhile (what it did not give comes to 0).
    pub(super) net: u64,
    /// Still above the pool.
    pub(super) left: u64,
    /// What the balloon is still asked for.
    pub(super) can_give: u64,
}

/// Time a shrink of `excess0` bytes should take: at [`RECLAIM_PACE`],
/// within `MIN_HORIZON..=deadline` (the deadline wins when shorter).
pub(super) fn horizon(excess0: u64, deadline: Duration) -> Duration {
    let at_pace = Duration::from_secs_f64(excess0 as f64 / RECLAIM_PACE as f64);
    at_pace.max(MIN_HORIZON).min(deadline)
}

/// Bytes to swap now so the pool is reached although the guest is slow or
/// cannot give enough (see the module doc).
pub(super) fn swap_help(p: &Progress) -> u64 {
    let shortfall = p.left.saturating_sub(p.can_give);
    if p.elapsed < PROBE || (!p.started && p.elapsed < SILENCE.min(p.horizon)) {
        return shortfall;
    }
    let Some(rest) = p.horizon.checked_sub(p.elapsed) else {
        return p.left;
    };
    let rate = p.net as f64 / p.elapsed.as_secs_f64();
    let expect = rate * rest.as_secs_f64();
    let behind = if expect >= p.left as f64 {
        0
    } else {
        p.left - expect as u64
    };
    behind.max(shortfall)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(ms: u64, net: u64, left: u64, can_give: u64) -> Progress {
        Progress {
            elapsed: Duration::from_millis(ms),
            horizon: Duration::from_secs(2),
            started: net > 0,
            net,
            left,
            can_give,
        }
    }

    #[test]
    fn horizon_is_paced_and_bounded() {
        let five = Duration::from_secs(5);
        assert_eq!(horizon(3072 * MIB, five), Duration::from_secs(2));
        assert_eq!(horizon(64 * MIB, five), MIN_HORIZON);
        assert_eq!(horizon(64 * 1024 * MIB, five), five);
        assert_eq!(
            horizon(3072 * MIB, Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn what_the_balloon_cannot_give_goes_at_once() {
        // 846 MiB over the pool, the balloon asked for 300 MiB: 546 at once.
        assert_eq!(swap_help(&at(0, 0, 846 * MIB, 300 * MIB)), 546 * MIB);
        // Asked for everything: nothing until its pace is known.
        assert_eq!(swap_help(&at(0, 0, 846 * MIB, 900 * MIB)), 0);
    }

    #[test]
    fn a_guest_on_pace_gets_no_swap() {
        // 400 MiB in 0.5 s: 1200 MiB more by the horizon covers 800.
        assert_eq!(swap_help(&at(500, 400 * MIB, 800 * MIB, u64::MAX)), 0);
    }

    #[test]
    fn a_slow_guest_gets_what_it_will_miss() {
        // 100 MiB in 0.5 s: 300 MiB more by the horizon, 500 of 800 now.
        let help = swap_help(&at(500, 100 * MIB, 800 * MIB, u64::MAX));
        assert!(help.abs_diff(500 * MIB) < MIB, "{help}");
        // Busy but giving the host nothing (it zero-fills pages the host
        // does not hold and releases them): all of it.
        let mut p = at(500, 0, 800 * MIB, u64::MAX);
        p.started = true;
        assert_eq!(swap_help(&p), 800 * MIB);
    }

    #[test]
    fn silence_then_horizon() {
        // Nothing released: not judged before SILENCE ...
        assert_eq!(swap_help(&at(900, 0, 80 * MIB, u64::MAX)), 0);
        // ... then all of it.
        assert_eq!(swap_help(&at(1000, 0, 80 * MIB, u64::MAX)), 80 * MIB);
        // Past the horizon all that is left.
        assert_eq!(
            swap_help(&at(2100, 900 * MIB, 80 * MIB, u64::MAX)),
            80 * MIB
        );
        // A horizon shorter than SILENCE judges silence there.
        let mut p = at(300, 0, 8 * MIB, u64::MAX);
        p.horizon = Duration::from_millis(300);
        assert_eq!(swap_help(&p), 8 * MIB);
    }
}
