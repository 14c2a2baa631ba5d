// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Demand paging: a touched page with no content (unpopulated, ballooned,
//! reported, zero) is zero-filled, counted against the pool.
//!
//! Fault-around: one wake-up of the fault thread costs far more than filling
//! a page (about 55 us against 2.5 us here), so a fault also fills the
//! untouched (`Unpopulated`) and reported-free (`Reported`) pages of the
//! aligned block around it, as long as the pool has room. The block size is
//! a tunable ([`Demand::set_fault_around`]); `BENCHMARKS.md` has the figures
//! behind [`DEFAULT_FAULT_AROUND_BYTES`].
//!
//! Re-use: a page the guest reported free is memory it owns again and
//! allocates from its buddy allocator, a free 2 MiB block at a time (Linux
//! reports free blocks of `pageblock_order`, 2 MiB on x86), so the first
//! touch of a reported page also fills the other reported pages of its
//! aligned [`REUSE_BLOCK_BYTES`] block (pool room permitting): a guest
//! re-using what it gave up pays one round trip per block, not one per
//! fault-around block. Ballooned and Zero pages are never filled ahead (the
//! balloon holds the former; the latter were reclaimed as untouched);
//! pages the balloon gives back are filled when it does, while the pool has
//! room (`policy/release.rs` `take_back`). A fault-around of one page turns
//! all filling ahead off: each touch fills its own page only.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Counters, Ctx, Policy};
use crate::mech::runs;
use crate::model::p2m::Owned;
use crate::model::{Backing, PageState};
use crate::{Error, Result};

/// Default fault-around block: 64 KiB.
pub const DEFAULT_FAULT_AROUND_BYTES: u64 = 64 << 10;
/// Largest fault-around block: 2 MiB.
pub const MAX_FAULT_AROUND_BYTES: u64 = 2 << 20;
/// The block a touch of a reported page fills the reported pages of.
pub const REUSE_BLOCK_BYTES: u64 = 2 << 20;

/// The demand-paging policy.
#[derive(Debug)]
pub struct Demand {
    around_pages: AtomicU64,
    page_size: u64,
}

impl Demand {
    /// Demand paging for pages of `page_size` bytes, default fault-around.
    pub fn new(page_size: u64) -> Self {
        let d = Demand {
            around_pages: AtomicU64::new(1),
            page_size,
        };
        d.store_around(DEFAULT_FAULT_AROUND_BYTES);
        d
    }

    fn store_around(&self, bytes: u64) {
        self.around_pages
            .store((bytes / self.page_size).max(1), Ordering::Relaxed);
    }

    /// Sets the fault-around block in bytes: a power of two of at most
    /// [`MAX_FAULT_AROUND_BYTES`]; at most one page means no fault-around.
    pub fn set_fault_around(&self, bytes: u64) -> Result<()> {
        if !bytes.is_power_of_two() || bytes > MAX_FAULT_AROUND_BYTES {
            return Err(Error::InvalidArgument(format!(
                "fault-around {bytes} bytes: must be a power of two of at most {MAX_FAULT_AROUND_BYTES}"
            )));
        }
        self.store_around(bytes);
        Ok(())
    }

    /// The fault-around block in pages.
    pub fn fault_around_pages(&self) -> u64 {
        self.around_pages.load(Ordering::Relaxed)
    }

    /// The re-use block in pages (at least the fault-around block); 1 when
    /// fault-around is off.
    pub fn reuse_block_pages(&self) -> u64 {
        let around = self.fault_around_pages();
        if around <= 1 {
            return 1;
        }
        around.max((REUSE_BLOCK_BYTES / self.page_size).max(1))
    }

    /// True when pages are filled ahead of the guest's touch (fault-around
    /// on): also what the take-back of ballooned pages asks.
    pub fn fills_ahead(&self) -> bool {
        self.fault_around_pages() > 1
    }
}

/// Pages to fill with the faulting page `pfn`, ascending, each taken from its
/// state: the `Unpopulated` and `Reported` pages of the aligned `around`
/// block, then the `Reported` pages of the aligned `reuse` block, while the
/// pool has room (`room` pages). A page another thread owns is skipped.
fn take_around<'a>(
    ctx: &Ctx<'a>,
    pfn: u64,
    around: u64,
    reuse: u64,
    mut room: u64,
    taken: &mut Vec<Owned<'a>>,
) {
    let pages = ctx.p2m.pages();
    let near = pfn & !(around - 1)..((pfn & !(around - 1)) + around).min(pages);
    for p in near.clone().filter(|&p| p != pfn) {
        if room == 0 {
            return;
        }
        for from in [PageState::Unpopulated, PageState::Reported] {
            if let Ok(page) = ctx.p2m.take(p, from) {
                taken.push(page);
                room -= 1;
                break;
            }
        }
    }
    if reuse <= around {
        return;
    }
    let start = pfn & !(reuse - 1);
    for p in (start..(start + reuse).min(pages)).filter(|p| !near.contains(p)) {
        if room == 0 {
            return;
        }
        // A look first: most pages of a block are not reported.
        if ctx.p2m.get(p).ok() != Some(PageState::Reported) {
            continue;
        }
        if let Ok(page) = ctx.p2m.take(p, PageState::Reported) {
            taken.push(page);
            room -= 1;
        }
    }
}

impl Policy for Demand {
    fn name(&self) -> &'static str {
        "demand"
    }

    fn on_fault(&self, ctx: &Ctx<'_>, pfn: u64, state: PageState, _write: bool) -> Result<bool> {
        if !state.is_fillable() {
            return Ok(false);
        }
        let mut taken = vec![ctx.p2m.take(pfn, state)?];
        let block = self.fault_around_pages();
        if block > 1 {
            let room = ctx.pool.headroom(ctx.p2m.counts());
            let reuse = self.reuse_block_pages();
            take_around(ctx, pfn, block, reuse, room, &mut taken);
            taken.sort_unstable_by_key(|page| page.pfn());
        }
        let mut result = Ok(());
        let mut filled = 0;
        for (first, count) in runs(taken.iter().map(|page| page.pfn())) {
            if let Err(e) = ctx.mech.fill_zero(first, count) {
                result = Err(e);
                break;
            }
            filled = first + count;
        }
        let (lo, hi) = (
            taken.first().map_or(pfn, |p| p.pfn()),
            taken.last().map_or(pfn, |p| p.pfn()),
        );
        // Pages below `filled` are present; the rest go back where they were.
        let mut done = 0;
        for page in taken {
            let (p, from) = (page.pfn(), page.from());
            if p < filled {
                done += 1;
                if from == PageState::Zero {
                    ctx.rmap.remove(Backing::ZeroPage, p);
                }
                ctx.settle(page, PageState::Resident);
            } else {
                ctx.settle(page, from);
            }
        }
        Counters::add(&ctx.counters.demand_fills, done);
        // The model says Resident before any faulting thread runs on. On a
        // failure the faulters are woken too: they fault again and retry.
        ctx.mech.wake(lo, hi - lo + 1)?;
        result.map(|()| true)
    }
}
