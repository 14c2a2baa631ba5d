// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`): when a shrink
//! starts, the guest is asked for the free memory it has. Its driver takes
//! every free 4 MiB block from its buddy allocator, hands each to the
//! device, and holds them all until the device says DONE.
//!
//! A hint is not a release. The driver's shrinker may give blocks back to
//! the guest's allocator before DONE, so a new owner may already be
//! writing one when it reaches us. A hinted page is therefore reclaimed
//! only through [`super::evict`]: owned, write-protected, read and punched
//! only if it reads as zeros. A write that lands before the protection
//! leaves non-zero content, and the page stays. A write after it waits in
//! a write-protect fault and finds the page punched, which reads as the
//! zeros it held. Either way nothing is lost. The punched page is settled
//! Reported: free guest memory that reads as zeros. The guest re-uses it at
//! the cost of a first touch, with no swap-in.
//!
//! Linux zeroes what it allocates (`init_on_alloc`, on by default in
//! distribution kernels), so the blocks it hints are zero pages. A guest
//! that does not zero them gives nothing this way, and its blocks are
//! counted as kept. Because the check is by content, a guest that poisons
//! free pages (`page_poison=1`) loses nothing either. A page that is not
//! resident has no host memory to give.

use std::ops::Range;

use super::evict::{self, batch_pages, Target};
use super::{Counters, Ctx};
use crate::model::PageState;
use crate::Result;

/// What one hinted range gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hinted {
    /// Pages reclaimed (zero, punched, now Reported).
    pub freed: u64,
    /// Resident pages kept: not zero, pinned, or asked back by a writer.
    pub kept: u64,
    /// Pages without host memory (nothing to give), or swapped.
    pub skipped: u64,
}

/// Reclaims the zero pages among the resident pages of `pfns` (inside
/// guest RAM), a batch at a time.
pub fn reclaim_hinted(ctx: &Ctx<'_>, pfns: Range<u64>) -> Result<Hinted> {
    let batch = batch_pages(ctx.mech.page_size());
    let mut out = Hinted::default();
    let mut resident = Vec::with_capacity(batch);
    let flush = |resident: &mut Vec<u64>, out: &mut Hinted| -> Result<()> {
        if resident.is_empty() {
            return Ok(());
        }
        let got = evict::evict(ctx, resident, Target::Hinted)?;
        out.freed += got.hinted;
        out.kept += resident.len() as u64 - got.hinted;
        resident.clear();
        Ok(())
    };
    for pfn in pfns {
        if ctx.p2m.get(pfn)? == PageState::Resident {
            resident.push(pfn);
            if resident.len() == batch {
                flush(&mut resident, &mut out)?;
            }
        } else {
            out.skipped += 1;
        }
    }
    flush(&mut resident, &mut out)?;
    Counters::add(&ctx.counters.hint_kept_pages, out.kept);
    Ok(out)
}
