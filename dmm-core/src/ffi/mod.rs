// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The C ABI of libdmm (`include/dmm.h`, generated from this module by
//! cbindgen; see `docs/ffi.md`).
//!
//! Rules: opaque handles, stable numeric result codes, every entry point runs
//! in a panic guard (a panic becomes `DMM_ERR_PANIC`), and the text of the
//! last error of the calling thread is kept for `dmm_last_error`.

mod events;
mod log;
mod memory_error;
mod result;
mod types;
mod vm;

use std::ffi::{c_char, CStr};

/// `dmm_stats` of the C ABI: dmm-core's statistics struct itself (cbindgen
/// reads `src/vm/stats.rs` and names it `dmm_stats` in `dmm.h`).
pub use crate::vm::Stats as dmm_stats;
pub use events::{
    dmm_event, dmm_event_callback, DMM_EVENT_MEMORY_ERROR, DMM_EVENT_POOL_REACHED,
    DMM_EVENT_POOL_SIZE_CHANGED, DMM_EVENT_RECLAIM_BEHIND, DMM_MEMORY_ERROR_ACTION_INJECTED,
    DMM_MEMORY_ERROR_ACTION_POISON, DMM_MEMORY_ERROR_REASON_NO_SLOT,
    DMM_MEMORY_ERROR_REASON_POISONED, DMM_MEMORY_ERROR_REASON_SLOT_CORRUPT,
    DMM_MEMORY_ERROR_REASON_STORE_READ_ERROR,
};
pub use memory_error::{
    dmm_memory_error, dmm_memory_error_handler, DMM_MEMORY_ERROR_INJECTED, DMM_MEMORY_ERROR_POISON,
    DMM_MEMORY_ERROR_STOP,
};
pub use result::dmm_result;
pub use types::{
    dmm_config, dmm_device_region, DMM_CONFIG_MAX_SIZE, DMM_CONFIG_MIN_SIZE,
    DMM_DEVICE_REGION_OTHER, DMM_POLICY_BALLOON, DMM_POLICY_REPORT, DMM_POLICY_SWAP,
    DMM_POLICY_ZERO, DMM_STATS_MAX_SIZE, DMM_STATS_MIN_SIZE,
};
pub use vm::{
    dmm_policies_parse, dmm_vm, dmm_vm_attach, dmm_vm_attach_device, dmm_vm_clear_memory_errors,
    dmm_vm_detach_device, dmm_vm_free, dmm_vm_get_stats, dmm_vm_new, dmm_vm_set_balloon_target,
    dmm_vm_set_event_callback, dmm_vm_set_memory_error_handler, dmm_vm_set_pool_size,
    dmm_vm_stats_json,
};

/// Copies the calling thread's last error text into `buf` (truncated to
/// `len - 1` bytes, always NUL-terminated when `len > 0`) and returns the
/// text's full length; 0 if the last call succeeded. `buf` may be NULL to ask
/// for the length.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn dmm_last_error(buf: *mut c_char, len: usize) -> usize {
    result::guard_value(0, || {
        result::with_last_error(|text| {
            if !buf.is_null() && len > 0 {
                let n = text.len().min(len - 1);
                // SAFETY: `buf` is writable for `len` > n bytes (this function's
                // contract); the source is a distinct Rust allocation.
                unsafe {
                    std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
                    buf.add(n).write(0);
                }
            }
            text.len()
        })
    })
}

/// Static description of a result code (`r` must be a `dmm_result` value).
#[no_mangle]
pub extern "C" fn dmm_result_str(r: dmm_result) -> *const c_char {
    result::guard_value(c"".as_ptr(), || r.as_cstr().as_ptr())
}

/// The library version, e.g. `"0.1.0"` (static).
#[no_mangle]
pub extern "C" fn dmm_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    result::guard_value(c"".as_ptr(), || VERSION.as_ptr())
}
