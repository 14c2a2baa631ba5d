// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The platform mechanism: how page-state changes reach real memory.
//! [`linux`]: memfd + userfaultfd + hole punch. [`sim`]: in-memory, for tests.
//!
//! A mechanism moves memory, never P2M state: the core decides (through the
//! state machine), then asks the mechanism to fill or punch. Faults come back
//! the other way, from the mechanism's fault thread into a [`FaultSink`].

pub mod linux;
pub mod sim;

use std::cell::Cell;
use std::fmt;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use crate::Result;

/// Receives what the mechanism observes: faults and removals.
pub trait FaultSink: Send + Sync {
    /// A thread touched the missing page `pfn`. Must leave the page filled
    /// (and the faulting thread woken) or return an error.
    /// `Error::Os` with `EAGAIN` means: read pending events, then retry.
    fn on_fault(&self, pfn: u64, write: bool) -> Result<()>;
    /// A thread wrote the write-protected page `pfn`. Must leave the page
    /// writable or gone (and the writer woken) or return an error.
    fn on_wp_fault(&self, pfn: u64) -> Result<()>;
    /// Pages `first..first+count` were removed behind our back (`MADV_REMOVE`).
    fn on_remove(&self, first: u64, count: u64);
    /// A fault event that could not be used (outside guest RAM, unknown event).
    fn on_ignored(&self);
    /// A device process touched the missing page `pfn` through its own
    /// mapping ([`Mechanism::attach_device`]). Must leave the page filled or
    /// return an error; `Ok(false)`: the page's content is lost (poisoned),
    /// the device must get a memory error, never zeros. The mechanism wakes
    /// the device's thread.
    fn on_device_fault(&self, pfn: u64, write: bool) -> Result<bool>;
}

/// A range of guest RAM as a device process maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRegion {
    /// Where the range starts in the device process.
    pub client_addr: u64,
    /// Its byte offset in guest RAM (the memfd).
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Not this VM's guest RAM (other RAM the device maps): a fault there
    /// is filled with zeros, what the kernel does without a userfaultfd;
    /// `offset` is not used.
    pub other: bool,
}

