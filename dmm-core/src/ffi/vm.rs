// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `dmm_vm` handle and its entry points.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use super::events::{dmm_event_callback, Delivery};
use super::memory_error::{dmm_memory_error_handler, CHandler};
use super::result::{dmm_result, guard, guard_value, opt_str, FfiError};
use super::types::{check_stats_size, dmm_config, dmm_device_region, policies_to_bits};
use crate::control::protocol::StatsAnswer;
use crate::vm::{PolicySet, Stats, Vm};

/// Bytes of the 4 KiB pages virtio-balloon counts in.
const BALLOON_PAGE: u64 = 4096;

/// One VM's memory (opaque). Created by `dmm_vm_new`, freed by `dmm_vm_free`.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct dmm_vm {
    vm: Arc<Vm>,
    /// Delivery of events to the callback of `dmm_vm_set_event_callback`.
    events: Mutex<Option<Delivery>>,
}

impl dmm_vm {
    /// The VM behind a handle.
    ///
    /// # Safety
    /// `p` is NULL or a handle from `dmm_vm_new` not yet freed.
    unsafe fn from_ptr<'a>(p: *const dmm_vm, arg: &str) -> Result<&'a Vm, FfiError> {
        // SAFETY: by this function's contract `p` is NULL or a live handle.
        match unsafe { p.as_ref() } {
            Some(h) => Ok(&h.vm),
            None => Err(FfiError::null(arg)),
        }
    }
}

/// Writes `value` to `out` if `out` is not NULL.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
unsafe fn write_opt<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: non-NULL and, by this function's contract, writable.
        unsafe { out.write(value) };
    }
}

/// Parses a comma list such as `"balloon,swap,zero,report"` (also `"all"`,
/// `"none"`, `""`) into `DMM_POLICY_*` bits. An unknown name is
/// `DMM_ERR_INVALID_ARGUMENT` and `dmm_last_error()` names it.
///
/// # Safety
/// `list` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmm_policies_parse(list: *const c_char, out: *mut u32) -> dmm_result {
    guard(|| {
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        // SAFETY: `list` is NULL or NUL-terminated (this function's contract).
        let list = unsafe { opt_str(list, "list") }?.ok_or_else(|| FfiError::null("list"))?;
        let bits = policies_to_bits(PolicySet::parse(list)?);
        // SAFETY: `out` is non-NULL and writable (this function's contract).
        unsafe { out.write(bits) };
        Ok(())
    })
}

/// Creates a VM's memory. On success `*vm_out` is the new handle and, if
/// `memfd_out` is not NULL, `*memfd_out` the guest-RAM memfd, owned by the VM
/// (do not close it; dup it if you need your own). Starts the control socket
/// if `cfg->control_path` is set. Errors name the bad field and value. The
/// first call installs libdmm's stderr log (level from `DMM_LOG`, default
/// `warn`) unless the process has a Rust `log` logger already.
///
/// `cfg_size` is the caller's `sizeof(dmm_config)` (fields it does not
/// know are 0); a size no `dmm_config` ever had is `DMM_ERR_STRUCT_SIZE`.
///
/// # Safety
/// `cfg` is NULL or points to `cfg_size` readable bytes of a `dmm_config`
/// whose strings are NULL or NUL-terminated; `vm_out` and `memfd_out` are
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_new(
    cfg: *const dmm_config,
    cfg_size: usize,
    vm_out: *mut *mut dmm_vm,
    memfd_out: *mut c_int,
) -> dmm_result {
    guard(|| {
        super::log::init();
        // SAFETY: `cfg` is NULL or `cfg_size` readable bytes (contract).
        let cfg = unsafe { dmm_config::from_prefix(cfg, cfg_size) }?;
        if vm_out.is_null() {
            return Err(FfiError::null("vm_out"));
        }
        // SAFETY: the config's strings are NULL or NUL-terminated (contract).
        let config = unsafe { cfg.vm_config() }?;
        let vm = Vm::new_linux(config)?;
        let Some(fd) = vm.memfd() else {
            vm.shutdown();
            return Err(FfiError::from(crate::Error::State(
                "VM has no memfd".to_owned(),
            )));
        };
        // SAFETY: `vm_out` is non-NULL and writable; `memfd_out` is NULL or writable.
        unsafe {
            vm_out.write(Box::into_raw(Box::new(dmm_vm {
                vm,
                events: Mutex::new(None),
            })));
            write_opt(memfd_out, fd);
        }
        Ok(())
    })
}

