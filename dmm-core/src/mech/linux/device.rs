// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Faults of device processes: a vhost-user backend maps guest RAM from the
//! memfd, registers its mappings with a userfaultfd of its own in MISSING
//! mode and hands that uffd over (vhost-user `POSTCOPY_ADVISE` and
//! `POSTCOPY_LISTEN`, QEMU patch 0010; the mem table reply names where it
//! mapped each region).
//!
//! One thread per device reads the device's faults, has the sink fill the
//! page ([`FaultSink::on_device_fault`]: through QEMU's mapping, which fills
//! the shared memfd page for every mapping) and wakes the faulting device
//! thread with `UFFDIO_WAKE` on the device's uffd. A page whose content is
//! lost is poisoned in the device's mapping (the device gets SIGBUS, never
//! zeros). A fault in a region of other RAM the device maps is filled with
//! zeros through the device's uffd: what the kernel does for a hole when no
//! userfaultfd is registered. A fault at an address no region names cannot
//! be told from guest RAM mapped somewhere DMM was not told of: it is never
//! filled (zeros there would replace a swapped page behind DMM); it is
//! poisoned, counted and logged, and the device gets SIGBUS.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::uffd::{self, Uffd, UffdError, UffdMsg};
use super::{is_eagain, wait_for_faults, Woken, FAULT_RETRY_PAUSE, FAULT_TRIES};
use crate::mech::{DeviceRegion, FaultSink};
use crate::{Error, Result};

/// One device's uffd and where it maps guest RAM.
#[derive(Debug)]
pub(super) struct DeviceView {
    pub(super) name: String,
    uffd: Uffd,
    regions: Vec<DeviceRegion>,
    page_size: u64,
}

impl DeviceView {
    /// Checks `regions` against guest RAM of `ram_len` bytes (page-aligned,
    /// inside, not overlapping in the device's address space).
    pub(super) fn new(
        name: &str,
        fd: OwnedFd,
        regions: &[DeviceRegion],
        page_size: u64,
        ram_len: u64,
    ) -> Result<Self> {
        if regions.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "device '{name}': no region of guest RAM"
            )));
        }
        let mut sorted = regions.to_vec();
        sorted.sort_by_key(|r| r.client_addr);
        for (i, r) in sorted.iter().enumerate() {
            let aligned = [r.client_addr, r.offset, r.len]
                .iter()
                .all(|v| v % page_size == 0);
            let inside = r.len > 0
                && (r.other || r.offset.checked_add(r.len).is_some_and(|e| e <= ram_len))
                && r.client_addr.checked_add(r.len).is_some();
            let apart = sorted
                .get(i + 1)
                .map_or(true, |n| r.client_addr + r.len <= n.client_addr);
            if !(aligned && inside && apart) {
                return Err(Error::InvalidArgument(format!(
                    "device '{name}': region at 0x{:x} (guest RAM offset 0x{:x}, 0x{:x} bytes) \
                     is not page-aligned, not inside guest RAM (0x{ram_len:x} bytes) or \
                     overlaps another",
                    r.client_addr, r.offset, r.len
                )));
            }
        }
        Ok(DeviceView {
            name: name.to_owned(),
            uffd: Uffd::adopt(fd),
            regions: sorted,
            page_size,
        })
    }

    /// What device address `addr` is.
    fn at(&self, addr: u64) -> At {
        let i = self.regions.partition_point(|r| r.client_addr <= addr);
        let Some(r) = i.checked_sub(1).and_then(|i| self.regions.get(i)) else {
            return At::Unknown;
        };
        let off = addr - r.client_addr;
        match (off < r.len, r.other) {
            (false, _) => At::Unknown,
            (true, true) => At::Other,
            (true, false) => At::Guest((r.offset + off) / self.page_size),
        }
    }

    /// Wakes every thread waiting on the device's regions (on detach).
    pub(super) fn wake_all(&self) {
        for r in &self.regions {
            if let Err(e) = self.uffd.wake(r.client_addr, r.len) {
                log::debug!("device '{}': wake on detach: {e}", self.name);
            }
        }
    }
}

