// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The memory pool: how many pages the VM may hold resident, and the per-state
//! page counts it is measured against.
//!
//! Pages in transition count against the pool ("committed" = resident +
//! in-flight), so fault-around never fills past the pool. The faulting page
//! itself is always filled: a guest is never blocked on its own memory; the
//! policy engine brings resident back under the pool afterwards.

use std::sync::atomic::AtomicU64;

use super::PageState;
use crate::sync::atomic::{AtomicU64 as CountCell, Ordering};
use crate::{Error, Result};

/// Per-state page counters, kept by [`super::P2m::take`] and `Owned::settle`
/// (exact once no change is under way; during one a page may count twice).
/// Loom's atomics under `--cfg loom` (`tests/loom_p2m.rs` checks that no
/// count goes below zero).
#[derive(Debug, Default)]
pub struct Counts([CountCell; PageState::ALL.len()]);

impl Counts {
    pub(crate) fn add(&self, s: PageState, n: u64) {
        self.0[s as usize].fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn sub(&self, s: PageState, n: u64) {
        self.0[s as usize].fetch_sub(n, Ordering::AcqRel);
    }

    /// Pages in state `s`.
    pub fn get(&self, s: PageState) -> u64 {
        self.0[s as usize].load(Ordering::Acquire)
    }

    /// Pages resident or becoming resident (what the pool is charged).
    pub fn committed(&self) -> u64 {
        self.get(PageState::Resident) + self.get(PageState::InFlight)
    }
}

/// The pool of one VM.
#[derive(Debug)]
pub struct Pool {
    total_pages: u64,
    page_size: u64,
    size_pages: AtomicU64,
}

impl Pool {
    /// A pool over `total_pages` pages of `page_size` bytes, of `bytes`
    /// (`None`: all of guest RAM).
    pub fn new(total_pages: u64, page_size: u64, bytes: Option<u64>) -> Result<Self> {
        let pool = Pool {
            total_pages,
            page_size,
            size_pages: AtomicU64::new(total_pages),
        };
        if let Some(b) = bytes {
            pool.set_size(b)?;
        }
        Ok(pool)
    }

    /// Checks a pool size in bytes; returns it in pages.
    pub fn validate(&self, bytes: u64) -> Result<u64> {
        let total = self.total_pages * self.page_size;
        if bytes % self.page_size != 0 {
            return Err(Error::InvalidArgument(format!(
                "pool size {bytes} is not a multiple of the page size {}",
                self.page_size
            )));
        }
        if bytes > total {
            return Err(Error::InvalidArgument(format!(
                "pool size {bytes} is larger than guest RAM ({total} bytes)"
            )));
        }
        Ok(bytes / self.page_size)
    }

    /// Sets the pool size in bytes.
    pub fn set_size(&self, bytes: u64) -> Result<()> {
        let pages = self.validate(bytes)?;
        self.size_pages.store(pages, Ordering::Release);
        Ok(())
    }

    /// Pool size in pages.
    pub fn size_pages(&self) -> u64 {
        self.size_pages.load(Ordering::Acquire)
    }

    /// Pool size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_pages() * self.page_size
    }

    /// Guest RAM in pages.
    pub fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// Pages that may still be filled before `counts` reaches the pool.
    pub fn headroom(&self, counts: &Counts) -> u64 {
        self.size_pages().saturating_sub(counts.committed())
    }

    /// Pages held beyond the pool.
    pub fn excess(&self, counts: &Counts) -> u64 {
        counts.committed().saturating_sub(self.size_pages())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_and_named() {
        let pool = Pool::new(16, 4096, None).unwrap();
        assert_eq!(pool.size_pages(), 16);
        let e = pool.set_size(4097).unwrap_err().to_string();
        assert!(e.contains("4097"), "{e}");
        let e = pool.set_size(17 * 4096).unwrap_err().to_string();
        assert!(e.contains(&(17 * 4096).to_string()), "{e}");
        assert_eq!(pool.size_pages(), 16);
        pool.set_size(8 * 4096).unwrap();
        let c = Counts::default();
        c.add(PageState::Resident, 10);
        assert_eq!(pool.headroom(&c), 0);
        assert_eq!(pool.excess(&c), 2);
    }
}
