// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the guest gives and takes (through the balloon device and free page
//! reporting): releases, take-backs (deflate), and pins. Guest ranges are
//! checked here: one outside guest RAM or unaligned is ignored and counted,
//! never released. The page-level work is [`crate::policy::release`].

use super::engine::Engine;
use super::{BatchOutcome, GuestRange, ReleaseReason};
use crate::model::PageState;
use crate::policy::{hint, release, Counters};
use crate::Result;

impl Engine {
    /// Valid pfn range of a guest range, or `None` (counted as ignored).
    fn pfns_of(&self, r: &GuestRange, out: &mut BatchOutcome) -> Option<std::ops::Range<u64>> {
        let ps = self.page_size;
        let ok = r.len > 0
            && r.gpa % ps == 0
            && r.len % ps == 0
            && r.gpa.checked_add(r.len).is_some_and(|end| end <= self.size);
        if ok {
            Some(r.gpa / ps..(r.gpa + r.len) / ps)
        } else {
            out.ignored += r.len.div_ceil(ps).max(1);
            Counters::add(&self.counters.ignored_requests, 1);
            log::debug!("ignored range gpa 0x{:x} len 0x{:x}", r.gpa, r.len);
            None
        }
    }

    /// The guest gave `ranges` up. A page owned by another thread (being
    /// filled, evicted, swapped in) is released once its owner settles it,
    /// before this returns.
    pub(super) fn release(
        &self,
        ranges: &[GuestRange],
        reason: ReleaseReason,
    ) -> Result<BatchOutcome> {
        let to = match reason {
            ReleaseReason::Balloon => PageState::Ballooned,
            ReleaseReason::Report => PageState::Reported,
            ReleaseReason::Hint => return self.reclaim_hinted(ranges),
        };
        let mut out = BatchOutcome::default();
        let ctx = self.ctx();
        for r in ranges {
            let Some(pfns) = self.pfns_of(r, &mut out) else {
                continue;
            };
            if reason == ReleaseReason::Report && !self.policies.report {
                // Free page reports are a policy: without it they are ignored.
                out.ignored += pfns.end - pfns.start;
                continue;
            }
            let done = release::release(&ctx, pfns, to)?;
            out.pages += done.pages;
            out.bytes += done.resident * self.page_size;
            out.ignored += done.ignored;
        }
        Ok(out)
    }

    /// The guest hinted `ranges` free: their zero pages are reclaimed
    /// (`policy/hint.rs`); without the zero policy the hints are ignored.
    fn reclaim_hinted(&self, ranges: &[GuestRange]) -> Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        let ctx = self.ctx();
        for r in ranges {
            let Some(pfns) = self.pfns_of(r, &mut out) else {
                continue;
            };
            if !self.policies.share_zero || !self.mech.can_write_protect() {
                out.ignored += pfns.end - pfns.start;
                continue;
            }
            let got = hint::reclaim_hinted(&ctx, pfns)?;
            out.pages += got.freed;
            out.bytes += got.freed * self.page_size;
            out.ignored += got.kept + got.skipped;
        }
        Ok(out)
    }

    /// The guest takes `ranges` back (balloon deflate).
    pub(super) fn reclaim_back(&self, ranges: &[GuestRange]) -> Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        let ctx = self.ctx();
        for r in ranges {
            let Some(pfns) = self.pfns_of(r, &mut out) else {
                continue;
            };
            let (back, ignored) = release::take_back(&ctx, pfns, self.demand.fills_ahead())?;
            out.pages += back;
            out.ignored += ignored;
        }
        self.note_deflate(out.pages);
        Ok(out)
    }

    /// Pins (`on`) or unpins guest ranges.
    pub(super) fn pin(&self, ranges: &[GuestRange], on: bool) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        for r in ranges {
            let Some(pfns) = self.pfns_of(r, &mut out) else {
                continue;
            };
            let count = pfns.end - pfns.start;
            if on {
                self.pins.pin(pfns.start, count);
            } else {
                self.pins.unpin(pfns.start, count);
            }
            out.pages += count;
        }
        out
    }
}
