// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Stable result codes, the thread-local last error, and the panic guard
//! every entry point runs in.

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::thread::panic_message;
use crate::Error;

/// Result of every fallible `dmm_*` call. The numeric values are stable.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dmm_result {
    /// Success.
    DMM_OK = 0,
    /// A value is wrong; `dmm_last_error()` names it.
    DMM_ERR_INVALID_ARGUMENT = 1,
    /// The host lacks a feature (hugepages, uffd write-protect, ...).
    DMM_ERR_UNSUPPORTED = 2,
    /// A system call failed.
    DMM_ERR_OS = 3,
    /// Not attached, already attached, or shut down.
    DMM_ERR_STATE = 4,
    /// A required pointer was NULL.
    DMM_ERR_NULL = 5,
    /// The swap store is full.
    DMM_ERR_SWAP_FULL = 6,
    /// The P2M state machine refused a transition.
    DMM_ERR_ILLEGAL_TRANSITION = 7,
    /// A struct size libdmm does not know (`dmm_vm_get_stats`: not a whole
    /// number of fields, or out of range); `dmm_last_error()` names it.
    DMM_ERR_STRUCT_SIZE = 8,
    /// A bug: a panic was caught at the boundary.
    DMM_ERR_PANIC = 99,
}

impl dmm_result {
    /// Static NUL-terminated description.
    pub(crate) fn as_cstr(self) -> &'static CStr {
        match self {
            dmm_result::DMM_OK => c"ok",
            dmm_result::DMM_ERR_INVALID_ARGUMENT => c"invalid argument",
            dmm_result::DMM_ERR_UNSUPPORTED => c"unsupported",
            dmm_result::DMM_ERR_OS => c"operating-system error",
            dmm_result::DMM_ERR_STATE => c"bad state",
            dmm_result::DMM_ERR_NULL => c"NULL pointer",
            dmm_result::DMM_ERR_SWAP_FULL => c"swap store full",
            dmm_result::DMM_ERR_ILLEGAL_TRANSITION => c"illegal page-state transition",
            dmm_result::DMM_ERR_STRUCT_SIZE => c"unknown struct size",
            dmm_result::DMM_ERR_PANIC => c"internal error (panic)",
        }
    }
}

impl From<&Error> for dmm_result {
    fn from(e: &Error) -> Self {
        match e {
            Error::InvalidArgument(_) => dmm_result::DMM_ERR_INVALID_ARGUMENT,
            Error::Unsupported(_) => dmm_result::DMM_ERR_UNSUPPORTED,
            // Like EIO from a disk: the data read back is not what was written.
            Error::Os { .. } | Error::SwapCorrupt { .. } => dmm_result::DMM_ERR_OS,
            Error::State(_) => dmm_result::DMM_ERR_STATE,
            Error::SwapFull { .. } => dmm_result::DMM_ERR_SWAP_FULL,
            Error::IllegalTransition { .. } => dmm_result::DMM_ERR_ILLEGAL_TRANSITION,
        }
    }
}

/// An error at the boundary: a code plus the text `dmm_last_error` returns.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) code: dmm_result,
    pub(crate) message: String,
}

impl FfiError {
    /// A required pointer argument was NULL.
    pub(crate) fn null(arg: &str) -> Self {
        FfiError {
            code: dmm_result::DMM_ERR_NULL,
            message: format!("{arg} is NULL"),
        }
    }

    /// A value is wrong; `message` names it.
    pub(crate) fn invalid(message: String) -> Self {
        FfiError {
            code: dmm_result::DMM_ERR_INVALID_ARGUMENT,
            message,
        }
    }

    /// A struct size libdmm does not know; `message` names it.
    pub(crate) fn struct_size(message: String) -> Self {
        FfiError {
            code: dmm_result::DMM_ERR_STRUCT_SIZE,
            message,
        }
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        FfiError {
            code: dmm_result::from(&e),
            message: e.to_string(),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `message` as this thread's last error.
pub(crate) fn set_last_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// Runs `f` with this thread's last error text.
pub(crate) fn with_last_error<R>(f: impl FnOnce(&str) -> R) -> R {
    LAST_ERROR.with(|e| f(&e.borrow()))
}

/// Runs one entry point: clears the last error, catches panics, and turns
/// an error into its code with the message stored as the last error.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), FfiError>) -> dmm_result {
    set_last_error(String::new());
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => dmm_result::DMM_OK,
        Ok(Err(e)) => {
            set_last_error(e.message);
            e.code
        }
        Err(payload) => {
            set_last_error(format!("panic: {}", panic_message(payload.as_ref())));
            dmm_result::DMM_ERR_PANIC
        }
    }
}

/// Like [`guard`] for entry points without a result code (`void`, sizes):
/// a panic is recorded as the last error and `fallback` returned.
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(format!("panic: {}", panic_message(payload.as_ref())));
            fallback
        }
    }
}

/// Reads an optional C string argument as UTF-8; the error names `field`.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
pub(crate) unsafe fn opt_str<'a>(
    p: *const c_char,
    field: &str,
) -> Result<Option<&'a str>, FfiError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: `p` is non-NULL and, by this function's contract, NUL-terminated and live.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(Some).map_err(|e| {
        FfiError::invalid(format!(
            "{field} is not valid UTF-8 ({e}): {}",
            s.to_string_lossy()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_becomes_panic_code_with_message() {
        let r = guard(|| panic!("boom at the boundary"));
        assert_eq!(r, dmm_result::DMM_ERR_PANIC);
        with_last_error(|e| assert!(e.contains("boom at the boundary"), "{e}"));
        let v = guard_value(7, || -> i32 { panic!("{}", String::from("owned payload")) });
        assert_eq!(v, 7);
        with_last_error(|e| assert!(e.contains("owned payload"), "{e}"));
    }

    #[test]
    fn errors_map_to_stable_codes() {
        let os = Error::Os {
            op: "x",
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(dmm_result::from(&os), dmm_result::DMM_ERR_OS);
        assert_eq!(
            dmm_result::from(&Error::SwapFull { slots: 1 }),
            dmm_result::DMM_ERR_SWAP_FULL
        );
        assert_eq!(
            guard(|| Err(Error::State("s".into()).into())),
            dmm_result::DMM_ERR_STATE
        );
        with_last_error(|e| assert_eq!(e, "bad state: s"));
        assert_eq!(guard(|| Ok(())), dmm_result::DMM_OK);
        with_last_error(|e| assert_eq!(e, ""));
    }
}
