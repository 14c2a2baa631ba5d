// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Swapping: the reclaim that always works (until the store is full).
//! Swap-out goes through [`super::evict`] (write-protect, copy, punch, only
//! then Swapped); a fault on a Swapped page is a swap-in
//! ([`super::evict::swap_in`]).
//!
//! Which pages ([`Selection::Clock`], the default): a CLOCK hand over
//! guest-physical pages whose reference bit is a write seen through our own
//! write protection. The hand arms a resident page it meets for the first
//! time (write-protects it) and moves on; a write to an armed page is a WP
//! fault that marks it referenced and opens it again. The next time round,
//! a page still armed was not written since: it is cold and goes; a
//! referenced one gets a second chance (re-armed). Pages swapped in are
//! referenced. Reads are not seen (no accessed bit reaches us: on this
//! kernel `page_idle` is absent and `PAGEMAP_SCAN` needs async WP, which
//! would take away the synchronous WP swap-out relies on). One bit per
//! page ([`super::clock`]). [`Selection::Random`] is the baseline it was measured against
//! (`BENCHMARKS.md`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use super::clock::Clock;
use super::evict::{self, batch_pages, Target};
use super::{Counters, Ctx, Policy};
use crate::mech::runs;
use crate::model::p2m::Owned;
use crate::model::PageState;
use crate::swap::SwapStore;
use crate::{Error, Result};

/// The aligned block a swap-in fault brings back with its page (what is
/// swapped of it, pool room permitting): 64 KiB, the demand fault-around.
pub const SWAP_AROUND_BYTES: u64 = 64 << 10;
/// Pages brought home per call of [`Swap::bring_home`] at most (32 MiB of
/// 4 KiB pages): the policy thread comes back for the rest at once.
pub const HOME_BATCH_PAGES: u64 = 8192;

/// How swap picks its victims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// CLOCK over write references (WP faults).
    Clock,
    /// Uniformly random resident pages (baseline).
    Random,
}

/// The swap policy.
#[derive(Debug)]
pub struct Swap {
    store: Option<SwapStore>,
    hand: AtomicU64,
    /// The CLOCK bits (side data of the pages, in the [`Ctx`] too).
    clock: Clock,
    selection: AtomicU8,
    rng: AtomicU64,
    /// Where [`Swap::bring_home`] looks next.
    home: AtomicU64,
    /// Read-around and bringing pages home on (off with fault-around off).
    ahead: AtomicBool,
}

impl Swap {
    /// Swapping to `store` (`None`: the policy is off and frees nothing) for
    /// `pages` guest pages.
    pub fn new(store: Option<SwapStore>, pages: u64) -> Self {
        let bits = if store.is_some() { pages } else { 0 };
        Swap {
            store,
            hand: AtomicU64::new(0),
            clock: Clock::new(bits),
            selection: AtomicU8::new(0),
            rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            home: AtomicU64::new(0),
            ahead: AtomicBool::new(true),
        }
    }

    /// The store, if swapping is on.
    pub fn store(&self) -> Option<&SwapStore> {
        self.store.as_ref()
    }

    /// Sets how victims are picked.
    pub fn set_selection(&self, s: Selection) {
        self.selection
            .store(u8::from(s == Selection::Random), Ordering::Relaxed);
    }

    fn selection(&self) -> Selection {
        if self.selection.load(Ordering::Relaxed) == 1 {
            Selection::Random
        } else {
            Selection::Clock
        }
    }

    /// Turns swapping in ahead of faults (read-around, [`Swap::bring_home`])
    /// on or off: [`crate::vm::Vm::set_fault_around`] does, with the
    /// demand fault-around (one page: every page waits for its own fault).
    pub fn set_ahead(&self, on: bool) {
        self.ahead.store(on, Ordering::Relaxed);
    }

    /// Brings swapped pages home without waiting for their faults, once the
    /// pool has room for them: at most [`HOME_BATCH_PAGES`] per call, only
    /// while the pool keeps `margin(pool size)` pages free (for the guest's
    /// own first touches, so that bringing pages home never makes the pool
    /// overflow and swap again; one read of the size for both, as the pool
    /// can change under the call). Ascending guest-physical order from where the last
    /// call stopped: the store keeps a batch's pages together in that order,
    /// so the reads are sequential. Returns (pages brought, more to bring).
    pub fn bring_home(&self, ctx: &Ctx<'_>, margin: impl Fn(u64) -> u64) -> (u64, bool) {
        let Some(store) = &self.store else {
            return (0, false);
        };
        if !self.ahead.load(Ordering::Relaxed) {
            return (0, false);
        }
        let pages = ctx.p2m.pages();
        let mut brought = 0;
        let mut scanned = 0;
        let mut pfn = self.home.load(Ordering::Relaxed) % pages.max(1);
        while scanned < pages && brought < HOME_BATCH_PAGES {
            let swapped = ctx.p2m.counts().get(PageState::Swapped);
            let room = home_room(ctx, &margin).min(HOME_BATCH_PAGES - brought);
            if swapped == 0 || room == 0 {
                break;
            }
            let run = (pages - pfn).min(evict::BATCH as u64);
            brought += evict::swap_in_range(ctx, store, pfn, run, room);
            scanned += run;
            pfn = (pfn + run) % pages;
        }
        self.home.store(pfn, Ordering::Relaxed);
        let swapped = ctx.p2m.counts().get(PageState::Swapped);
        let room = home_room(ctx, &margin);
        (brought, swapped > 0 && room > 0 && brought > 0)
    }

