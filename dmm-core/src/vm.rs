// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One VM's memory: the P2M model, the pool, the platform mechanism and the
//! policies, behind one object shared by the fault thread, the policy thread,
//! the control socket and the C ABI.
//!
//! CONTRACT: the public items of this file are used by `control`, `ffi`,
//! `dmmctl` and the QEMU backend. Change them only together with those.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Result;

/// Size of the pages DMM manages (and of the memfd's pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageSize {
    /// 4 KiB base pages (memfd on shmem).
    Small,
    /// 2 MiB pages (memfd with `MFD_HUGETLB | MFD_HUGE_2MB`).
    Huge2M,
}

impl PageSize {
    /// Bytes in one page.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Small => 4096,
            PageSize::Huge2M => 2 << 20,
        }
    }
}

/// The policies a VM runs. Demand paging is always on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PolicySet {
    /// Ask the guest's balloon driver for pages.
    pub balloon: bool,
    /// Swap cold pages to the swap store (needs a swap path).
    pub swap: bool,
    /// Reclaim zero pages (share the zero page).
    pub share_zero: bool,
    /// Accept free page reports from the guest.
    pub report: bool,
}

impl PolicySet {
    /// Parses a comma list such as `balloon,swap,zero,report` (also `all`, `none`).
    /// An unknown name is an error naming it.
    pub fn parse(s: &str) -> Result<Self> {
        let mut set = PolicySet::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "balloon" => set.balloon = true,
                "swap" => set.swap = true,
                "zero" | "share-zero" => set.share_zero = true,
                "report" => set.report = true,
                "all" => {
                    set = PolicySet { balloon: true, swap: true, share_zero: true, report: true }
                }
                "none" | "demand" => {}
                other => {
                    return Err(crate::Error::InvalidArgument(format!(
                        "unknown policy '{other}' (expected balloon, swap, zero, report, all, none)"
                    )))
                }
            }
        }
        Ok(set)
    }
}

/// How to create a VM's memory.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM size in bytes; a non-zero multiple of the page size.
    pub size: u64,
    /// Page size of the backing memfd.
    pub page_size: PageSize,
    /// Initial pool size in bytes (`None`: the whole guest RAM). At most `size`.
    pub pool_size: Option<u64>,
    /// Control socket to serve (`None`: no socket).
    pub control_path: Option<PathBuf>,
    /// Swap store file (`None`: no swapping).
    pub swap_path: Option<PathBuf>,
    /// Policies to run.
    pub policies: PolicySet,
    /// Name used for the memfd and in logs.
    pub name: String,
}

/// Why the guest gave pages up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseReason {
    /// The balloon driver inflated over them.
    Balloon,
    /// Free page reporting.
    Report,
}

/// A guest-physical byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRange {
    /// Guest-physical start address (page aligned).
    pub gpa: u64,
    /// Length in bytes (page multiple).
    pub len: u64,
}

/// What a release or reclaim batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// Pages whose state changed.
    pub pages: u64,
    /// Host bytes actually given back or taken.
    pub bytes: u64,
    /// Pages ignored (outside guest RAM, unaligned, or already in that state).
    pub ignored: u64,
}

/// Guest statistics as reported by the balloon's stats queue (bytes; `None` unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// VIRTIO_BALLOON_S_* tag name -> value, as the driver reported them.
    pub values: std::collections::BTreeMap<String, u64>,
}

/// Counters and gauges of one VM. `#[repr(C)]` so the C ABI can copy it out.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Guest RAM size in bytes.
    pub size: u64,
    /// Page size in bytes.
    pub page_size: u64,
    /// Pool size in bytes (what the VM may hold resident).
    pub pool_size: u64,
    /// Pages backed by host memory now.
    pub resident_pages: u64,
    /// Pages never touched (or given back and not touched since).
    pub unpopulated_pages: u64,
    /// Pages reclaimed as zero pages.
    pub zero_pages: u64,
    /// Pages the balloon driver holds.
    pub ballooned_pages: u64,
    /// Pages the guest reported free.
    pub reported_pages: u64,
    /// Pages in the swap store.
    pub swapped_pages: u64,
    /// Pages in transition.
    pub inflight_pages: u64,
    /// Faults handled (userfaultfd MISSING events).
    pub faults: u64,
    /// Pages filled by demand paging (zero-fill, including fault-around).
    pub demand_fills: u64,
    /// Pages read back from the swap store.
    pub swap_ins: u64,
    /// Pages written to the swap store.
    pub swap_outs: u64,
    /// Bytes given back to the host by ballooning.
    pub reclaimed_balloon_bytes: u64,
    /// Bytes given back to the host by free page reporting.
    pub reclaimed_report_bytes: u64,
    /// Bytes given back to the host by zero-page sharing.
    pub reclaimed_zero_bytes: u64,
    /// Bytes given back to the host by swapping.
    pub reclaimed_swap_bytes: u64,
    /// Balloon target in pages (what the guest is asked to hold in the balloon).
    pub balloon_target_pages: u64,
    /// Balloon size in pages the device reported (`actual`).
    pub balloon_actual_pages: u64,
    /// Bad requests ignored (PFNs outside guest RAM, unaligned ranges, ...).
    pub ignored_requests: u64,
    /// Bytes the backing file really holds (`fstat` `st_blocks * 512`; sim: pages held).
    pub host_allocated_bytes: u64,
}