/// What a device address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Guest page `pfn` of this VM.
    Guest(u64),
    /// A region of other RAM.
    Other,
    /// No region names it.
    Unknown,
}

/// A running device fault thread.
#[derive(Debug)]
pub(super) struct DeviceThread {
    pub(super) id: u32,
    pub(super) view: Arc<DeviceView>,
    stop: OwnedFd,
    handle: JoinHandle<()>,
}

impl DeviceThread {
    /// Starts the thread of `view`, delivering to `sink`.
    pub(super) fn start(id: u32, view: DeviceView, sink: Arc<dyn FaultSink>) -> Result<Self> {
        // SAFETY: eventfd with valid flags returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(Error::last_os("eventfd"));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        let stop_raw = stop.as_raw_fd();
        let view = Arc::new(view);
        let v = view.clone();
        let handle = crate::thread::spawn("dmm-device", move || {
            device_loop(&v, stop_raw, &*sink);
        })
        .map_err(|source| Error::Os {
            op: "spawn device fault thread",
            source,
        })?;
        Ok(DeviceThread {
            id,
            view,
            stop,
            handle,
        })
    }

    /// Stops the thread and wakes what waits on the device's regions.
    pub(super) fn stop(self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        // A panic there aborted the process already (`crate::thread`).
        let _ = self.handle.join();
        self.view.wake_all();
    }
}

/// One fault a device raised.
#[derive(Debug, Clone, Copy)]
struct DeviceFault {
    /// The page's address in the device process.
    addr: u64,
    write: bool,
}

fn device_loop(d: &DeviceView, stop: RawFd, sink: &dyn FaultSink) {
    let mut queue: VecDeque<DeviceFault> = VecDeque::new();
    let mut buf = [UffdMsg::default(); 64];
    loop {
        match wait_for_faults(d.uffd.raw(), stop, -1) {
            Woken::Events => {}
            Woken::Interrupted => continue,
            Woken::Stop => return,
            Woken::Closed => {
                log::info!("device '{}': userfaultfd closed", d.name);
                return;
            }
            Woken::Failed(e) => {
                log::error!("device '{}': poll: {e}", d.name);
                return;
            }
        }
        loop {
            let n = match d.uffd.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    log::error!("device '{}': {e}", d.name);
                    return;
                }
            };
            for m in &buf[..n] {
                if m.event == uffd::EVENT_PAGEFAULT {
                    queue.push_back(DeviceFault {
                        addr: m.arg1 & !(d.page_size - 1),
                        write: m.arg0 & uffd::PAGEFAULT_FLAG_WRITE != 0,
                    });
                } else {
                    sink.on_ignored();
                }
            }
            if n < buf.len() {
                break;
            }
        }
        while let Some(f) = queue.pop_front() {
            if !resolve(d, sink, f) {
                return;
            }
        }
    }
}

