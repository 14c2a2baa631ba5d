// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Zero-page sharing: a scanner over resident pages. Pages that read all
//! zeros (a cheap unprotected look first) are reclaimed through
//! [`super::evict`] in zero-only mode: write-protect, check again, punch,
//! Zero, recorded in the reverse map under the shared zero page. A touch
//! refills them through demand paging (Zero is fillable).

use std::sync::atomic::{AtomicU64, Ordering};

use super::evict::{self, batch_pages, is_zero, Target};
use super::{Ctx, Policy};
use crate::model::PageState;
use crate::Result;

/// Bytes of guest RAM one reclaim run scans at most (the whole of a small VM).
pub const SCAN_BYTES_PER_RUN: u64 = 256 << 20;

/// The zero-page sharing policy.
#[derive(Debug, Default)]
pub struct ZeroShare {
    cursor: AtomicU64,
}

impl ZeroShare {
    /// Scans up to `max_pages` pages from the cursor; reclaims the zero pages
    /// found until `pages_wanted` are freed. Returns pages freed.
    pub fn scan(&self, ctx: &Ctx<'_>, pages_wanted: u64, max_pages: u64) -> Result<u64> {
        let pages = ctx.p2m.pages();
        let ps = ctx.mech.page_size() as usize;
        let batch = batch_pages(ps as u64);
        let mut buf = vec![0u8; batch * ps];
        let mut freed = 0;
        let mut scanned = 0;
        let mut pos = self.cursor.load(Ordering::Relaxed) % pages.max(1);
        while scanned < max_pages.min(pages) && freed < pages_wanted {
            let count = (batch as u64).min(pages - pos);
            let len = count as usize * ps;
            ctx.mech.read_pages(pos, count, &mut buf[..len])?;
            let found: Vec<u64> = (0..count)
                .filter(|&i| {
                    let i = i as usize;
                    matches!(ctx.p2m.get(pos + i as u64), Ok(PageState::Resident))
                        && is_zero(&buf[i * ps..(i + 1) * ps])
                })
                .map(|i| pos + i)
                .collect();
            if !found.is_empty() {
                freed += evict::evict(ctx, &found, Target::ZeroOnly)?.freed();
            }
            scanned += count;
            pos += count;
            if pos >= pages {
                pos = 0;
            }
        }
        self.cursor.store(pos, Ordering::Relaxed);
        Ok(freed)
    }
}

impl Policy for ZeroShare {
    fn name(&self) -> &'static str {
        "zero"
    }

    fn reclaim(&self, ctx: &Ctx<'_>, pages_wanted: u64) -> Result<u64> {
        // The policy thread runs every 50 ms while above the pool: each run
        // scans a slice, the cursor carries on from there.
        let ps = ctx.mech.page_size();
        let slice = (SCAN_BYTES_PER_RUN / ps).max(batch_pages(ps) as u64);
        self.scan(ctx, pages_wanted, slice)
    }
}
