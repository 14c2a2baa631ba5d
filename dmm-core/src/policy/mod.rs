// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Policies on one interface ([`Policy`]): demand paging, free page reporting,
//! zero-page sharing, ballooning and swapping. Each sees the VM through a
//! [`Ctx`] and changes pages only through the P2M state machine.
//!
//! Faults go to the policies in list order until one handles the page (demand
//! paging for untouched/released pages, swap for swapped ones). When resident
//! exceeds the pool, [`reclaim`] asks them in order of cost to the guest:
//! reported free pages, zero pages, balloon, swap.

pub mod balloon;
pub mod clock;
pub mod demand;
pub mod evict;
pub mod hint;
pub mod poison;
pub mod release;
pub mod report;
pub mod swap;
pub mod zero;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use self::clock::Clock;
use self::poison::MemoryErrors;
use crate::mech::Mechanism;
use crate::model::p2m::Owned;
use crate::model::{P2m, PageState, Pool, Rmap};
use crate::swap::SwapStore;
use crate::vm::events::Events;
use crate::Result;

/// Event counters of one VM (the counters of [`crate::vm::Stats`]).
#[derive(Debug, Default)]
pub struct Counters {
    /// Faults handled.
    pub faults: AtomicU64,
    /// Pages zero-filled by demand paging.
    pub demand_fills: AtomicU64,
    /// Pages read back from swap.
    pub swap_ins: AtomicU64,
    /// Pages written to swap.
    pub swap_outs: AtomicU64,
    /// Bytes given back by the balloon.
    pub reclaimed_balloon_bytes: AtomicU64,
    /// Bytes given back by free page reporting.
    pub reclaimed_report_bytes: AtomicU64,
    /// Bytes given back by zero-page sharing.
    pub reclaimed_zero_bytes: AtomicU64,
    /// Bytes given back by swapping.
    pub reclaimed_swap_bytes: AtomicU64,
    /// Bytes given back from blocks the guest hinted free (zero pages).
    pub reclaimed_hint_bytes: AtomicU64,
    /// Free page hint rounds asked of the guest.
    pub hint_rounds: AtomicU64,
    /// Pages of hinted blocks kept: not zero (the guest took them back
    /// early, or it does not zero what it allocates), pinned, or swapped.
    pub hint_kept_pages: AtomicU64,
    /// Bad requests ignored.
    pub ignored_requests: AtomicU64,
    /// Write-protect faults handled (writes during swap-out / zero reclaim).
    pub wp_faults: AtomicU64,
    /// Pages whose swap-out or zero reclaim was aborted by a write.
    pub reclaim_aborts: AtomicU64,
    /// Swap-ins that found the page populated by a device process (kept as is).
    pub device_populated_conflicts: AtomicU64,
    /// Faults raised by device processes through their own mappings.
    pub device_faults: AtomicU64,
    /// Pages a device process wrote between an eviction's copy and its punch
    /// (the write was caught and kept).
    pub device_write_races: AtomicU64,
    /// Swap-outs refused because the swap store was full.
    pub swap_full: AtomicU64,
    /// Times reclaim missed its deadline with resident still above the pool.
    pub reclaim_behind: AtomicU64,
    /// Memory errors delivered (pages whose content was lost).
    pub memory_errors: AtomicU64,
    /// Released pages another thread owned when the release met them (the
    /// release waited for the owner's settle).
    pub release_waits: AtomicU64,
    /// Pages populated when the balloon gave them back (deflate).
    pub take_back_fills: AtomicU64,
    /// Pages read back from swap without a fault of their own (the
    /// neighbours a swap-in fault read with its page, and the pages brought
    /// back in the background after the pool grew); also in `swap_ins`.
    pub swap_ins_ahead: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What a policy sees of the VM.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The P2M table.
    pub p2m: &'a P2m,
    /// The pool.
    pub pool: &'a Pool,
    /// The reverse map.
    pub rmap: &'a Rmap,
    /// The mechanism.
    pub mech: &'a dyn Mechanism,
    /// Counters.
    pub counters: &'a Counters,
    /// Guest RAM in bytes.
    pub size: u64,
    /// Writes waiting on in-flight pages (ask reclaim to give them back).
    pub aborts: &'a Aborts,
    /// Ranges never swapped or zero-reclaimed.
    pub pins: &'a Pins,
    /// The swap store, when swapping is on.
    pub store: Option<&'a SwapStore>,
    /// The CLOCK bits of swap's victim selection.
    pub clock: &'a Clock,
    /// Pages whose content was lost, and who delivers their errors.
    pub memory_errors: &'a MemoryErrors,
    /// Event subscribers.
    pub events: &'a Events,
}

impl Ctx<'_> {
    /// Settles an owned page to `to` (every settle of a policy goes through
    /// here).
    pub fn settle(&self, page: Owned<'_>, to: PageState) {
        page.settle(to);
    }
}

/// Pages a write fault wants back from an in-flight reclaim.
#[derive(Debug, Default)]
pub struct Aborts(Mutex<HashSet<u64>>);

impl Aborts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        // A set of pfns: a poisoned lock still holds usable values.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A writer waits on in-flight `pfn`: reclaim should give it back.
    pub fn request(&self, pfn: u64) {
        self.lock().insert(pfn);
    }

    /// Forgets a request (the writer is done).
    pub fn clear(&self, pfn: u64) {
        self.lock().remove(&pfn);
    }

    /// Which of `pfns` were asked back (and forgets them).
    pub fn take_any(&self, pfns: &[u64]) -> HashSet<u64> {
        let mut set = self.lock();
        if set.is_empty() {
            return HashSet::new();
        }
        pfns.iter().copied().filter(|p| set.remove(p)).collect()
    }
}