/// Fills (or poisons) the page of `f` and wakes the device's thread; false
/// when the device is gone.
fn resolve(d: &DeviceView, sink: &dyn FaultSink, f: DeviceFault) -> bool {
    let ps = d.page_size;
    let pfn = match d.at(f.addr) {
        At::Guest(pfn) => pfn,
        At::Other => {
            // Not this VM's guest RAM: what the kernel does without a uffd.
            return match d.uffd.zeropage(f.addr, ps, false) {
                Ok(()) | Err(UffdError::Exists { .. }) => d.uffd.wake(f.addr, ps).is_ok(),
                Err(UffdError::Gone) => false,
                Err(e) => {
                    log::warn!("device '{}': zero fill at 0x{:x}: {e}", d.name, f.addr);
                    d.uffd.wake(f.addr, ps).is_ok()
                }
            };
        }
        At::Unknown => {
            sink.on_ignored();
            log::error!(
                "device '{}' faulted at 0x{:x}, which none of its regions names: not \
                 filled (it may be guest RAM DMM was not told of); the device gets a \
                 memory error",
                d.name,
                f.addr
            );
            return match d.uffd.poison(f.addr, ps, false) {
                Ok(()) | Err(UffdError::Exists { .. }) => true,
                Err(UffdError::Gone) => false,
                Err(e) => crate::error::fail_stop(&format!(
                    "device '{}' faulted at 0x{:x}, outside its regions, and the address \
                     cannot be poisoned: {e}",
                    d.name, f.addr
                )),
            };
        }
    };
    let mut failures = 0;
    loop {
        match sink.on_device_fault(pfn, f.write) {
            Ok(true) => break,
            Ok(false) => {
                // Lost content: a memory error for the device, never zeros.
                if let Err(e) = d.uffd.poison(f.addr, ps, false) {
                    crate::error::fail_stop(&format!(
                        "device '{}' touched guest page 0x{:x}, whose content is lost, and \
                         it cannot be poisoned in the device's mapping: {e}",
                        d.name,
                        pfn * ps
                    ));
                }
                return true;
            }
            Err(Error::State(msg)) => {
                log::info!("device '{}': stopping: {msg}", d.name);
                return false;
            }
            Err(e) => {
                failures += 1;
                if failures >= FAULT_TRIES {
                    crate::error::fail_stop(&format!(
                        "fault of device '{}' on guest page 0x{:x} cannot be resolved after \
                         {FAULT_TRIES} tries: {e}",
                        d.name,
                        pfn * ps
                    ));
                }
                if !is_eagain(&e) {
                    log::warn!(
                        "fault of device '{}' on guest page 0x{:x}: {e}; trying again \
                         ({failures}/{FAULT_TRIES})",
                        d.name,
                        pfn * ps
                    );
                }
                std::thread::sleep(FAULT_RETRY_PAUSE);
            }
        }
    }
    match d.uffd.wake(f.addr, ps) {
        Ok(()) => true,
        Err(UffdError::Gone) => false,
        Err(e) => {
            log::warn!("device '{}': wake at 0x{:x}: {e}", d.name, f.addr);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        // SAFETY: eventfd returns a new fd; any fd stands in for a uffd here.
        unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) }
    }

    #[test]
    fn addresses_map_to_guest_pages_of_their_region() {
        let ps = 4096;
        let regions = [
            DeviceRegion {
                client_addr: 0x7f00_8000_0000,
                offset: 0x4000_0000,
                len: 0x1000_0000,
                other: false,
            },
            DeviceRegion {
                client_addr: 0x7f00_0000_0000,
                offset: 0,
                len: 0x4000_0000,
                other: false,
            },
            DeviceRegion {
                client_addr: 0x7f10_0000_0000,
                offset: 0,
                len: 0x2_0000,
                other: true,
            },
        ];
        let d = DeviceView::new("d", fd(), &regions, ps, 0x5000_0000).unwrap();
        assert_eq!(d.at(0x7f00_0000_0000), At::Guest(0));
        assert_eq!(d.at(0x7f00_0000_3000), At::Guest(3));
        assert_eq!(d.at(0x7f00_8000_0000), At::Guest(0x4000_0000 / ps));
        assert_eq!(d.at(0x7f00_8000_0000 - 1), At::Unknown);
        assert_eq!(d.at(0x7f00_8000_0000 + 0x1000_0000), At::Unknown);
        assert_eq!(d.at(0x1000), At::Unknown);
        assert_eq!(d.at(0x7f10_0000_1000), At::Other);
        assert_eq!(d.at(0x7f10_0002_0000), At::Unknown);
    }

    #[test]
    fn bad_regions_are_refused_by_value() {
        let ps = 4096;
        let r = |client_addr, offset, len| DeviceRegion {
            client_addr,
            offset,
            len,
            other: false,
        };
        for bad in [
            vec![],
            vec![r(0x1000, 0, 0x1001)],
            vec![r(0x1000, 0x1000, 0x10_0000)],
            vec![r(0x1000, 0, 0x2000), r(0x2000, 0x2000, 0x1000)],
        ] {
            let e = DeviceView::new("disk1", fd(), &bad, ps, 0x10_0000).unwrap_err();
            assert!(e.to_string().contains("disk1"), "{e}");
        }
    }
}
