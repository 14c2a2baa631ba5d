// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A stand-in for a vhost-user device process (tests and benches, through
//! `#[path]`): a second `MAP_SHARED` mapping of the VM's memfd, registered
//! in MISSING mode with a userfaultfd of its own, opened as libvhost-user
//! opens it for `POSTCOPY_ADVISE` (no features asked), and attached with
//! `Vm::attach_device`.

#![allow(dead_code)] // each user takes what it needs

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use dmm::mech::DeviceRegion;
use dmm::vm::Vm;

const UFFD_API: u64 = 0xAA;
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xAA << 8) | nr
}
const UFFDIO_API: u64 = iowr(0x3F, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);
const MODE_MISSING: u64 = 1;

/// The device's mapping of guest RAM, attached to its VM.
pub struct Device {
    vm: Arc<Vm>,
    pub id: u32,
    addr: usize,
    len: usize,
    _uffd: OwnedFd,
}

impl Device {
    /// Maps `vm`'s whole memfd again, registers it and attaches it as
    /// device `name`. Panics on failure (tests only).
    pub fn attach(vm: Arc<Vm>, name: &str) -> Device {
        let (p, len) = super::common::map_memfd(&vm);
        // SAFETY: the userfaultfd syscall takes flags and returns a new fd.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert!(raw >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nothing else owns.
        let uffd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let mut api = [UFFD_API, 0, 0];
        // SAFETY: UFFDIO_API reads and writes a struct of three u64.
        let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API as _, api.as_mut_ptr()) };
        assert_eq!(rc, 0, "UFFDIO_API: {}", std::io::Error::last_os_error());
        let mut reg = [p as u64, len as u64, MODE_MISSING, 0];
        // SAFETY: UFFDIO_REGISTER reads and writes a struct of four u64.
        let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER as _, reg.as_mut_ptr()) };
        assert_eq!(
            rc,
            0,
            "UFFDIO_REGISTER: {}",
            std::io::Error::last_os_error()
        );
        let regions = [DeviceRegion {
            client_addr: p as u64,
            offset: 0,
            len: len as u64,
            other: false,
        }];
        let dup = uffd.try_clone().expect("dup of the device uffd");
        let id = vm
            .attach_device(name, dup, &regions)
            .unwrap_or_else(|e| panic!("attach_device: {e}"));
        Device {
            vm,
            id,
            addr: p as usize,
            len,
            _uffd: uffd,
        }
    }

    /// First word of page `pfn` (4 KiB pages) in the device's mapping.
    pub fn page_ptr(&self, pfn: u64) -> *mut u64 {
        let off = pfn * 4096;
        assert!(off < self.len as u64, "pfn {pfn} outside the mapping");
        (self.addr + off as usize) as *mut u64
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.vm.detach_device(self.id);
        // SAFETY: our own mapping; nothing uses it after the detach.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}
