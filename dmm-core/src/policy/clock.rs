// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The CLOCK bit of swap's victim selection ([`super::swap`]), one per
//! page: armed (write-protected by the hand, no write seen since: cold on
//! the hand's next pass). A write through the protection, a swap-in, an
//! eviction or a release clears it (the page is referenced, or gone). The
//! bit is side data of the page: changed only by the page's owner, between
//! its take and its settle. It is a hint: a wrong bit picks a worse victim,
//! never loses a write (eviction write-protects again whatever it says).

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per page.
#[derive(Debug, Default)]
struct Bits(Vec<AtomicU64>);

impl Bits {
    fn new(pages: u64) -> Self {
        Bits((0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    fn slot(&self, pfn: u64) -> Option<(&AtomicU64, u64)> {
        let i = usize::try_from(pfn / 64).ok()?;
        self.0.get(i).map(|w| (w, 1u64 << (pfn % 64)))
    }

    fn set(&self, pfn: u64, on: bool) {
        if let Some((w, b)) = self.slot(pfn) {
            if on {
                w.fetch_or(b, Ordering::Relaxed);
            } else {
                w.fetch_and(!b, Ordering::Relaxed);
            }
        }
    }

    fn get(&self, pfn: u64) -> bool {
        self.slot(pfn)
            .is_some_and(|(w, b)| w.load(Ordering::Relaxed) & b != 0)
    }
}

/// The CLOCK bits of every page (none when swapping is off).
#[derive(Debug, Default)]
pub struct Clock {
    armed: Bits,
}

impl Clock {
    /// Bits for `pages` pages (0: no bits, every call is a no-op).
    pub fn new(pages: u64) -> Self {
        Clock {
            armed: Bits::new(pages),
        }
    }

    /// True when the hand armed `pfn` and no write was seen since: cold.
    pub fn is_armed(&self, pfn: u64) -> bool {
        self.armed.get(pfn)
    }

    /// The hand passed `pfn` and write-protected it.
    pub fn arm(&self, pfn: u64) {
        self.armed.set(pfn, true);
    }

    /// `pfn` is open again (written, swapped in) or gone (evicted,
    /// released): not armed.
    pub fn forget(&self, pfn: u64) {
        self.armed.set(pfn, false);
    }
}
