// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! In-memory mechanism: a map of present pages (with their content) instead of
//! a memfd, faults raised by the caller ([`crate::vm::Vm::sim_touch`],
//! [`crate::vm::Vm::sim_write`]) instead of userfaultfd. Write protection is
//! a set of pages: a write to one of them faults like uffd-wp; a poisoned
//! page fails every access (like `UFFDIO_POISON`'s SIGBUS). The same core
//! logic runs on it without QEMU or Linux features.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{DeviceRegion, FaultSink, Mechanism};
use crate::{Error, Result};

/// What a simulated access found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Done.
    Done,
    /// The page holds no memory: a MISSING fault.
    Missing,
    /// The page is write-protected: a WP fault.
    Protected,
}

#[derive(Debug, Default)]
struct State {
    /// Present pages; `None` content reads as zeros.
    present: BTreeMap<u64, Option<Box<[u8]>>>,
    protected: BTreeSet<u64>,
    poisoned: BTreeSet<u64>,
}

/// The simulated backing of one VM.
#[derive(Debug)]
pub struct SimMech {
    page_size: u64,
    pages: u64,
    state: Mutex<State>,
}

impl SimMech {
    /// A backing of `pages` pages of `page_size` bytes, none present.
    pub fn new(page_size: u64, pages: u64) -> Self {
        SimMech {
            page_size,
            pages,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the state consistent; a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when `pfn` holds memory (a touch would not fault).
    pub fn is_present(&self, pfn: u64) -> bool {
        self.lock().present.contains_key(&pfn)
    }

    /// True when `pfn` is poisoned (every access is a memory error).
    pub fn is_poisoned(&self, pfn: u64) -> bool {
        self.lock().poisoned.contains(&pfn)
    }

    /// Populates `pfn` without a fault, as a device process writing through
    /// its own mapping of the memfd would.
    pub fn populate(&self, pfn: u64) {
        if pfn < self.pages {
            self.lock().present.entry(pfn).or_insert(None);
        }
    }

    /// Writes `data` at byte `offset` of `pfn` if the page is present and
    /// writable, atomically with respect to protect/read/punch.
    pub fn try_write(&self, pfn: u64, offset: usize, data: &[u8]) -> Access {
        let ps = self.page_size as usize;
        let mut st = self.lock();
        if st.protected.contains(&pfn) {
            return Access::Protected;
        }
        let Some(content) = st.present.get_mut(&pfn) else {
            return Access::Missing;
        };
        let page = content.get_or_insert_with(|| vec![0u8; ps].into_boxed_slice());
        let end = (offset + data.len()).min(ps);
        if offset < end {
            page[offset..end].copy_from_slice(&data[..end - offset]);
        }
        Access::Done
    }

    /// Reads `pfn` if present.
    pub fn try_read(&self, pfn: u64) -> Option<Vec<u8>> {
        let ps = self.page_size as usize;
        self.lock()
            .present
            .get(&pfn)
            .map(|c| c.as_deref().map_or_else(|| vec![0u8; ps], <[u8]>::to_vec))
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
        let mut st = self.lock();
        for pfn in first..first + count {
            st.present.entry(pfn).or_insert(None);
        }
        Ok(())
    }

    fn wake(&self, first: u64, count: u64) -> Result<()> {
        self.check(first, count)
    }

    fn punch(&self, first: u64, count: u64) -> Result<()> {
        self.check(first, count)?;
        let mut st = self.lock();
        for pfn in first..first + count {
            st.present.remove(&pfn);
            // Like a pte marker, protection of a punched page is moot: the
            // next touch is a missing fault.
            st.protected.remove(&pfn);
        }
        Ok(())
    }

    fn host_allocated_bytes(&self) -> u64 {
        self.lock().present.len() as u64 * self.page_size
    }

    fn read_pages(&self, first: u64, count: u64, buf: &mut [u8]) -> Result<()> {
        self.check(first, count)?;
        let ps = self.page_size as usize;
        if buf.len() != count as usize * ps {
            return Err(Error::InvalidArgument(format!(
                "read of {count} pages into {} bytes",
                buf.len()
            )));
        }
        let st = self.lock();
        for (i, out) in buf.chunks_exact_mut(ps).enumerate() {
            match st.present.get(&(first + i as u64)) {
                Some(Some(c)) => out.copy_from_slice(c),
                _ => out.fill(0),
            }
        }
        Ok(())
    }

    fn can_write_protect(&self) -> bool {
        true
    }

    fn write_protect(&self, first: u64, count: u64, on: bool) -> Result<()> {
        self.check(first, count)?;
        let mut st = self.lock();
        for pfn in first..first + count {
            if on {
                st.protected.insert(pfn);
            } else {
                st.protected.remove(&pfn);
            }
        }
        Ok(())
    }

    fn install(&self, pfn: u64, data: &[u8]) -> Result<bool> {
        self.check(pfn, 1)?;
        let mut st = self.lock();
        if st.present.contains_key(&pfn) {
            return Ok(false);
        }
        st.present
            .insert(pfn, Some(data.to_vec().into_boxed_slice()));
        Ok(true)
    }

    fn is_populated(&self, pfn: u64) -> bool {
        self.is_present(pfn)
    }

    fn can_poison(&self) -> bool {
        true
    }

    fn poison(&self, first: u64, count: u64) -> Result<()> {
        self.check(first, count)?;
        let mut st = self.lock();
        for pfn in first..first + count {
            if !st.present.contains_key(&pfn) {
                st.poisoned.insert(pfn);
            }
        }
        Ok(())
    }

    fn clear(&self, first: u64, count: u64) -> Result<()> {
        self.check(first, count)?;
        let mut st = self.lock();
        for pfn in first..first + count {
            st.present.remove(&pfn);
            st.protected.remove(&pfn);
            st.poisoned.remove(&pfn);
        }
        Ok(())
    }

    unsafe fn attach(&self, _: *mut u8, _: u64, _: Arc<dyn FaultSink>) -> Result<()> {
        Err(Error::Unsupported(
            "attach: the simulation has no memfd to map".into(),
        ))
    }

    fn punch_read(&self, first: u64, count: u64, buf: &mut [u8]) -> (u64, Option<Error>) {
        // Simulated writes fault on the owned pages: none lands in between.
        match self
            .read_pages(first, count, buf)
            .and_then(|()| self.punch(first, count))
        {
            Ok(()) => (count, None),
            Err(e) => (0, Some(e)),
        }
    }

    fn attach_device(&self, _: &str, _: OwnedFd, _: &[DeviceRegion]) -> Result<u32> {
        Err(Error::Unsupported(
            "attach_device: the simulation has no device processes".into(),
        ))
    }

    fn detach_device(&self, id: u32) -> Result<()> {
        Err(Error::InvalidArgument(format!("no device {id}")))
    }

    fn devices(&self) -> usize {
        0
    }

    fn shutdown(&self) {}
}