/// A message pushed to a subscribed balloon device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonTarget {
    /// Target balloon size in 4 KiB pages (virtio `num_pages`).
    pub num_pages: u32,
}

/// One VM's memory. Always used through an `Arc<Vm>`.
#[derive(Debug)]
pub struct Vm {
    // Filled in by the implementation.
    _private: (),
}

impl Vm {
    /// Creates guest RAM on Linux (memfd), starts the control socket if
    /// configured. Bad config (zero or unaligned size, pool > size, unknown
    /// hugepage support) is an `InvalidArgument`/`Unsupported` error naming the value.
    pub fn new_linux(_cfg: VmConfig) -> Result<Arc<Vm>> {
        unimplemented!("dmm-core model")
    }

    /// Creates a VM on the in-memory simulation mechanism (tests, no uffd).
    pub fn new_sim(_cfg: VmConfig) -> Result<Arc<Vm>> {
        unimplemented!("dmm-core model")
    }

    /// The guest-RAM memfd (Linux mechanism), owned by the Vm. `None` on sim.
    pub fn memfd(&self) -> Option<std::os::fd::RawFd> {
        unimplemented!()
    }

    /// Registers the caller's mapping of the memfd (`MAP_SHARED`, whole file,
    /// offset 0) with userfaultfd and starts the fault thread.
    ///
    /// # Safety
    /// `host_addr..host_addr+len` must be a live shared mapping of [`Vm::memfd`]
    /// that stays mapped until [`Vm::shutdown`] returns.
    pub unsafe fn attach(&self, _host_addr: *mut u8, _len: u64) -> Result<()> {
        unimplemented!()
    }

    /// Sets the pool size (bytes, page multiple, at most guest RAM). The
    /// policy engine acts on it asynchronously.
    pub fn set_pool_size(&self, _bytes: u64) -> Result<()> {
        unimplemented!()
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        unimplemented!()
    }

    /// Page states of `count` pages from `first_pfn` (pfn in units of the page size).
    pub fn page_states(&self, _first_pfn: u64, _count: u64) -> Result<Vec<crate::model::PageState>> {
        unimplemented!()
    }

    /// Guest gave these ranges up: release them to the host (hole punch).
    /// Ranges outside guest RAM are ignored and counted, never released.
    pub fn release(&self, _ranges: &[GuestRange], _reason: ReleaseReason) -> Result<BatchOutcome> {
        unimplemented!()
    }

    /// Guest takes these ranges back (balloon deflate): they become
    /// unpopulated and are zero-filled on next touch.
    pub fn reclaim_back(&self, _ranges: &[GuestRange]) -> Result<BatchOutcome> {
        unimplemented!()
    }

    /// Sets the balloon target directly (QMP `balloon`), in 4 KiB pages.
    pub fn set_balloon_target(&self, _num_pages: u32) -> Result<()> {
        unimplemented!()
    }

    /// Subscribes a balloon device to targets: the receiver gets the current
    /// target at once and every change after.
    pub fn subscribe_balloon(&self) -> std::sync::mpsc::Receiver<BalloonTarget> {
        unimplemented!()
    }

    /// The balloon device reports the guest's `actual` (4 KiB pages).
    pub fn set_balloon_actual(&self, _num_pages: u32) {
        unimplemented!()
    }

    /// The balloon device reports guest statistics.
    pub fn set_guest_stats(&self, _stats: GuestStats) {
        unimplemented!()
    }

    /// Last guest statistics reported.
    pub fn guest_stats(&self) -> GuestStats {
        unimplemented!()
    }

    /// Stops the fault and policy threads and the control socket; idempotent.
    /// Pages stay as they are in the memfd.
    pub fn shutdown(&self) {
        unimplemented!()
    }
}