/// Registers the caller's `MAP_SHARED` mapping of the whole memfd (offset 0)
/// with userfaultfd and starts the fault and policy threads.
///
/// # Safety
/// `vm` is NULL or a live handle; `host_addr..host_addr+len` is a live shared
/// mapping of the VM's memfd that stays mapped until `dmm_vm_free` returns.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_attach(
    vm: *mut dmm_vm,
    host_addr: *mut c_void,
    len: u64,
) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let vm = unsafe { dmm_vm::from_ptr(vm, "vm") }?;
        if host_addr.is_null() {
            return Err(FfiError::null("host_addr"));
        }
        // SAFETY: the mapping's validity and lifetime are this function's contract.
        unsafe { vm.attach(host_addr.cast(), len) }?;
        Ok(())
    })
}

/// Sets the pool size in bytes (page multiple, at most the guest RAM size).
/// The policy engine acts on it asynchronously.
///
/// # Safety
/// `vm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_set_pool_size(vm: *mut dmm_vm, bytes: u64) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let vm = unsafe { dmm_vm::from_ptr(vm, "vm") }?;
        let size = vm.stats().size;
        if bytes > size {
            return Err(FfiError::invalid(format!(
                "pool size {bytes} is larger than the guest RAM size {size}"
            )));
        }
        vm.set_pool_size(bytes)?;
        Ok(())
    })
}

/// Copies the VM's statistics into `*out`, a struct of `size` bytes: pass
/// `sizeof(dmm_stats)`. `dmm_stats` only ever grows at its end, so a caller
/// built against an older `dmm.h` gets exactly the fields it knows (the
/// first `size` bytes, nothing written past them), and one built against a
/// newer `dmm.h` gets the fields this libdmm has and zeros after them.
/// `*written` (if not NULL) gets the bytes of statistics filled in:
/// `min(size, sizeof(dmm_stats) of this libdmm)`; fields past it are not
/// known to this libdmm. A `size` that is not a multiple of 8, below
/// `DMM_STATS_MIN_SIZE` or above `DMM_STATS_MAX_SIZE` is
/// `DMM_ERR_STRUCT_SIZE`, and nothing is written.
///
/// # Safety
/// `vm` is NULL or a live handle; `out` is NULL or writable for `size`
/// bytes; `written` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_get_stats(
    vm: *const dmm_vm,
    out: *mut Stats,
    size: usize,
    written: *mut usize,
) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let vm = unsafe { dmm_vm::from_ptr(vm, "vm") }?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        check_stats_size(size)?;
        let stats = vm.stats();
        let filled = size.min(std::mem::size_of::<Stats>());
        let out = out.cast::<u8>();
        // SAFETY: `out` is writable for `size` >= `filled` bytes (contract);
        // `Stats` is `repr(C)` of `u64`s only (checked in `types.rs`), so its
        // first `filled` bytes are initialised; the source is a local.
        unsafe {
            std::ptr::copy_nonoverlapping((&stats as *const Stats).cast::<u8>(), out, filled);
            std::ptr::write_bytes(out.add(filled), 0, size - filled);
            write_opt(written, filled);
        }
        Ok(())
    })
}

/// Sets the balloon target like QMP `balloon`: `bytes_guest_keeps` is the RAM
/// size the guest should keep (0 < value <= guest RAM size); the balloon
/// target becomes `(size - bytes_guest_keeps) / 4096` pages.
///
/// # Safety
/// `vm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_set_balloon_target(
    vm: *mut dmm_vm,
    bytes_guest_keeps: u64,
) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let vm = unsafe { dmm_vm::from_ptr(vm, "vm") }?;
        let size = vm.stats().size;
        if bytes_guest_keeps == 0 || bytes_guest_keeps > size {
            return Err(FfiError::invalid(format!(
                "balloon size {bytes_guest_keeps} is out of range (1..={size} bytes the guest keeps)"
            )));
        }
        let pages = (size - bytes_guest_keeps) / BALLOON_PAGE;
        let pages = u32::try_from(pages).map_err(|_| {
            FfiError::invalid(format!(
                "balloon target of {pages} pages does not fit virtio's 32 bits"
            ))
        })?;
        vm.set_balloon_target(pages)?;
        Ok(())
    })
}

