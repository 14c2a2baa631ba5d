// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `#[repr(C)]` types of the C ABI and their conversion to dmm-core's types.

use std::ffi::c_char;
use std::path::PathBuf;

use super::result::{opt_str, FfiError};
use crate::vm::{PageSize, PolicySet, Stats, VmConfig};

/// Policy bit: ask the guest's balloon driver for pages.
pub const DMM_POLICY_BALLOON: u32 = 1;
/// Policy bit: swap cold pages to the swap store (needs `swap_path`).
pub const DMM_POLICY_SWAP: u32 = 2;
/// Policy bit: reclaim zero pages.
pub const DMM_POLICY_ZERO: u32 = 4;
/// Policy bit: accept free page reports from the guest.
pub const DMM_POLICY_REPORT: u32 = 8;

const POLICY_ALL: u32 = DMM_POLICY_BALLOON | DMM_POLICY_SWAP | DMM_POLICY_ZERO | DMM_POLICY_REPORT;

/// How to create a VM's memory (`dmm_vm_new`). Zero-initialise it, then set
/// at least `size`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dmm_config {
    /// Guest RAM bytes: a non-zero multiple of `page_size`.
    pub size: u64,
    /// 4096, or 2097152 (hugetlb memfd); 0 means 4096.
    pub page_size: u64,
    /// Initial pool bytes; 0 means `size`.
    pub pool_size: u64,
    /// Control socket path; NULL: no control socket.
    pub control_path: *const c_char,
    /// Swap store file; NULL: no swap.
    pub swap_path: *const c_char,
    /// Name of the memfd and in logs; NULL: "dmm".
    pub name: *const c_char,
    /// `DMM_POLICY_*` bits.
    pub policies: u32,
    /// Non-zero: compress swapped pages (LZ4); 0: store them raw.
    pub swap_compress: u32,
    /// Non-zero: where the host refuses kernel-mode userfaultfd faults,
    /// take user-mode ones only (faults raised by KVM, vhost or a `read()`
    /// into guest RAM then fail with EFAULT); 0: such a host is an error at
    /// `dmm_vm_attach` naming the fix.
    pub uffd_user_mode_only: u32,
}

/// Converts `DMM_POLICY_*` bits; unknown bits are an error naming them.
pub(crate) fn policies_from_bits(bits: u32) -> Result<PolicySet, FfiError> {
    if bits & !POLICY_ALL != 0 {
        return Err(FfiError::invalid(format!(
            "policies 0x{bits:x} has unknown bits 0x{:x} (known: 0x{POLICY_ALL:x})",
            bits & !POLICY_ALL
        )));
    }
    Ok(PolicySet {
        balloon: bits & DMM_POLICY_BALLOON != 0,
        swap: bits & DMM_POLICY_SWAP != 0,
        share_zero: bits & DMM_POLICY_ZERO != 0,
        report: bits & DMM_POLICY_REPORT != 0,
    })
}

/// `DMM_POLICY_*` bits of a policy set.
pub(crate) fn policies_to_bits(set: PolicySet) -> u32 {
    let mut bits = 0;
    if set.balloon {
        bits |= DMM_POLICY_BALLOON;
    }
    if set.swap {
        bits |= DMM_POLICY_SWAP;
    }
    if set.share_zero {
        bits |= DMM_POLICY_ZERO;
    }
    if set.report {
        bits |= DMM_POLICY_REPORT;
    }
    bits
}

impl dmm_config {
    /// Validates and converts; errors name the field and its value.
    ///
    /// # Safety
    /// The string fields are NULL or NUL-terminated strings live for the call.
    pub(crate) unsafe fn vm_config(&self) -> Result<VmConfig, FfiError> {
        let page_size = match self.page_size {
            0 | 4096 => PageSize::Small,
            0x20_0000 => PageSize::Huge2M,
            other => {
                return Err(FfiError::invalid(format!(
                    "page_size {other} is not supported (expected 4096 or 2097152)"
                )))
            }
        };
        let page = page_size.bytes();
        if self.size == 0 || self.size % page != 0 {
            return Err(FfiError::invalid(format!(
                "size {} is not a non-zero multiple of the page size {page}",
                self.size
            )));
        }
        let pool_size = match self.pool_size {
            0 => None,
            p if p > self.size => {
                return Err(FfiError::invalid(format!(
                    "pool_size {p} is larger than size {}",
                    self.size
                )))
            }
            p => Some(p),
        };
        // SAFETY: forwarded from this function's contract.
        let control_path = unsafe { opt_str(self.control_path, "control_path") }?;
        // SAFETY: as above.
        let swap_path = unsafe { opt_str(self.swap_path, "swap_path") }?;
        // SAFETY: as above.
        let name = unsafe { opt_str(self.name, "name") }?;
        if control_path == Some("") {
            return Err(FfiError::invalid(
                "control_path is empty (use NULL for none)".to_owned(),
            ));
        }
        if swap_path == Some("") {
            return Err(FfiError::invalid(
                "swap_path is empty (use NULL for none)".to_owned(),
            ));
        }
        Ok(VmConfig {
            size: self.size,
            page_size,
            pool_size,
            control_path: control_path.map(PathBuf::from),
            swap_path: swap_path.map(PathBuf::from),
            swap_compress: self.swap_compress != 0,
            uffd_user_mode_only: self.uffd_user_mode_only != 0,
            policies: policies_from_bits(self.policies)?,
            name: name.unwrap_or("dmm").to_owned(),
        })
    }
}