/// Guest-physical page ranges excluded from swap and zero reclaim (a
/// device's vrings: device processes map guest RAM without userfaultfd).
#[derive(Debug, Default)]
pub struct Pins(RwLock<Vec<(u64, u64)>>);

impl Pins {
    /// Pins pfns `first..first+count`.
    pub fn pin(&self, first: u64, count: u64) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((first, first.saturating_add(count)));
    }

    /// Removes pins overlapping `first..first+count` exactly as pinned, or
    /// cuts them. Returns how many pin ranges changed.
    pub fn unpin(&self, first: u64, count: u64) -> usize {
        let end = first.saturating_add(count);
        let mut v = self.0.write().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(v.len());
        let mut changed = 0;
        for &(a, b) in v.iter() {
            if b <= first || a >= end {
                out.push((a, b));
                continue;
            }
            changed += 1;
            if a < first {
                out.push((a, first));
            }
            if b > end {
                out.push((end, b));
            }
        }
        *v = out;
        changed
    }

    /// True when `pfn` is pinned.
    pub fn contains(&self, pfn: u64) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|&(a, b)| (a..b).contains(&pfn))
    }

    /// Pinned pages (ranges may overlap: an upper bound).
    pub fn pages(&self) -> u64 {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|&(a, b)| b - a)
            .sum()
    }
}

/// A memory-management policy.
pub trait Policy: Send + Sync + fmt::Debug {
    /// Short name for logs.
    fn name(&self) -> &'static str;

    /// A thread touched the missing page `pfn`, now in `state`. Returns
    /// `Ok(true)` when this policy resolved it (the page is present).
    fn on_fault(&self, _ctx: &Ctx<'_>, _pfn: u64, _state: PageState, _write: bool) -> Result<bool> {
        Ok(false)
    }

    /// Frees up to `pages_wanted` resident pages; returns pages freed now.
    fn reclaim(&self, _ctx: &Ctx<'_>, _pages_wanted: u64) -> Result<u64> {
        Ok(0)
    }

    /// The pool size changed to `pool_pages`.
    fn on_pool_change(&self, _ctx: &Ctx<'_>, _pool_pages: u64) {}
}

/// Runs `policies` (already in cost order) until `pages_wanted` are freed;
/// returns the pages freed. A failing policy is logged and skipped.
pub fn reclaim(ctx: &Ctx<'_>, policies: &[&dyn Policy], pages_wanted: u64) -> u64 {
    let mut freed = 0;
    for p in policies {
        if freed >= pages_wanted {
            break;
        }
        match p.reclaim(ctx, pages_wanted - freed) {
            Ok(n) => freed += n,
            Err(e) => log::warn!("policy {}: reclaim: {e}", p.name()),
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::mech::sim::SimMech;

    /// Frees up to `gives` pages and records that it was asked.
    #[derive(Debug)]
    struct Fake {
        name: &'static str,
        gives: u64,
        log: &'static Mutex<Vec<(&'static str, u64)>>,
    }

    impl Policy for Fake {
        fn name(&self) -> &'static str {
            self.name
        }

        fn reclaim(&self, _ctx: &Ctx<'_>, wanted: u64) -> Result<u64> {
            self.log.lock().unwrap().push((self.name, wanted));
            if self.gives == u64::MAX {
                return Err(crate::Error::State("fails".into()));
            }
            Ok(self.gives.min(wanted))
        }
    }

    #[test]
    fn reclaim_runs_in_order_until_satisfied() {
        static LOG: Mutex<Vec<(&str, u64)>> = Mutex::new(Vec::new());
        let (p2m, pool, rmap) = (
            P2m::new(4),
            Pool::new(4, 4096, None).unwrap(),
            Rmap::default(),
        );
        let (mech, counters) = (SimMech::new(4096, 4), Counters::default());
        let (aborts, pins, clock) = (Aborts::default(), Pins::default(), Clock::default());
        let (memory_errors, events) = (MemoryErrors::default(), Events::default());
        let ctx = Ctx {
            p2m: &p2m,
            pool: &pool,
            rmap: &rmap,
            mech: &mech,
            counters: &counters,
            size: 4 * 4096,
            aborts: &aborts,
            pins: &pins,
            store: None,
            clock: &clock,
            memory_errors: &memory_errors,
            events: &events,
        };
        let a = Fake {
            name: "a",
            gives: 3,
            log: &LOG,
        };
        let b = Fake {
            name: "b",
            gives: u64::MAX,
            log: &LOG,
        };
        let c = Fake {
            name: "c",
            gives: 4,
            log: &LOG,
        };
        let d = Fake {
            name: "d",
            gives: 9,
            log: &LOG,
        };
        assert_eq!(reclaim(&ctx, &[&a, &b, &c, &d], 5), 5);
        // `b` fails and is skipped; `c` gives the rest; `d` is never asked.
        assert_eq!(*LOG.lock().unwrap(), vec![("a", 5), ("b", 2), ("c", 2)]);
    }

    #[test]
    fn pins_cut_and_contain() {
        let p = Pins::default();
        p.pin(10, 10);
        assert!(p.contains(10) && p.contains(19) && !p.contains(20) && !p.contains(9));
        assert_eq!(p.unpin(12, 2), 1);
        assert!(p.contains(11) && !p.contains(12) && !p.contains(13) && p.contains(14));
        assert_eq!(p.pages(), 8);
        assert_eq!(p.unpin(0, 100), 2);
        assert_eq!(p.pages(), 0);
    }
}
