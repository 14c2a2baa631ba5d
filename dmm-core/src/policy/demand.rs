// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Demand paging: a touched page with no content (unpopulated, ballooned,
//! reported, zero) is zero-filled, counted against the pool.
//!
//! Fault-around: one wake-up of the fault thread costs far more than filling
//! a page (about 55 us against 2.5 us here), so a fault also fills the
//! untouched (`Unpopulated`) pages of the aligned block around it, as long as
//! the pool has room. Pages the guest gave up are never filled ahead: only
//! when touched. The block size is a tunable ([`Demand::set_fault_around`]);
//! `BENCHMARKS.md` has the figures behind [`DEFAULT_FAULT_AROUND_BYTES`].

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Counters, Ctx, Policy};
use crate::mech::runs;
use crate::model::{Backing, PageState};
use crate::{Error, Result};

/// Default fault-around block: 64 KiB.
pub const DEFAULT_FAULT_AROUND_BYTES: u64 = 64 << 10;
/// Largest fault-around block: 2 MiB.
pub const MAX_FAULT_AROUND_BYTES: u64 = 2 << 20;

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
            let start = pfn & !(block - 1);
            let end = (start + block).min(ctx.p2m.pages());
            let mut room = ctx.pool.headroom(ctx.p2m.counts());
            for p in (start..end).filter(|&p| p != pfn) {
                if room == 0 {
                    break;
                }
                if let Ok(page) = ctx.p2m.take(p, PageState::Unpopulated) {
                    taken.push(page);
                    room -= 1;
                }
            }
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
