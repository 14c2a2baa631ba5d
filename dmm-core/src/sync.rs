// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The synchronisation the P2M (`model/p2m.rs`) is built from: std's, or
//! under `--cfg loom` loom's, so that `tests/loom_p2m.rs` explores every
//! interleaving of the ownership protocol on the real code.

#[cfg(loom)]
pub(crate) use loom::sync::{atomic, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{atomic, Condvar, Mutex, MutexGuard};

/// Time for timed waits.
pub(crate) mod time {
    #[cfg(not(loom))]
    pub(crate) use std::time::Instant;

    /// Loom does not model time (its `Condvar::wait_timeout` never times
    /// out): a clock that stands still, so a timed wait lasts until it is
    /// woken, and a lost wake-up shows as a deadlock.
    #[cfg(loom)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub(crate) struct Instant(std::time::Duration);

    #[cfg(loom)]
    impl Instant {
        pub(crate) fn now() -> Self {
            Instant(std::time::Duration::ZERO)
        }
    }

    #[cfg(loom)]
    impl std::ops::Add<std::time::Duration> for Instant {
        type Output = Instant;
        fn add(self, d: std::time::Duration) -> Instant {
            Instant(self.0.saturating_add(d))
        }
    }

    #[cfg(loom)]
    impl std::ops::Sub for Instant {
        type Output = std::time::Duration;
        fn sub(self, earlier: Instant) -> std::time::Duration {
            self.0.saturating_sub(earlier.0)
        }
    }
}
