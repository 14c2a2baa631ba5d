// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory errors for C callers: `dmm_vm_set_memory_error_handler` lets the
//! embedder deliver the error of a page whose content was lost itself (QEMU
//! under TCG: a machine check on the faulting vCPU), and
//! `dmm_vm_clear_memory_errors` clears the poisoned pages at a guest reset.

use std::ffi::c_void;
use std::sync::Arc;

use super::events::reason_code;
use crate::vm::{HandlerAnswer, MemoryError, MemoryErrorHandler};

/// Handler answer: libdmm poisons the page (`UFFDIO_POISON`): the faulting
/// thread gets SIGBUS `BUS_MCEERR_AR` (under KVM: a machine check in the
/// guest, through QEMU's SIGBUS handling). What happens without a handler.
pub const DMM_MEMORY_ERROR_POISON: u32 = 0;
/// Handler answer: the handler queued the error to the guest itself (it
/// takes it before it can use the page); libdmm fills the page with zeros
/// and wakes the faulting thread.
pub const DMM_MEMORY_ERROR_INJECTED: u32 = 1;
/// Handler answer: the error cannot be delivered (the faulter is not a
/// vCPU): libdmm stops the process with a message naming the page. Any
/// other value means the same.
pub const DMM_MEMORY_ERROR_STOP: u32 = 2;

/// A page whose content was lost, as the handler sees it.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct dmm_memory_error {
    /// Offset of the page in guest RAM (the memfd).
    pub offset: u64,
    /// Bytes of the page.
    pub length: u64,
    /// The faulting thread's id (Linux tid, `gettid()`); 0 when unknown.
    pub thread_id: u32,
    /// `DMM_MEMORY_ERROR_REASON_*`.
    pub reason: u32,
}

/// Called on libdmm's fault thread while the faulting thread waits; returns
/// a `DMM_MEMORY_ERROR_*` answer. It must not wait for anything a guest
/// vCPU may hold (QEMU's BQL) and must not call back into this VM.
#[allow(non_camel_case_types)]
pub type dmm_memory_error_handler =
    Option<unsafe extern "C" fn(opaque: *mut c_void, error: *const dmm_memory_error) -> u32>;

/// The caller's handler and its argument.
pub(super) struct CHandler {
    cb: unsafe extern "C" fn(*mut c_void, *const dmm_memory_error) -> u32,
    opaque: *mut c_void,
}

// SAFETY: `dmm_vm_set_memory_error_handler`'s contract makes the handler
// and `opaque` usable from any thread; we only pass `opaque` back to it.
unsafe impl Send for CHandler {}
// SAFETY: as above; the handler is called from one thread at a time.
unsafe impl Sync for CHandler {}

impl CHandler {
    /// Wraps a C handler.
    ///
    /// # Safety
    /// `cb` may be called with `opaque` from another thread until the VM is
    /// freed or the handler replaced.
    pub(super) unsafe fn shared(
        cb: unsafe extern "C" fn(*mut c_void, *const dmm_memory_error) -> u32,
        opaque: *mut c_void,
    ) -> Arc<dyn MemoryErrorHandler> {
        Arc::new(CHandler { cb, opaque })
    }
}

impl MemoryErrorHandler for CHandler {
    fn memory_error(&self, err: &MemoryError) -> HandlerAnswer {
        let e = dmm_memory_error {
            offset: err.offset,
            length: err.len,
            thread_id: err.thread_id,
            reason: reason_code(err.reason),
        };
        // SAFETY: valid per `CHandler::shared`'s contract; `e` outlives the call.
        match unsafe { (self.cb)(self.opaque, &e) } {
            DMM_MEMORY_ERROR_POISON => HandlerAnswer::Poison,
            DMM_MEMORY_ERROR_INJECTED => HandlerAnswer::Injected,
            _ => HandlerAnswer::Stop,
        }
    }
}