    /// The CLOCK bits of the pages.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Up to `want` cold pages from the hand on, ascending; arms the
    /// resident pages it passes that are not cold yet. Moves the hand.
    fn pick_clock(&self, ctx: &Ctx<'_>, want: usize, budget: &mut u64) -> Vec<u64> {
        let pages = ctx.p2m.pages();
        let mut out = Vec::with_capacity(want);
        let mut arm = Vec::new();
        let mut pfn = self.hand.load(Ordering::Relaxed) % pages.max(1);
        while out.len() < want && *budget > 0 {
            *budget -= 1;
            if matches!(ctx.p2m.get(pfn), Ok(PageState::Resident)) && !ctx.pins.contains(pfn) {
                if ctx.clock.is_armed(pfn) {
                    out.push(pfn);
                } else {
                    arm.push(pfn);
                }
            }
            pfn += 1;
            if pfn >= pages {
                pfn = 0;
                // Keep each batch ascending (runs coalesce).
                break;
            }
        }
        self.hand.store(pfn, Ordering::Relaxed);
        self.arm(ctx, &arm);
        out
    }

    /// Write-protects resident pages so the next write is seen. Each page is
    /// owned while it is protected and its bit set, like any other change.
    fn arm(&self, ctx: &Ctx<'_>, pfns: &[u64]) {
        let owned: Vec<_> = pfns
            .iter()
            .filter_map(|&pfn| ctx.p2m.take(pfn, PageState::Resident).ok())
            .collect();
        for (first, count) in runs(owned.iter().map(Owned::pfn)) {
            match ctx.mech.write_protect(first, count, true) {
                Ok(()) => (first..first + count).for_each(|p| ctx.clock.arm(p)),
                Err(e) => log::warn!("arming pages {first}+{count}: {e}"),
            }
        }
        for page in owned {
            ctx.settle(page, PageState::Resident);
        }
    }

    fn pick_random(&self, ctx: &Ctx<'_>, want: usize, budget: &mut u64) -> Vec<u64> {
        let pages = ctx.p2m.pages().max(1);
        let mut out = Vec::with_capacity(want);
        let mut x = self.rng.load(Ordering::Relaxed);
        let mut tries = (want as u64).saturating_mul(64);
        while out.len() < want && tries > 0 && *budget > 0 {
            tries -= 1;
            *budget -= 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pfn = x % pages;
            if matches!(ctx.p2m.get(pfn), Ok(PageState::Resident)) && !out.contains(&pfn) {
                out.push(pfn);
            }
        }
        self.rng.store(x, Ordering::Relaxed);
        out.sort_unstable();
        out
    }
}

/// The pool's headroom less `margin` of its size, from one read of the size.
fn home_room(ctx: &Ctx<'_>, margin: &impl Fn(u64) -> u64) -> u64 {
    let size = ctx.pool.size_pages();
    size.saturating_sub(ctx.p2m.counts().committed())
        .saturating_sub(margin(size))
}

impl Policy for Swap {
    fn name(&self) -> &'static str {
        "swap"
    }

    fn on_fault(&self, ctx: &Ctx<'_>, pfn: u64, state: PageState, _write: bool) -> Result<bool> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        if state != PageState::Swapped {
            return Ok(false);
        }
        evict::swap_in(ctx, store, pfn)?;
        // Read-around: the swapped neighbours of the aligned block come back
        // with it while the pool has room (a guest reading its data back
        // reads it in order: one fault per block, not per page).
        let block = (SWAP_AROUND_BYTES / ctx.mech.page_size()).max(1);
        if block > 1 && self.ahead.load(Ordering::Relaxed) {
            let room = ctx.pool.headroom(ctx.p2m.counts());
            evict::swap_in_range(ctx, store, pfn & !(block - 1), block, room);
        }
        Ok(true)
    }

    fn reclaim(&self, ctx: &Ctx<'_>, pages_wanted: u64) -> Result<u64> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let mut freed = 0;
        // Three turns of the hand at most: arm, then take.
        let mut budget = 3 * ctx.p2m.pages();
        while freed < pages_wanted && budget > 0 {
            // Never take more pages than the store has room for (identical
            // and zero pages would fit, but a full store should cost nothing).
            let room = store.room();
            if room == 0 {
                let st = store.stats();
                Counters::add(&ctx.counters.swap_full, 1);
                if freed == 0 {
                    return Err(Error::SwapFull { slots: st.capacity });
                }
                break;
            }
            let batch_max = batch_pages(ctx.mech.page_size());
            let want = usize::try_from((pages_wanted - freed).min(room))
                .unwrap_or(batch_max)
                .min(batch_max);
            let batch = match self.selection() {
                Selection::Clock => self.pick_clock(ctx, want, &mut budget),
                Selection::Random => self.pick_random(ctx, want, &mut budget),
            };
            if batch.is_empty() {
                continue;
            }
            let out = evict::evict(ctx, &batch, Target::Swap(store))?;
            freed += out.freed();
            if out.full > 0 {
                break;
            }
        }
        Ok(freed)
    }
}
