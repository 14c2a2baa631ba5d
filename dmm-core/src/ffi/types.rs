// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `#[repr(C)]` types of the C ABI and their conversion to dmm-core's types.
//! `dmm_stats` is dmm-core's `vm::Stats` itself (`src/vm/stats.rs`).

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

/// Where a device process maps a part of guest RAM (`dmm_vm_attach_device`).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dmm_device_region {
    /// Start of the part in the device process's address space.
    pub client_addr: u64,
    /// Its byte offset in guest RAM (the memfd).
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// `DMM_DEVICE_REGION_OTHER`: not this VM's guest RAM (other RAM the
    /// device maps; faults there are filled with zeros, as the kernel would
    /// without a userfaultfd; `offset` unused). 0 otherwise.
    pub flags: u64,
}

/// `dmm_device_region.flags`: the region is not this VM's guest RAM.
pub const DMM_DEVICE_REGION_OTHER: u64 = 1;

/// How to create a VM's memory (`dmm_vm_new`). Zero-initialise it, then set
/// at least `size`, and pass `sizeof(dmm_config)`: a struct that grows.
/// Fields are only ever appended; a caller built against an older header
/// passes its smaller size, and the fields it does not know read as 0 (the
/// defaults).
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

/// Smallest `cfg_size` `dmm_vm_new` takes: the `dmm_config` of libdmm's
/// first C ABI, whose last field was `swap_compress`.
pub const DMM_CONFIG_MIN_SIZE: usize = 56;
/// Largest `cfg_size` `dmm_vm_new` takes.
pub const DMM_CONFIG_MAX_SIZE: usize = 4096;

const _: () = assert!(std::mem::offset_of!(dmm_config, uffd_user_mode_only) == DMM_CONFIG_MIN_SIZE);

impl dmm_config {
    /// The config a caller passed with its `size`: the first `size` bytes
    /// (at most this libdmm's `dmm_config`), the fields past them 0.
    ///
    /// # Safety
    /// `cfg` is NULL or points to `size` readable bytes.
    pub(crate) unsafe fn from_prefix(
        cfg: *const dmm_config,
        size: usize,
    ) -> Result<Self, FfiError> {
        if cfg.is_null() {
            return Err(FfiError::null("cfg"));
        }
        if size % 4 != 0 || !(DMM_CONFIG_MIN_SIZE..=DMM_CONFIG_MAX_SIZE).contains(&size) {
            return Err(FfiError::struct_size(format!(
                "cfg_size {size} is not a dmm_config size: a multiple of 4 from \
                 DMM_CONFIG_MIN_SIZE ({DMM_CONFIG_MIN_SIZE}) to DMM_CONFIG_MAX_SIZE \
                 ({DMM_CONFIG_MAX_SIZE}); this libdmm's sizeof(dmm_config) is {}",
                std::mem::size_of::<dmm_config>()
            )));
        }
        let mut out = std::mem::MaybeUninit::<dmm_config>::zeroed();
        let n = size.min(std::mem::size_of::<dmm_config>());
        // SAFETY: the caller's `size` bytes are readable (contract), `out` has
        // room for `n` bytes, the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(cfg.cast::<u8>(), out.as_mut_ptr().cast::<u8>(), n)
        };
        // SAFETY: every field of `dmm_config` is an integer or a raw pointer,
        // for which all-zero and any bytes the caller wrote are valid values.
        Ok(unsafe { out.assume_init() })
    }
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

/// Smallest `size` `dmm_vm_get_stats` takes: the `dmm_stats` of libdmm's
/// first C ABI, whose last field was `host_allocated_bytes`.
pub const DMM_STATS_MIN_SIZE: usize = 176;
/// Largest `size` `dmm_vm_get_stats` takes (a page: 512 fields).
pub const DMM_STATS_MAX_SIZE: usize = 4096;

// What the prefix copy of `dmm_vm_get_stats` relies on.
const _: () = assert!(std::mem::offset_of!(Stats, wp_faults) == DMM_STATS_MIN_SIZE);
const _: () = assert!(std::mem::size_of::<Stats>() % 8 == 0);
const _: () = assert!(std::mem::size_of::<Stats>() <= DMM_STATS_MAX_SIZE);

/// Checks the `size` a caller gave for its `dmm_stats`: whole `uint64_t`
/// fields, from [`DMM_STATS_MIN_SIZE`] to [`DMM_STATS_MAX_SIZE`] bytes.
pub(crate) fn check_stats_size(size: usize) -> Result<(), FfiError> {
    if size % 8 == 0 && (DMM_STATS_MIN_SIZE..=DMM_STATS_MAX_SIZE).contains(&size) {
        return Ok(());
    }
    Err(FfiError::struct_size(format!(
        "size {size} is not a dmm_stats size: a multiple of 8 from \
         DMM_STATS_MIN_SIZE ({DMM_STATS_MIN_SIZE}) to DMM_STATS_MAX_SIZE \
         ({DMM_STATS_MAX_SIZE}); this libdmm's sizeof(dmm_stats) is {}",
        std::mem::size_of::<Stats>()
    )))
}
