// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! userfaultfd, with raw ioctls on `#[repr(C)]` copies of the structs of
//! `linux/userfaultfd.h`.
//!
//! Opening needs a uffd that also sees kernel-originated faults (KVM's
//! `get_user_pages`, vhost-kernel, a `read()` into guest RAM):
//! `/dev/userfaultfd`, then the syscall. Where neither is allowed (EPERM) it
//! is an error naming the fix, unless the caller asked for
//! `UFFD_USER_MODE_ONLY` explicitly (then every fault raised in kernel mode
//! fails with EFAULT).
//!
//! errno meanings (as in crosvm's swap crate): `EEXIST` someone else already
//! populated the page, fine; `EAGAIN` the mappings are changing, read pending
//! events (REMOVE) and retry; `ENOENT`/`ESRCH` the mapping or process is gone.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Errors of userfaultfd operations.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// Some page of the range was already populated; `done` bytes were filled before it.
    #[error("page already populated after {done} bytes")]
    Exists {
        /// Bytes filled before the populated page.
        done: u64,
    },
    /// The mappings are changing: read pending events and retry.
    #[error("mappings changing (EAGAIN) after {done} bytes")]
    Again {
        /// Bytes filled before the kernel gave up.
        done: u64,
    },
    /// The registered mapping or its process is gone.
    #[error("userfaultfd mapping gone")]
    Gone,
    /// Another errno.
    #[error("{op}: {source}")]
    Os {
        /// The operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

impl From<UffdError> for crate::Error {
    fn from(e: UffdError) -> Self {
        match e {
            UffdError::Gone => crate::Error::State("userfaultfd mapping gone".into()),
            UffdError::Again { .. } => crate::Error::Os {
                op: "userfaultfd fill",
                source: io::Error::from_raw_os_error(libc::EAGAIN),
            },
            UffdError::Exists { .. } => crate::Error::Os {
                op: "userfaultfd fill",
                source: io::Error::from_raw_os_error(libc::EEXIST),
            },
            UffdError::Os { op, source } => crate::Error::Os { op, source },
        }
    }
}

type UResult<T> = std::result::Result<T, UffdError>;

const UFFD_API: u64 = 0xAA;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}

const USERFAULTFD_IOC_NEW: u64 = 0xAA00;
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x00,
    std::mem::size_of::<UffdioRegister>(),
);
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x03,
    std::mem::size_of::<UffdioCopy>(),
);
const UFFDIO_ZEROPAGE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x04,
    std::mem::size_of::<UffdioZeropage>(),
);

const UFFDIO_WRITEPROTECT: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x06,
    std::mem::size_of::<UffdioWriteprotect>(),
);
const UFFDIO_POISON: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x08,
    std::mem::size_of::<UffdioPoison>(),
);

const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// `UFFD_EVENT_PAGEFAULT`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_REMOVE`.
pub const EVENT_REMOVE: u8 = 0x15;
/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
/// `UFFD_PAGEFAULT_FLAG_WP`.
pub const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// `UFFD_FEATURE_*` bits this crate asks for when offered.
pub mod feature {
    /// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`.
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    /// `UFFD_FEATURE_EVENT_REMOVE`.
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// `UFFD_FEATURE_MISSING_HUGETLBFS`.
    pub const MISSING_HUGETLBFS: u64 = 1 << 4;
    /// `UFFD_FEATURE_MISSING_SHMEM`.
    pub const MISSING_SHMEM: u64 = 1 << 5;
    /// `UFFD_FEATURE_THREAD_ID`: fault messages carry the faulting thread's id.
    pub const THREAD_ID: u64 = 1 << 8;
    /// `UFFD_FEATURE_MINOR_SHMEM`.
    pub const MINOR_SHMEM: u64 = 1 << 10;
    /// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`.
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    /// `UFFD_FEATURE_WP_UNPOPULATED`.
    pub const WP_UNPOPULATED: u64 = 1 << 13;
    /// `UFFD_FEATURE_POISON` (Linux 6.6): `UFFDIO_POISON`.
    pub const POISON: u64 = 1 << 14;
    /// `UFFD_FEATURE_WP_ASYNC`.
    pub const WP_ASYNC: u64 = 1 << 15;
}