/// Counters and gauges of one VM (`dmm_vm_get_stats`); the fields of
/// dmm-core's `vm::Stats`, in the same order. Sizes are bytes.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct dmm_stats {
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
    /// Balloon target in 4 KiB pages.
    pub balloon_target_pages: u64,
    /// Balloon size in 4 KiB pages the device reported (`actual`).
    pub balloon_actual_pages: u64,
    /// Bad requests ignored (PFNs outside guest RAM, unaligned ranges, ...).
    pub ignored_requests: u64,
    /// Bytes the backing file really holds (`fstat` `st_blocks * 512`).
    pub host_allocated_bytes: u64,
    /// Write-protect faults handled (guest writes during swap-out or zero reclaim).
    pub wp_faults: u64,
    /// Pages whose swap-out or zero reclaim a write aborted (they stayed resident).
    pub reclaim_aborts: u64,
    /// Swap-ins that found the page populated by a device process (kept, not overwritten).
    pub device_populated_conflicts: u64,
    /// Swap-outs refused because the store was full (pages, or whole rounds).
    pub swap_full: u64,
    /// Times reclaim missed its deadline with resident still above the pool.
    pub reclaim_behind: u64,
    /// Swap store slots in use.
    pub swap_slots_used: u64,
    /// Swap store capacity in slots (0: no swap store).
    pub swap_slots_total: u64,
    /// Pages stored once for several guest pages (identical content).
    pub swap_dedup_hits: u64,
    /// Pages pinned (excluded from swap and zero reclaim).
    pub pinned_pages: u64,
    /// Swap store slots holding a compressed page (of `swap_slots_used`).
    pub swap_compressed_slots: u64,
    /// Bytes of the swap file its used slots take (size classes; raw: a page).
    pub swap_stored_bytes: u64,
    /// Bytes the swap file really holds (`fstat` `st_blocks * 512`).
    pub swap_file_bytes: u64,
    /// Swap-ins that found their slot corrupt (the page could not be restored).
    pub swap_corrupt: u64,
    /// Memory errors delivered to the guest (pages whose content was lost).
    pub memory_errors: u64,
    /// Pages poisoned now (content lost, the guest told).
    pub poisoned_pages: u64,
}

impl From<Stats> for dmm_stats {
    fn from(s: Stats) -> Self {
        // Exhaustive on purpose: a field added to `Stats` must be added here
        // (and to the header) or this stops compiling.
        let Stats {
            size,
            page_size,
            pool_size,
            resident_pages,
            unpopulated_pages,
            zero_pages,
            ballooned_pages,
            reported_pages,
            swapped_pages,
            inflight_pages,
            faults,
            demand_fills,
            swap_ins,
            swap_outs,
            reclaimed_balloon_bytes,
            reclaimed_report_bytes,
            reclaimed_zero_bytes,
            reclaimed_swap_bytes,
            balloon_target_pages,
            balloon_actual_pages,
            ignored_requests,
            host_allocated_bytes,
            wp_faults,
            reclaim_aborts,
            device_populated_conflicts,
            swap_full,
            reclaim_behind,
            swap_slots_used,
            swap_slots_total,
            swap_dedup_hits,
            pinned_pages,
            swap_compressed_slots,
            swap_stored_bytes,
            swap_file_bytes,
            swap_corrupt,
            memory_errors,
            poisoned_pages,
        } = s;
        dmm_stats {
            size,
            page_size,
            pool_size,
            resident_pages,
            unpopulated_pages,
            zero_pages,
            ballooned_pages,
            reported_pages,
            swapped_pages,
            inflight_pages,
            faults,
            demand_fills,
            swap_ins,
            swap_outs,
            reclaimed_balloon_bytes,
            reclaimed_report_bytes,
            reclaimed_zero_bytes,
            reclaimed_swap_bytes,
            balloon_target_pages,
            balloon_actual_pages,
            ignored_requests,
            host_allocated_bytes,
            wp_faults,
            reclaim_aborts,
            device_populated_conflicts,
            swap_full,
            reclaim_behind,
            swap_slots_used,
            swap_slots_total,
            swap_dedup_hits,
            pinned_pages,
            swap_compressed_slots,
            swap_stored_bytes,
            swap_file_bytes,
            swap_corrupt,
            memory_errors,
            poisoned_pages,
        }
    }
}
