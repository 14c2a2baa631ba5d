// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest RAM as one memfd: `MFD_CLOEXEC`, sealed against shrinking and
//! growing, 4 KiB shmem or 2 MiB hugetlb pages. Release is a hole punch.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::vm::PageSize;
use crate::{Error, Result};

const FREE_HUGEPAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// The guest-RAM file of one VM.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
    size: u64,
    page_size: u64,
}

fn read_count(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Fails with `Unsupported` naming the knob when `size` bytes of 2 MiB pages
/// are not free.
fn check_hugepages(size: u64) -> Result<()> {
    let needed = size / PageSize::Huge2M.bytes();
    let free = read_count(FREE_HUGEPAGES_2M);
    if free.is_some_and(|f| f >= needed) {
        return Ok(());
    }
    let nr = read_count(NR_HUGEPAGES).map_or_else(|| "unreadable".to_string(), |n| n.to_string());
    let free = free.map_or_else(|| "unreadable".to_string(), |n| n.to_string());
    Err(Error::Unsupported(format!(
        "2 MiB hugetlb guest RAM of {size} bytes needs {needed} free 2 MiB hugepages, \
         {FREE_HUGEPAGES_2M} is {free} ({NR_HUGEPAGES} is {nr})"
    )))
}

impl Memfd {
    /// Creates a sealed memfd of `size` bytes. `size` must be a non-zero
    /// multiple of the page size (checked by the caller).
    pub fn create(name: &str, size: u64, page_size: PageSize) -> Result<Self> {
        let cname = CString::new(format!("dmm:{name}"))
            .map_err(|_| Error::InvalidArgument(format!("VM name {name:?} contains a NUL byte")))?;
        let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        if page_size == PageSize::Huge2M {
            check_hugepages(size)?;
            flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
        }
        let len = libc::off_t::try_from(size)
            .map_err(|_| Error::InvalidArgument(format!("guest RAM size {size} too large")))?;
        // SAFETY: `cname` is a valid NUL-terminated string; flags are valid.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if raw < 0 {
            return Err(Error::last_os("memfd_create"));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } < 0 {
            return Err(Error::last_os("ftruncate(memfd)"));
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: plain fcntl on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(Error::last_os("fcntl(F_ADD_SEALS)"));
        }
        Ok(Memfd {
            fd,
            size,
            page_size: page_size.bytes(),
        })
    }

    /// The file descriptor (owned by this object).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Punches `first..first+count` pages out of the file.
    pub fn punch(&self, first: u64, count: u64) -> Result<()> {
        let (off, len) = (first * self.page_size, count * self.page_size);
        if off.checked_add(len).map_or(true, |end| end > self.size) {
            return Err(Error::InvalidArgument(format!(
                "punch of {len} bytes at {off} outside guest RAM ({} bytes)",
                self.size
            )));
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // Both fit in off_t: they are within the file size, which did.
        let (off, len) = (off as libc::off_t, len as libc::off_t);
        // SAFETY: plain syscall on an fd we own; the range is inside the file.
        if unsafe { libc::fallocate(self.fd.as_raw_fd(), mode, off, len) } < 0 {
            return Err(Error::last_os("fallocate(PUNCH_HOLE)"));
        }
        Ok(())
    }

    /// Punches `first..first+count` and fills `buf` (the pages' length) with
    /// their content at the punch: the pages are spliced into a pipe (shmem's
    /// splice takes a reference to each page, no copy), punched, then read
    /// from the pipe. A write through any mapping that lands before the punch
    /// is in the spliced page; one after it faults on a hole. Checked on
    /// kernel 6.18 (a write through a second mapping between splice and punch
    /// reads back from the pipe). Pages larger than a pipe holds (hugetlb)
    /// are read, then punched. Returns the pages punched and read and the
    /// error that stopped the rest (those are still in the file).
    pub fn punch_read(&self, first: u64, count: u64, buf: &mut [u8]) -> (u64, Option<Error>) {
        let ps = self.page_size as usize;
        let pipe = match Pipe::new(buf.len()) {
            Ok(p) => p,
            Err(e) => return (0, Some(e)),
        };
        let chunk = pipe.capacity / ps * ps;
        if chunk == 0 {
            let r = self
                .read_at(first * self.page_size, buf)
                .and_then(|()| self.punch(first, count));
            return match r {
                Ok(()) => (count, None),
                Err(e) => (0, Some(e)),
            };
        }
        let mut pfn = first;
        for part in buf.chunks_mut(chunk) {
            let pages = (part.len() / ps) as u64;
            let spliced = pipe.fill_from(self.raw(), pfn * self.page_size, part.len());
            if let Err(e) = spliced.and_then(|()| self.punch(pfn, pages)) {
                // Nothing of this part is lost: its pages are still in the file.
                return (pfn - first, Some(e));
            }
            if let Err(e) = pipe.read_into(part) {
                // Punched and unread: the only copy sits in a pipe we cannot read.
                crate::error::fail_stop(&format!(
                    "guest pages {pfn}+{pages} were punched and their spliced content                      cannot be read back: {e}"
                ));
            }
            pfn += pages;
        }
        (count, None)
    }

    /// Reads `buf.len()` bytes at `offset` (holes read zeros, nothing is allocated).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if offset
            .checked_add(buf.len() as u64)
            .map_or(true, |end| end > self.size)
        {
            return Err(Error::InvalidArgument(format!(
                "read of {} bytes at {offset} outside guest RAM ({} bytes)",
                buf.len(),
                self.size
            )));
        }
        // SAFETY: the fd is ours and stays open while `file` lives; ManuallyDrop
        // keeps the File from closing it.
        let file = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(self.raw()) });
        file.read_exact_at(buf, offset).map_err(|source| Error::Os {
            op: "pread(memfd)",
            source,
        })
    }

    /// True when the file holds memory at page `pfn` (`SEEK_DATA`).
    pub fn is_populated(&self, pfn: u64) -> bool {
        let off = pfn * self.page_size;
        let Ok(o) = libc::off_t::try_from(off) else {
            return false;
        };
        // SAFETY: plain lseek on an fd we own.
        let data = unsafe { libc::lseek(self.fd.as_raw_fd(), o, libc::SEEK_DATA) };
        data >= 0 && (data as u64) < off + self.page_size
    }

    /// Bytes the file really holds (`st_blocks * 512`).
    pub fn allocated_bytes(&self) -> Result<u64> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: `st` is a writable stat buffer; the fd is ours.
        if unsafe { libc::fstat(self.fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
            return Err(Error::last_os("fstat(memfd)"));
        }
        // SAFETY: fstat succeeded and filled the buffer.
        let st = unsafe { st.assume_init() };
        Ok(st.st_blocks as u64 * 512)
    }
}