/// What moves memory for one VM.
pub trait Mechanism: Send + Sync + fmt::Debug {
    /// Bytes per page.
    fn page_size(&self) -> u64;
    /// Guest RAM in pages.
    fn pages(&self) -> u64;
    /// The guest-RAM memfd, if there is one.
    fn memfd(&self) -> Option<RawFd>;
    /// Fills the missing pages of `first..first+count` with zeros, without
    /// waking the threads waiting on them (the core records the new state
    /// first, then calls [`Mechanism::wake`]). Pages already there (populated
    /// by someone else) are left as they are. All pages are present when it
    /// returns `Ok`.
    fn fill_zero(&self, first: u64, count: u64) -> Result<()>;
    /// Wakes the threads faulting in `first..first+count`.
    fn wake(&self, first: u64, count: u64) -> Result<()>;
    /// Gives the host memory of `first..first+count` back (hole punch). The
    /// pages read zero and fault again on next touch.
    fn punch(&self, first: u64, count: u64) -> Result<()>;
    /// Bytes of host memory the backing holds now.
    fn host_allocated_bytes(&self) -> u64;
    /// Copies pages `first..first+count` into `buf` (`count` pages long)
    /// without faulting and without allocating: holes read as zeros.
    fn read_pages(&self, first: u64, count: u64, buf: &mut [u8]) -> Result<()>;
    /// True when pages can be write-protected (uffd-wp registered).
    fn can_write_protect(&self) -> bool;
    /// Write-protects (`on`) or unprotects `first..first+count` through the
    /// attached mapping. Unprotecting wakes the writers that waited.
    fn write_protect(&self, first: u64, count: u64, on: bool) -> Result<()>;
    /// Installs `data` (one page) as the content of the missing page `pfn`,
    /// writable, without waking faulters. `Ok(false)`: the page was populated
    /// by someone else meanwhile (a device process) and is left as it is.
    fn install(&self, pfn: u64, data: &[u8]) -> Result<bool>;
    /// True when `pfn` holds memory in the backing file (whoever put it there).
    fn is_populated(&self, pfn: u64) -> bool;
    /// True when [`Mechanism::poison`] works here (Linux: `UFFDIO_POISON`).
    fn can_poison(&self) -> bool;
    /// Poisons the missing pages `first..first+count`, without waking the
    /// threads waiting on them: from now on every access to them through
    /// the attached mapping is a memory error (Linux: SIGBUS
    /// `BUS_MCEERR_AR`, which KVM turns into a machine check for the guest;
    /// sim: reads and writes fail). The pages hold no memory.
    fn poison(&self, first: u64, count: u64) -> Result<()>;
    /// Gives the memory of `first..first+count` back and removes any poison:
    /// the next touch faults like one on a page never touched.
    fn clear(&self, first: u64, count: u64) -> Result<()>;
    /// Takes pages `first..first+count` out like [`Mechanism::punch`] and
    /// copies into `buf` their content at the moment of the punch: a write
    /// through any mapping (a device process's too) that lands before the
    /// punch is in `buf`, one after it faults. Linux: the pages are spliced
    /// into a pipe (shmem splice takes a reference, no copy), punched, then
    /// the pipe is read. Returns how many pages (from `first`) were punched
    /// and read, and the error that stopped the rest (still in place).
    fn punch_read(&self, first: u64, count: u64, buf: &mut [u8]) -> (u64, Option<crate::Error>);
    /// Starts delivering the faults of a device process's mappings of guest
    /// RAM (`uffd`, its userfaultfd, registered MISSING on them) to the sink
    /// given to [`Mechanism::attach`]; each faulting device thread is woken
    /// once its page is filled. Returns an id for
    /// [`Mechanism::detach_device`]. Needs guest RAM attached.
    fn attach_device(&self, name: &str, uffd: OwnedFd, regions: &[DeviceRegion]) -> Result<u32>;
    /// Stops handling the faults of device `id`; its threads left waiting
    /// are woken.
    fn detach_device(&self, id: u32) -> Result<()>;
    /// Devices attached now.
    fn devices(&self) -> usize;
    /// Starts delivering faults of the caller's mapping to `sink`.
    ///
    /// # Safety
    /// `host_addr..host_addr+len` must be a live shared mapping of the memfd
    /// that stays mapped until [`Mechanism::shutdown`] returns.
    unsafe fn attach(&self, host_addr: *mut u8, len: u64, sink: Arc<dyn FaultSink>) -> Result<()>;
    /// Stops the fault thread and releases the fault source; idempotent.
    fn shutdown(&self);
}

thread_local! {
    /// The thread whose fault the calling (fault) thread is handling.
    static FAULTER: Cell<u32> = const { Cell::new(0) };
}

/// The id (Linux tid) of the thread whose fault the calling thread is
/// handling now; 0 when unknown (no `UFFD_FEATURE_THREAD_ID`, a simulated
/// fault, or not on a fault thread).
pub fn faulting_thread() -> u32 {
    FAULTER.with(Cell::get)
}

/// Runs `f` with [`faulting_thread`] answering `tid` (the fault thread,
/// around one call of its [`FaultSink`]).
pub(crate) fn with_faulter<R>(tid: u32, f: impl FnOnce() -> R) -> R {
    let before = FAULTER.with(|c| c.replace(tid));
    let r = f();
    FAULTER.with(|c| c.set(before));
    r
}

/// Splits sorted pfns into `(first, count)` runs of contiguous pages.
pub fn runs(pfns: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for pfn in pfns {
        match out.last_mut() {
            Some((first, count)) if *first + *count == pfn => *count += 1,
            _ => out.push((pfn, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn faulter_is_scoped() {
        assert_eq!(super::faulting_thread(), 0);
        let inner = super::with_faulter(42, super::faulting_thread);
        assert_eq!((inner, super::faulting_thread()), (42, 0));
    }

    #[test]
    fn runs_coalesce() {
        assert_eq!(
            super::runs([1, 2, 3, 5, 7, 8]),
            vec![(1, 3), (5, 1), (7, 2)]
        );
        assert!(super::runs([]).is_empty());
    }
}
