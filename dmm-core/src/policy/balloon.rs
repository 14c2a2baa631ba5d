// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Ballooning: the target (in 4 KiB pages, virtio `num_pages`) the balloon
//! device should ask of the guest, pushed to subscribed devices, and the
//! `actual` the device reports back.
//!
//! With the policy on, the pool drives the target: a pool of `p` bytes asks
//! for a balloon of `(size - p) / 4096` pages; growing the pool lowers it
//! (deflate). The guest gives pages back asynchronously (they arrive as
//! releases), so [`Balloon::reclaim`] frees nothing at once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};

use super::{Ctx, Policy};
use crate::vm::{BalloonPush, BalloonTarget};
use crate::{Error, Result};

/// Balloon pages are always 4 KiB (virtio-balloon's unit).
pub const BALLOON_PAGE: u64 = 4096;

#[derive(Debug, Default)]
struct Targets {
    target: u32,
    subscribers: Vec<Sender<BalloonPush>>,
}

/// The balloon policy and the balloon's state.
#[derive(Debug)]
pub struct Balloon {
    enabled: bool,
    size: u64,
    targets: Mutex<Targets>,
    actual: AtomicU32,
    /// Pool size the target was last derived from.
    last_pool: AtomicU64,
}

impl Balloon {
    /// A balloon for `size` bytes of guest RAM; `enabled` lets the pool drive it.
    pub fn new(enabled: bool, size: u64) -> Self {
        Balloon {
            enabled,
            size,
            targets: Mutex::new(Targets::default()),
            actual: AtomicU32::new(0),
            last_pool: AtomicU64::new(size),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Targets> {
        // Every critical section leaves the targets consistent.
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when the pool drives the target.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The target for a pool of `pool_bytes`.
    pub fn target_for_pool(&self, pool_bytes: u64) -> u32 {
        let pages = self.size.saturating_sub(pool_bytes) / BALLOON_PAGE;
        u32::try_from(pages).unwrap_or(u32::MAX)
    }

    /// Current target in 4 KiB pages.
    pub fn target(&self) -> u32 {
        self.lock().target
    }

    /// Sets the target and pushes it to subscribers if it changed. A target
    /// larger than guest RAM is an error naming it.
    pub fn set_target(&self, num_pages: u32) -> Result<()> {
        let max = self.size / BALLOON_PAGE;
        if u64::from(num_pages) > max {
            return Err(Error::InvalidArgument(format!(
                "balloon target {num_pages} pages is larger than guest RAM ({max} pages of 4 KiB)"
            )));
        }
        let mut t = self.lock();
        if t.target != num_pages {
            t.target = num_pages;
            let msg = BalloonPush::Target(BalloonTarget { num_pages });
            t.subscribers.retain(|s| s.send(msg).is_ok());
        }
        Ok(())
    }

    /// A receiver of targets: the current one at once, then every change,
    /// and free page hint requests.
    pub fn subscribe(&self) -> Receiver<BalloonPush> {
        let (tx, rx) = channel();
        let mut t = self.lock();
        if tx
            .send(BalloonPush::Target(BalloonTarget {
                num_pages: t.target,
            }))
            .is_ok()
        {
            t.subscribers.push(tx);
        }
        rx
    }

    /// Asks the subscribed devices for free page hint round `round`;
    /// returns how many were asked.
    pub fn ask_hints(&self, round: u32) -> usize {
        let mut t = self.lock();
        t.subscribers
            .retain(|s| s.send(BalloonPush::FreePageHint { round }).is_ok());
        t.subscribers.len()
    }

    /// Number of live subscribers.
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// The device's reported balloon size.
    pub fn set_actual(&self, num_pages: u32) {
        self.actual.store(num_pages, Ordering::Relaxed);
    }

    /// Last reported balloon size.
    pub fn actual(&self) -> u32 {
        self.actual.load(Ordering::Relaxed)
    }

    /// The guest had its deadline and swap covers the rest: stop asking for
    /// more than it gave (a guest squeezed further would OOM). Returns true
    /// when the target was lowered.
    pub fn settle_at_actual(&self) -> bool {
        let actual = self.actual();
        actual < self.target() && self.set_target(actual).is_ok()
    }
}

impl Policy for Balloon {
    fn name(&self) -> &'static str {
        "balloon"
    }

    fn reclaim(&self, _ctx: &Ctx<'_>, _pages_wanted: u64) -> Result<u64> {
        // The target set with the pool already asks for the whole excess.
        Ok(0)
    }

    fn on_pool_change(&self, ctx: &Ctx<'_>, _pool_pages: u64) {
        if self.enabled {
            let pool = ctx.pool.size_bytes();
            let want = self.target_for_pool(pool);
            // A growing pool only ever deflates (a target settled below the
            // pool's is not raised again); a shrinking one asks anew.
            let grows = pool >= self.last_pool.swap(pool, Ordering::Relaxed);
            let target = if grows { want.min(self.target()) } else { want };
            // Within guest RAM by construction, so this cannot fail.
            let _ = self.set_target(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_subscribers_are_dropped() {
        let b = Balloon::new(true, 64 << 20);
        let keep = b.subscribe();
        let gone = b.subscribe();
        assert_eq!(b.subscribers(), 2);
        drop(gone);
        b.set_target(7).unwrap();
        assert_eq!(b.subscribers(), 1);
        assert_eq!(
            keep.try_iter().collect::<Vec<_>>(),
            vec![
                BalloonPush::Target(BalloonTarget { num_pages: 0 }),
                BalloonPush::Target(BalloonTarget { num_pages: 7 })
            ]
        );
        assert_eq!(b.ask_hints(2), 1);
        assert_eq!(
            keep.try_recv().unwrap(),
            BalloonPush::FreePageHint { round: 2 }
        );
        // Unchanged target: nothing pushed.
        b.set_target(7).unwrap();
        assert!(keep.try_recv().is_err());
        assert_eq!(b.target_for_pool(16 << 20), (48 << 20) / 4096);
        assert!(b.set_target(((64 << 20) / 4096) + 1).is_err());
    }
}