/// Writes the statistics as JSON text, NUL-terminated, into `buf`: the object
/// the control socket's `stats` command answers (`{"stats":{...},"guest":{...}}`).
/// `*written` (if not NULL) gets the text's length without the NUL, also when
/// `len` is too small (or `buf` NULL): then nothing is written to `buf` and
/// the result is `DMM_ERR_INVALID_ARGUMENT`; retry with `*written + 1` bytes.
///
/// # Safety
/// `vm` is NULL or a live handle; `buf` is NULL or writable for `len` bytes;
/// `written` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_stats_json(
    vm: *const dmm_vm,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let vm = unsafe { dmm_vm::from_ptr(vm, "vm") }?;
        let text = serde_json::to_string(&StatsAnswer::of(vm))
            .map_err(|e| FfiError::invalid(format!("stats do not serialise: {e}")))?;
        // SAFETY: `written` is NULL or writable (this function's contract).
        unsafe { write_opt(written, text.len()) };
        if buf.is_null() || len <= text.len() {
            return Err(FfiError::invalid(format!(
                "len {len} is too small for the stats JSON: need {} bytes",
                text.len() + 1
            )));
        }
        // SAFETY: `buf` is writable for `len` > text.len() bytes (contract);
        // the source is a distinct Rust allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
            buf.add(text.len()).write(0);
        }
        Ok(())
    })
}

/// Calls `cb(opaque, event)` for every VM event from now on (`DMM_EVENT_*`:
/// pool size changed, pool reached, reclaim behind), one call at a time, in
/// order, on a thread of libdmm's: the callback must be quick and
/// thread-safe (hand the event to your own loop). It replaces an earlier
/// callback; `cb` NULL removes it. When this returns, the earlier callback
/// is no longer running and will not be called again. Calling this or
/// `dmm_vm_free` from inside the callback is `DMM_ERR_STATE`, resp. not
/// allowed.
///
/// # Safety
/// `vm` is NULL or a live handle; `cb` is NULL or a function that may be
/// called with `opaque` from another thread until this function (with
/// another callback) or `dmm_vm_free` returns.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_set_event_callback(
    vm: *mut dmm_vm,
    cb: dmm_event_callback,
    opaque: *mut c_void,
) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let handle = unsafe { vm.as_ref() }.ok_or_else(|| FfiError::null("vm"))?;
        let mut slot = handle
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_some_and(Delivery::is_current) {
            return Err(FfiError::from(crate::Error::State(
                "dmm_vm_set_event_callback called from the event callback".to_owned(),
            )));
        }
        if let Some(old) = slot.take() {
            old.stop(&handle.vm);
        }
        if let Some(cb) = cb {
            // SAFETY: `cb` may be called with `opaque` from another thread
            // until the delivery stops (this function's contract); it stops
            // on the next call of this function or in `dmm_vm_free`.
            let delivery = unsafe { Delivery::start(&handle.vm, cb, opaque) }.map_err(|e| {
                FfiError::from(crate::Error::Os {
                    op: "spawn the event thread",
                    source: e,
                })
            })?;
            *slot = Some(delivery);
        }
        Ok(())
    })
}

/// Sets who delivers memory errors: `handler(opaque, error)` is called on
/// libdmm's fault thread for every page whose content was lost (a swap slot
/// that cannot be read back intact), with the page's offset in guest RAM,
/// its length and the faulting thread's id, and answers
/// `DMM_MEMORY_ERROR_POISON`, `DMM_MEMORY_ERROR_INJECTED` or
/// `DMM_MEMORY_ERROR_STOP`. Without a handler (`handler` NULL) the page is
/// poisoned. It replaces an earlier handler; a call of that one already under
/// way may still finish after this returns. No handler runs after
/// `dmm_vm_free` returns.
///
/// # Safety
/// `vm` is NULL or a live handle; `handler` is NULL or a function that may
/// be called with `opaque` from another thread until it is replaced or
/// `dmm_vm_free` returns.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_set_memory_error_handler(
    vm: *mut dmm_vm,
    handler: dmm_memory_error_handler,
    opaque: *mut c_void,
) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let vm = unsafe { dmm_vm::from_ptr(vm, "vm") }?;
        // SAFETY: `handler` may be called with `opaque` from another thread
        // until replaced or the VM is freed (this function's contract).
        let h = handler.map(|cb| unsafe { CHandler::shared(cb, opaque) });
        vm.set_memory_error_handler(h);
        Ok(())
    })
}

