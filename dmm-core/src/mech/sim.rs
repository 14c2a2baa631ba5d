// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! In-memory mechanism: a set of present pages instead of a memfd, faults
//! raised by the caller ([`crate::vm::Vm::sim_touch`]) instead of userfaultfd.
//! The same core logic runs on it without QEMU or Linux features.

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FaultSink, Mechanism};
use crate::{Error, Result};

/// The simulated backing of one VM.
#[derive(Debug)]
pub struct SimMech {
    page_size: u64,
    pages: u64,
    present: Mutex<BTreeSet<u64>>,
}

impl SimMech {
    /// A backing of `pages` pages of `page_size` bytes, none present.
    pub fn new(page_size: u64, pages: u64) -> Self {
        SimMech {
            page_size,
            pages,
            present: Mutex::new(BTreeSet::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        // Every operation leaves the set consistent; a poisoned lock is usable.
        self.present.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when `pfn` holds memory (a touch would not fault).
    pub fn is_present(&self, pfn: u64) -> bool {
        self.lock().contains(&pfn)
    }

    /// Populates `pfn` without a fault, as a device process writing through
    /// its own mapping of the memfd would.
    pub fn populate(&self, pfn: u64) {
        if pfn < self.pages {
            self.lock().insert(pfn);
        }
    }

    fn check(&self, first: u64, count: u64) -> Result<()> {
        match first.checked_add(count) {
            Some(end) if end <= self.pages => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "pages {first}+{count} outside the simulated RAM ({} pages)",
                self.pages
            ))),
        }
    }
}

impl Mechanism for SimMech {
    fn page_size(&self) -> u64 {
        self.page_size
    }

    fn pages(&self) -> u64 {
        self.pages
    }

    fn memfd(&self) -> Option<RawFd> {
        None
    }

    fn fill_zero(&self, first: u64, count: u64) -> Result<()> {
        self.check(first, count)?;
        self.lock().extend(first..first + count);
        Ok(())
    }

    fn wake(&self, first: u64, count: u64) -> Result<()> {
        self.check(first, count)
    }

    fn punch(&self, first: u64, count: u64) -> Result<()> {
        self.check(first, count)?;
        let mut set = self.lock();
        for pfn in first..first + count {
            set.remove(&pfn);
        }
        Ok(())
    }

    fn host_allocated_bytes(&self) -> u64 {
        self.lock().len() as u64 * self.page_size
    }

    unsafe fn attach(&self, _: *mut u8, _: u64, _: Arc<dyn FaultSink>) -> Result<()> {
        Err(Error::Unsupported(
            "attach: the simulation has no memfd to map".into(),
        ))
    }

    fn shutdown(&self) {}
}
