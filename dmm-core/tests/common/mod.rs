// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared by the Linux tests, the benches and the examples (`#[path]`): a
//! VM's memfd mapped `MAP_SHARED` and attached, as QEMU does, and the
//! memfd's real allocation.

#![allow(dead_code)] // each user takes what it needs

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use dmm::vm::{PolicySet, Vm, VmConfig};

/// A Linux VM of `size` bytes (4 KiB pages) swapping to `dir/swap`, mapped.
pub fn swap_guest(
    dir: &Path,
    size: u64,
    policies: &str,
    swap_compress: bool,
    name: &str,
) -> Mapped {
    let vm = Vm::new_linux(VmConfig {
        swap_path: Some(dir.join("swap")),
        swap_compress,
        policies: PolicySet::parse(policies).expect("a valid policy list"),
        ..VmConfig::new(name, size)
    })
    .expect("a Linux VM");
    Mapped::new(vm)
}

/// Bytes the file `fd` really holds (`fstat` `st_blocks * 512`).
pub fn st_blocks_bytes(fd: RawFd) -> u64 {
    // SAFETY: `st` is a plain struct that fstat fills; `fd` is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    assert_eq!(rc, 0, "fstat: {}", std::io::Error::last_os_error());
    st.st_blocks as u64 * 512
}

/// A new `MAP_SHARED` mapping of `vm`'s whole memfd: (start, length).
/// Panics on failure (tests only).
pub fn map_memfd(vm: &Vm) -> (*mut libc::c_void, usize) {
    let fd = vm.memfd().expect("a Linux VM has a memfd");
    let len = vm.stats().size as usize;
    (map_shared(fd, len), len)
}

/// A new `MAP_SHARED` read-write mapping of `len` bytes of `fd`. Panics on
/// failure (tests only).
pub fn map_shared(fd: RawFd, len: usize) -> *mut libc::c_void {
    // SAFETY: a fresh shared mapping of an fd of at least `len` bytes.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p
}

/// The whole memfd of a VM mapped `MAP_SHARED` and attached; on drop the VM
/// shuts down first, then the mapping goes.
pub struct Mapped {
    pub vm: Arc<Vm>,
    addr: usize,
    len: usize,
}

impl Mapped {
    /// Maps and attaches `vm`'s memfd. Panics on failure (tests only).
    pub fn new(vm: Arc<Vm>) -> Mapped {
        let (p, len) = map_memfd(&vm);
        // SAFETY: the mapping lives until `drop`, which shuts the VM down first.
        if let Err(e) = unsafe { vm.attach(p.cast(), len as u64) } {
            panic!("attach: {e}");
        }
        Mapped {
            vm,
            addr: p as usize,
            len,
        }
    }

    /// Start of the mapping.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length of the mapping (the guest RAM size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// First word of page `pfn` of `page_size` bytes.
    pub fn page_ptr(&self, pfn: u64, page_size: u64) -> *mut u64 {
        let off = pfn * page_size;
        assert!(off < self.len as u64, "pfn {pfn} outside the mapping");
        (self.addr + off as usize) as *mut u64
    }

    /// The memfd's real allocation.
    pub fn held(&self) -> u64 {
        st_blocks_bytes(self.vm.memfd().expect("a Linux VM has a memfd"))
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        self.vm.shutdown();
        // SAFETY: our own mapping, no longer registered with userfaultfd.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Bytes of the 4 KiB pages the kernel-mode helpers copy.
const PAGE: u64 = 4096;

/// Writes `v` into every word of `page` from `file` (`pread`: the kernel's
/// copy into the page), after putting the words into the file.
pub fn kernel_write(file: &std::fs::File, page: &mut [u64], v: u64) {
    use std::os::unix::fs::FileExt;
    let words = [v; 512];
    // SAFETY: a plain array of u64 viewed as its bytes.
    let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), PAGE as usize) };
    file.write_all_at(bytes, 0)
        .expect("a write to the scratch file");
    // SAFETY: the page is PS bytes of the live mapping.
    let n = unsafe { libc::pread(file.as_raw_fd(), page.as_mut_ptr().cast(), PAGE as usize, 0) };
    assert_eq!(n, PAGE as isize, "pread into the page");
}

/// The page's words as the kernel reads them (`pwrite` from the page).
pub fn kernel_read(file: &std::fs::File, page: &[u64]) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    // SAFETY: the page is PS bytes of the live mapping.
    let n = unsafe {
        libc::pwrite(
            file.as_raw_fd(),
            page.as_ptr().cast(),
            PAGE as usize,
            PAGE as i64,
        )
    };
    assert_eq!(n, PAGE as isize, "pwrite from the page");
    let mut bytes = vec![0u8; PAGE as usize];
    file.read_exact_at(&mut bytes, PAGE)
        .expect("a read of the scratch file");
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunks")))
        .collect()
}

/// Writes `v` into every word of `page`: by the kernel (`kernel_write`) or
/// by this thread, a word at a time (so a torn page shows).
pub fn write_words(file: &std::fs::File, page: &mut [u64], v: u64, kernel_mode: bool) {
    if kernel_mode {
        kernel_write(file, page, v);
    } else {
        for w in page.iter_mut() {
            // SAFETY: a valid, aligned word of the page.
            unsafe { std::ptr::write_volatile(w, v) };
        }
    }
}