/// Clears every poisoned page (call it when the guest resets: a new guest
/// knows nothing of the pages the old one offlined): their memory and
/// poison go, they read as untouched pages again. `*cleared` (may be NULL)
/// gets how many pages were cleared.
///
/// # Safety
/// `vm` is NULL or a live handle; `cleared` is NULL or writable. Not from
/// the memory-error handler.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_clear_memory_errors(
    vm: *mut dmm_vm,
    cleared: *mut u64,
) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let vm = unsafe { dmm_vm::from_ptr(vm, "vm") }?;
        let n = vm.clear_memory_errors()?;
        // SAFETY: `cleared` is NULL or writable (this function's contract).
        unsafe { write_opt(cleared, n) };
        Ok(())
    })
}

/// Has DMM handle the faults of a device process that maps guest RAM (a
/// vhost-user backend): `uffd` is the userfaultfd it registered in MISSING
/// mode on its mappings (vhost-user `POSTCOPY_ADVISE`), `regions[0..n]`
/// where it maps which part of guest RAM. The fd is duplicated: the caller
/// keeps and closes its own. Pass every region the device maps: one
/// flagged `DMM_DEVICE_REGION_OTHER` is other RAM; a fault at an address no
/// region names is never filled (the device gets a memory error). From then
/// on the device's accesses to pages
/// DMM swapped, reclaimed or never filled fault through DMM, and a write it
/// makes while a page is evicted is kept. `*id` (if not NULL) gets the id
/// for `dmm_vm_detach_device`. Needs `dmm_vm_attach` first and 4 KiB
/// pages; bad regions are `DMM_ERR_INVALID_ARGUMENT` naming the region.
///
/// # Safety
/// `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
/// string; `regions` is NULL or points to `n` readable regions; `id` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_attach_device(
    vm: *mut dmm_vm,
    name: *const c_char,
    uffd: c_int,
    regions: *const dmm_device_region,
    n: usize,
    id: *mut u32,
) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let vm = unsafe { dmm_vm::from_ptr(vm, "vm") }?;
        // SAFETY: `name` is NULL or NUL-terminated (this function's contract).
        let name = unsafe { opt_str(name, "name") }?.unwrap_or("device");
        if regions.is_null() {
            return Err(FfiError::null("regions"));
        }
        if uffd < 0 {
            return Err(FfiError::invalid(format!(
                "uffd {uffd} is not a file descriptor"
            )));
        }
        // SAFETY: `regions` points to `n` readable regions (this function's contract).
        let regions = unsafe { std::slice::from_raw_parts(regions, n) };
        let regions: Vec<crate::mech::DeviceRegion> = regions
            .iter()
            .map(|r| crate::mech::DeviceRegion {
                client_addr: r.client_addr,
                offset: r.offset,
                len: r.len,
                other: r.flags & super::types::DMM_DEVICE_REGION_OTHER != 0,
            })
            .collect();
        // SAFETY: F_DUPFD_CLOEXEC on a caller's fd returns a new fd or -1.
        let dup = unsafe { libc::fcntl(uffd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(FfiError::invalid(format!(
                "uffd {uffd}: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: `dup` is a fresh fd that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
        let got = vm.attach_device(name, fd, &regions)?;
        // SAFETY: `id` is NULL or writable (this function's contract).
        unsafe { write_opt(id, got) };
        Ok(())
    })
}

/// Stops handling the faults of device `id` (from `dmm_vm_attach_device`);
/// device threads still waiting are woken. Call it before the device's
/// userfaultfd is closed for good.
///
/// # Safety
/// `vm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_detach_device(vm: *mut dmm_vm, id: u32) -> dmm_result {
    guard(|| {
        // SAFETY: `vm` is NULL or a live handle (this function's contract).
        let vm = unsafe { dmm_vm::from_ptr(vm, "vm") }?;
        vm.detach_device(id)?;
        Ok(())
    })
}

/// Shuts the VM down (fault and policy threads, control socket) and frees the
/// handle. NULL is a no-op. Unmap guest RAM only after this returns.
///
/// # Safety
/// `vm` is NULL or a handle from `dmm_vm_new`, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn dmm_vm_free(vm: *mut dmm_vm) {
    if vm.is_null() {
        return;
    }
    // SAFETY: `vm` came from `Box::into_raw` in `dmm_vm_new` and is freed once
    // (this function's contract).
    let handle = unsafe { Box::from_raw(vm) };
    guard_value((), move || {
        let events = handle
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(delivery) = events {
            delivery.stop(&handle.vm);
        }
        handle.vm.shutdown();
        drop(handle);
    });
}
