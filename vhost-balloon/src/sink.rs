// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Where released pages go: a hole punched in the guest-RAM file ourselves
//! ([`PunchHole`]), or a request to libdmm ([`crate::dmm::DmmSink`]).

use std::os::fd::AsRawFd;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::balloon::GuestRange;

/// Why pages are given back (the `reason` of the control protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Inflate queue.
    Balloon,
    /// Free page reporting queue.
    Report,
    /// Free page hint queue (DMM only: libdmm takes the zero pages of a
    /// hinted block, under write protection).
    Hint,
}

impl Reason {
    /// Name used on the control protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Balloon => "balloon",
            Reason::Report => "report",
            Reason::Hint => "hint",
        }
    }
}

/// Errors of a release sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A range is not backed by a file region of guest memory.
    #[error("range {gpa:#x}+{len:#x} is not backed by a file region of guest memory")]
    NotFileBacked {
        /// Start of the bad part.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// `fallocate(PUNCH_HOLE)` failed.
    #[error("fallocate(PUNCH_HOLE) at file offset {offset:#x} length {len:#x}: {source}")]
    Punch {
        /// File offset.
        offset: u64,
        /// Length.
        len: u64,
        /// OS error.
        source: std::io::Error,
    },
    /// libdmm refused or could not be reached.
    #[error("DMM: {0}")]
    Dmm(#[from] crate::dmm::DmmError),
}

/// Receives the validated, coalesced ranges of a queue.
pub trait ReleaseSink: Send + Sync {
    /// Gives `ranges` back to the host. Returns the pages released.
    fn release(
        &self,
        mem: &GuestMemoryMmap,
        reason: Reason,
        ranges: &[GuestRange],
    ) -> Result<u64, SinkError>;
    /// The guest takes `ranges` back (deflate). Returns the pages affected.
    fn reclaim_back(&self, mem: &GuestMemoryMmap, ranges: &[GuestRange]) -> Result<u64, SinkError>;
    /// Keeps `ranges` (4 KiB aligned) from being swapped out or zero-reclaimed
    /// behind the device. Nothing to do without libdmm. Returns the pages pinned.
    fn pin(&self, _ranges: &[GuestRange]) -> Result<u64, SinkError> {
        Ok(0)
    }
    /// Undoes [`ReleaseSink::pin`] over `ranges`. Returns the pages unpinned.
    fn unpin(&self, _ranges: &[GuestRange]) -> Result<u64, SinkError> {
        Ok(0)
    }
}

/// Releases pages by punching holes in the file behind each memory region
/// (the memfd QEMU shared with SET_MEM_TABLE). Deflate needs nothing: the
/// next guest touch faults in a zero page.
#[derive(Debug, Default, Clone, Copy)]
pub struct PunchHole;

impl PunchHole {
    /// Punches `[gpa, gpa+len)`, splitting it at region boundaries.
    pub fn punch(mem: &GuestMemoryMmap, range: GuestRange) -> Result<(), SinkError> {
        let mut gpa = range.gpa;
        let end = range.gpa.saturating_add(range.len);
        while gpa < end {
            let bad = SinkError::NotFileBacked {
                gpa,
                len: end - gpa,
            };
            let Some(region) = mem.find_region(GuestAddress(gpa)) else {
                return Err(bad);
            };
            let Some(fo) = region.file_offset() else {
                return Err(bad);
            };
            let in_region = gpa - region.start_addr().0;
            let len = (region.len() - in_region).min(end - gpa);
            let offset = fo.start().checked_add(in_region).ok_or(bad)?;
            punch_fd(fo.file().as_raw_fd(), offset, len)?;
            gpa += len;
        }
        Ok(())
    }
}

/// `fallocate(fd, PUNCH_HOLE | KEEP_SIZE, offset, len)`.
pub fn punch_fd(fd: i32, offset: u64, len: u64) -> Result<(), SinkError> {
    let err = |source| SinkError::Punch {
        offset,
        len,
        source,
    };
    let (Ok(o), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    };
    // SAFETY: fallocate only reads its integer arguments; a bad fd or range is an error return.
    let rc = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            o,
            l,
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl ReleaseSink for PunchHole {
    fn release(
        &self,
        mem: &GuestMemoryMmap,
        reason: Reason,
        ranges: &[GuestRange],
    ) -> Result<u64, SinkError> {
        // A hinted block may be in use again (the guest's shrinker): only
        // libdmm, which write-protects and checks it, may take it. Hinting
        // is never offered without DMM; this is the second lock.
        if reason == Reason::Hint {
            return Ok(0);
        }
        let mut pages = 0;
        for r in ranges {
            Self::punch(mem, *r)?;
            pages += r.pages();
        }
        Ok(pages)
    }

    fn reclaim_back(
        &self,
        _mem: &GuestMemoryMmap,
        ranges: &[GuestRange],
    ) -> Result<u64, SinkError> {
        Ok(ranges.iter().map(GuestRange::pages).sum())
    }
}