/// A pipe that holds pages spliced out of the memfd.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it holds.
    capacity: usize,
}

/// Pipe size asked for at most (`/proc/sys/fs/pipe-max-size`'s default).
const PIPE_MAX: usize = 1 << 20;

impl Pipe {
    /// A pipe holding up to `want` bytes where the host allows it (the
    /// default 64 KiB where it does not).
    fn new(want: usize) -> Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the live array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(Error::last_os("pipe2"));
        }
        // SAFETY: both fds are fresh and owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let size = libc::c_int::try_from(want.clamp(4096, PIPE_MAX)).unwrap_or(4096);
        // SAFETY: plain fcntl on a pipe we own.
        let mut got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        if got < 0 {
            // Over the user's pipe budget: the size it has.
            // SAFETY: plain fcntl on a pipe we own.
            got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        }
        Ok(Pipe {
            read,
            write,
            capacity: usize::try_from(got).unwrap_or(0),
        })
    }

    /// Splices `len` bytes of `fd` at `offset` into the pipe.
    fn fill_from(&self, fd: RawFd, offset: u64, len: usize) -> Result<()> {
        let mut off = libc::loff_t::try_from(offset)
            .map_err(|_| Error::InvalidArgument(format!("splice offset {offset}")))?;
        let mut left = len;
        while left > 0 {
            // SAFETY: splice between an fd we were given and a pipe we own;
            // `off` is a live loff_t the kernel advances.
            let n = unsafe {
                libc::splice(
                    fd,
                    &mut off,
                    self.write.as_raw_fd(),
                    std::ptr::null_mut(),
                    left,
                    0,
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(Error::last_os("splice(memfd -> pipe)"));
            }
            if n == 0 {
                return Err(Error::State(format!(
                    "splice(memfd -> pipe) ended at offset {off}"
                )));
            }
            left -= n as usize;
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes out of the pipe.
    fn read_into(&self, buf: &mut [u8]) -> std::io::Result<()> {
        use std::io::Read;
        // SAFETY: the fd is ours and stays open while `file` lives; ManuallyDrop
        // keeps the File from closing it.
        let mut file =
            std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(self.read.as_raw_fd()) });
        file.read_exact(buf)
    }
}
