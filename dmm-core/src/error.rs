// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate's error type. Each variant maps to one stable C error code.

use std::io;

/// Errors of dmm-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller-supplied value is wrong; the message names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The host cannot do what was asked (no hugepages, no uffd write-protect, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An operating-system call failed.
    #[error("{op}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A P2M transition that the state machine does not allow.
    #[error("illegal transition of pfn {pfn}: {from:?} -> {to:?}")]
    IllegalTransition {
        /// Page frame number.
        pfn: u64,
        /// Current state.
        from: crate::model::PageState,
        /// Requested state.
        to: crate::model::PageState,
    },
    /// The swap store is full.
    #[error("swap store full ({slots} slots)")]
    SwapFull {
        /// Capacity in slots.
        slots: u64,
    },
    /// A swap slot does not hold what was stored there (its data fails to
    /// decompress or its content hash): the guest page is lost.
    #[error("swap slot {slot} is corrupt: {reason}")]
    SwapCorrupt {
        /// Slot id.
        slot: u64,
        /// What check failed.
        reason: String,
    },
    /// An access hit a page whose content was lost (a memory error; the
    /// simulation's answer to what is SIGBUS `BUS_MCEERR_AR` on Linux).
    #[error("memory error at guest page 0x{gpa:x}: its content was lost")]
    MemoryError {
        /// Offset of the page in guest RAM.
        gpa: u64,
    },
    /// The object is shut down or not attached yet.
    #[error("bad state: {0}")]
    State(String),
}

impl Error {
    /// Wraps the current errno.
    pub fn last_os(op: &'static str) -> Self {
        Error::Os {
            op,
            source: io::Error::last_os_error(),
        }
    }
}

/// Stops the process: DMM cannot keep its promise for a guest page and
/// there is no error it can hand the guest. Fail-stop, never a silent
/// zero page and never a hung vCPU; the message names the page.
pub(crate) fn fail_stop(what: &str) -> ! {
    log::error!("fatal: {what}; stopping the process");
    // Also when the logger is off: the operator must see why the VM died.
    eprintln!("libdmm: fatal: {what}; stopping the process (fail-stop)");
    std::process::abort()
}

/// Result alias of dmm-core.
pub type Result<T> = std::result::Result<T, Error>;