/// `UFFDIO_ZEROPAGE_MODE_DONTWAKE`, `UFFDIO_COPY_MODE_DONTWAKE` and
/// `UFFDIO_POISON_MODE_DONTWAKE`.
const MODE_DONTWAKE: u64 = 1 << 0;
/// `UFFDIO_WRITEPROTECT_MODE_WP`.
const WP_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`.
const WP_MODE_DONTWAKE: u64 = 1 << 1;
const REGISTER_MODE_MISSING: u64 = 1 << 0;
const REGISTER_MODE_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioPoison {
    range: UffdioRange,
    mode: u64,
    updated: i64,
}

/// `struct uffd_msg` (32 bytes): the event byte, padding, then the union,
/// read here as three u64 (pagefault: flags, address, thread id in the low
/// 32 bits; remove: start, end).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    /// First union word (pagefault flags; remove start).
    pub arg0: u64,
    /// Second union word (pagefault address; remove end).
    pub arg1: u64,
    arg2: u64,
}

impl UffdMsg {
    /// The faulting thread's id (`feat.ptid`) of a pagefault message; 0
    /// without `UFFD_FEATURE_THREAD_ID`.
    pub fn thread_id(&self) -> u32 {
        // The low half of the third word: `__u32 ptid` of the union.
        (self.arg2 & 0xffff_ffff) as u32
    }
}

/// An open, API-handshaken userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    offered: u64,
    features: u64,
    user_mode_only: bool,
}

fn open_raw(user_mode_only: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if user_mode_only {
        flags |= UFFD_USER_MODE_ONLY;
    } else if let Ok(dev) = std::fs::File::open("/dev/userfaultfd") {
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value and returns a new fd.
        let raw = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
        if raw >= 0 {
            // SAFETY: `raw` is a fresh fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(raw) });
        }
    }
    // SAFETY: the userfaultfd syscall takes one int of flags and returns a new fd.
    let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns; fds fit in c_int.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

fn api(fd: &OwnedFd, features: u64) -> io::Result<UffdioApi> {
    let mut arg = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `arg` is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(arg)
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Uffd {
    /// Opens a userfaultfd and enables `EVENT_REMOVE`, `MISSING_SHMEM`,
    /// `MISSING_HUGETLBFS` and (when offered) the write-protect, `POISON` and
    /// `THREAD_ID` features. A uffd that cannot take kernel-mode faults
    /// (EPERM) is an error naming the fix, unless `user_mode_only` accepts it.
    pub fn open(user_mode_only: bool) -> crate::Result<Self> {
        let (probe, user_mode_only) = match open_raw(false) {
            Ok(fd) => (fd, false),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && user_mode_only => {
                log::warn!(
                    "userfaultfd: kernel-mode faults not allowed ({e}); user-mode-only as \
                     configured: faults raised by the kernel (KVM, vhost, a read() into \
                     guest RAM) fail with EFAULT"
                );
                let fd = open_raw(true).map_err(|source| crate::Error::Os {
                    op: "userfaultfd(UFFD_USER_MODE_ONLY)",
                    source,
                })?;
                (fd, true)
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return Err(crate::Error::Unsupported(format!(
                    "userfaultfd cannot take kernel-mode faults ({e}): give this process \
                     read-write access to /dev/userfaultfd (or CAP_SYS_PTRACE), or set \
                     sysctl vm.unprivileged_userfaultfd=1; to run with user-mode faults \
                     only (KVM, vhost and read() into guest RAM then fail with EFAULT) \
                     set uffd-user-mode-only=on (dmm_config.uffd_user_mode_only)"
                )))
            }
            Err(source) => {
                return Err(crate::Error::Os {
                    op: "userfaultfd",
                    source,
                })
            }
        };
        // The handshake can be done once per fd: probe on one fd, use another.
        let offered = api(&probe, 0)
            .map_err(|source| crate::Error::Os {
                op: "UFFDIO_API (probe)",
                source,
            })?
            .features;
        drop(probe);
        let needed = feature::EVENT_REMOVE | feature::MISSING_SHMEM;
        if offered & needed != needed {
            return Err(crate::Error::Unsupported(format!(
                "userfaultfd features 0x{offered:x} lack EVENT_REMOVE|MISSING_SHMEM (0x{needed:x})"
            )));
        }
        let wanted = needed
            | (offered
                & (feature::MISSING_HUGETLBFS
                    | feature::PAGEFAULT_FLAG_WP
                    | feature::WP_HUGETLBFS_SHMEM
                    | feature::POISON
                    | feature::THREAD_ID));
        let fd = open_raw(user_mode_only).map_err(|source| crate::Error::Os {
            op: "userfaultfd",
            source,
        })?;
        api(&fd, wanted).map_err(|source| crate::Error::Os {
            op: "UFFDIO_API",
            source,
        })?;
        log::info!(
            "userfaultfd: offered features 0x{offered:x}, enabled 0x{wanted:x}{}",
            if user_mode_only {
                ", user mode only"
            } else {
                ""
            }
        );
        if wanted & feature::POISON == 0 {
            log::warn!(
                "userfaultfd: no UFFDIO_POISON (Linux 6.6+): a guest page whose content \
                 is lost stops the VM unless the embedder delivers the error itself"
            );
        }
        Ok(Uffd {
            fd,
            offered,
            features: wanted,
            user_mode_only,
        })
    }

    /// The fd (for poll).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Features the kernel offered.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Features enabled on this fd.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// True when only user-mode faults are delivered.
    pub fn user_mode_only(&self) -> bool {
        self.user_mode_only
    }

    /// True when write-protect can be registered on shmem/hugetlb.
    pub fn has_wp(&self) -> bool {
        let wp = feature::PAGEFAULT_FLAG_WP | feature::WP_HUGETLBFS_SHMEM;
        self.features & wp == wp
    }

    /// True when `UFFDIO_POISON` is enabled.
    pub fn has_poison(&self) -> bool {
        self.features & feature::POISON != 0
    }

    /// Registers `start..start+len` for MISSING faults (and WP when `wp`).
    pub fn register(&self, start: u64, len: u64, wp: bool) -> crate::Result<()> {
        let mode = REGISTER_MODE_MISSING | if wp { REGISTER_MODE_WP } else { 0 };
        let mut arg = UffdioRegister {
            range: UffdioRange { start, len },
            mode,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_REGISTER as _, &mut arg) } < 0 {
            return Err(crate::Error::last_os("UFFDIO_REGISTER"));
        }
        Ok(())
    }

    /// Unregisters `start..start+len`.
    pub fn unregister(&self, start: u64, len: u64) -> crate::Result<()> {
        let mut arg = UffdioRange { start, len };
        // SAFETY: UFFDIO_UNREGISTER reads a `struct uffdio_range`.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_UNREGISTER as _, &mut arg) } < 0 {
            return Err(crate::Error::last_os("UFFDIO_UNREGISTER"));
        }
        Ok(())
    }

    /// Takes a userfaultfd another process opened and registered (a device
    /// process's, handed over by vhost-user's `POSTCOPY_ADVISE`): its API
    /// handshake is done and its features are not known here (none are
    /// needed to resolve MISSING faults and wake).
    pub fn adopt(fd: OwnedFd) -> Self {
        Uffd {
            fd,
            offered: 0,
            features: 0,
            user_mode_only: false,
        }
    }

    /// Wakes threads faulting in `start..start+len`.
    pub fn wake(&self, start: u64, len: u64) -> UResult<()> {
        let mut arg = UffdioRange { start, len };
        // SAFETY: UFFDIO_WAKE reads a `struct uffdio_range`.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_WAKE as _, &mut arg) } < 0 {
            return Err(classify("UFFDIO_WAKE", errno(), 0));
        }
        Ok(())
    }

    /// Maps zero pages over `start..start+len` (shmem); wakes the faulters
    /// unless `dontwake`.
    pub fn zeropage(&self, start: u64, len: u64, dontwake: bool) -> UResult<()> {
        let mode = u64::from(dontwake) * MODE_DONTWAKE;
        let mut arg = UffdioZeropage {
            range: UffdioRange { start, len },
            mode,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes a `struct uffdio_zeropage`.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_ZEROPAGE as _, &mut arg) } < 0 {
            return Err(classify("UFFDIO_ZEROPAGE", errno(), arg.zeropage));
        }
        Ok(())
    }

    /// Copies `len` bytes from `src` over `dst..dst+len`; wakes the faulters
    /// unless `dontwake`.
    ///
    /// # Safety
    /// `src..src+len` must be readable memory of this process.
    pub unsafe fn copy(&self, dst: u64, src: *const u8, len: u64, dontwake: bool) -> UResult<()> {
        let mode = u64::from(dontwake) * MODE_DONTWAKE;
        let mut arg = UffdioCopy {
            dst,
            src: src as u64,
            len,
            mode,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes a `struct uffdio_copy`; the
        // caller guarantees the source is readable.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_COPY as _, &mut arg) } < 0 {
            return Err(classify("UFFDIO_COPY", errno(), arg.copy));
        }
        Ok(())
    }

    /// Poisons `start..start+len` (`UFFDIO_POISON`): every access through
    /// this mapping gets SIGBUS (`BUS_MCEERR_AR`; KVM turns it into a
    /// machine check for the guest) until the range is zapped
    /// (`MADV_DONTNEED`; a hole punch keeps the marker). Wakes the faulters
    /// unless `dontwake`.
    pub fn poison(&self, start: u64, len: u64, dontwake: bool) -> UResult<()> {
        let mode = u64::from(dontwake) * MODE_DONTWAKE;
        let mut arg = UffdioPoison {
            range: UffdioRange { start, len },
            mode,
            updated: 0,
        };
        // SAFETY: UFFDIO_POISON reads and writes a `struct uffdio_poison`.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_POISON as _, &mut arg) } < 0 {
            return Err(classify("UFFDIO_POISON", errno(), arg.updated));
        }
        Ok(())
    }

    /// Write-protects (`on`) or unprotects `start..start+len`; unprotecting
    /// wakes the writers waiting on the range.
    pub fn writeprotect(&self, start: u64, len: u64, on: bool) -> UResult<()> {
        // The kernel refuses WP together with DONTWAKE (EINVAL).
        let mode = if on { WP_MODE_WP } else { 0 };
        let mut arg = UffdioWriteprotect {
            range: UffdioRange { start, len },
            mode,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads a `struct uffdio_writeprotect`.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_WRITEPROTECT as _, &mut arg) } < 0 {
            return Err(classify("UFFDIO_WRITEPROTECT", errno(), 0));
        }
        Ok(())
    }

    /// Unprotects `start..start+len` without waking anyone: drops the
    /// uffd-wp pte markers a swapped-out page keeps (`UFFDIO_POISON`
    /// refuses to overwrite them).
    pub fn unprotect_dontwake(&self, start: u64, len: u64) -> UResult<()> {
        let mut arg = UffdioWriteprotect {
            range: UffdioRange { start, len },
            mode: WP_MODE_DONTWAKE,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads a `struct uffdio_writeprotect`.
        if unsafe { libc::ioctl(self.raw(), UFFDIO_WRITEPROTECT as _, &mut arg) } < 0 {
            return Err(classify("UFFDIO_WRITEPROTECT", errno(), 0));
        }
        Ok(())
    }

    /// Reads pending messages without blocking; returns how many were read.
    pub fn read(&self, buf: &mut [UffdMsg]) -> crate::Result<usize> {
        let bytes = std::mem::size_of_val(buf);
        // SAFETY: `buf` is writable for `bytes` bytes and UffdMsg is plain data.
        let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), bytes) };
        if n < 0 {
            return match errno() {
                libc::EAGAIN | libc::EINTR => Ok(0),
                _ => Err(crate::Error::last_os("read(userfaultfd)")),
            };
        }
        Ok(n as usize / std::mem::size_of::<UffdMsg>())
    }
}

/// Turns an errno (and the partial progress the kernel wrote back) into meaning.
fn classify(op: &'static str, err: i32, progress: i64) -> UffdError {
    let done = u64::try_from(progress).unwrap_or(0);
    match err {
        libc::EEXIST => UffdError::Exists { done },
        libc::EAGAIN => UffdError::Again { done },
        libc::ENOENT | libc::ESRCH => UffdError::Gone,
        _ => UffdError::Os {
            op,
            source: io::Error::from_raw_os_error(err),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes_match_the_header() {
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
        assert_eq!(std::mem::size_of::<UffdioCopy>(), 40);
        assert_eq!(std::mem::size_of::<UffdioZeropage>(), 32);
        assert_eq!(std::mem::size_of::<UffdioPoison>(), 32);
        // _IOWR(0xAA, 0x08, struct uffdio_poison).
        assert_eq!(UFFDIO_POISON, 0xC020_AA08);
        // _IOWR(0xAA, 0x3F, struct uffdio_api), as in <linux/userfaultfd.h>.
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_ZEROPAGE, 0xC020_AA04);
        assert_eq!(UFFDIO_WAKE, 0x8010_AA02);
        // _IOWR(0xAA, 0x06, struct uffdio_writeprotect).
        assert_eq!(UFFDIO_WRITEPROTECT, 0xC018_AA06);
    }
}
