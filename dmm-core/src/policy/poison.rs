// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory errors: a page whose content DMM cannot give back intact (a swap
//! slot that fails its check, a store read error, no slot recorded) becomes
//! an error the guest sees for that page alone, never zeros.
//!
//! One path, [`content_lost`], for every cause: count (`memory_errors`), log
//! at error level naming the page and the reason, then deliver:
//!
//! - By default (and under KVM) the page is poisoned ([`Mechanism::poison`],
//!   `UFFDIO_POISON`): the faulting thread gets SIGBUS `BUS_MCEERR_AR`, which
//!   KVM turns into a machine check for the guest.
//! - An embedder's [`MemoryErrorHandler`] (the C ABI's
//!   `dmm_vm_set_memory_error_handler`) is asked first, on the fault thread,
//!   with the faulting thread's id. It may queue the error to the guest
//!   itself (QEMU under TCG: a machine check on that vCPU, taken before its
//!   next translation block) and answer [`HandlerAnswer::Injected`]: then
//!   the page is filled with zeros and the faulter woken; or it answers
//!   [`HandlerAnswer::Stop`] (nothing can be told precisely: the process
//!   stops with a message naming the page).
//!
//! Then the page is settled [`PageState::Poisoned`] and a `memory-error`
//! event is emitted. A later fault on it delivers the error again
//! ([`refault`]). It is never reclaimed or filled; it is cleared (memory and
//! poison removed, [`forget`]) when the guest gives it up (a release) or
//! resets ([`clear_all`]). Where no error can be delivered (no `UFFDIO_POISON`, no
//! handler) the process stops: fail-stop, never a silent zero page.
//!
//! [`Mechanism::poison`]: crate::mech::Mechanism::poison

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};

use super::{Counters, Ctx};
use crate::error::fail_stop;
use crate::mech::faulting_thread;
use crate::model::p2m::Owned;
use crate::model::PageState;
use crate::vm::VmEvent;
use crate::{Error, Result};

/// Why a page's content is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryErrorReason {
    /// The swap slot does not give back what was stored (hash, decompression).
    SlotCorrupt,
    /// Reading the swap slot failed (EIO from the store's file).
    StoreReadError,
    /// The page is swapped but no slot is recorded for it.
    NoSlot,
    /// The page was poisoned before and is touched again.
    Poisoned,
}

impl MemoryErrorReason {
    /// The name used in events and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            MemoryErrorReason::SlotCorrupt => "slot-corrupt",
            MemoryErrorReason::StoreReadError => "store-read-error",
            MemoryErrorReason::NoSlot => "no-slot",
            MemoryErrorReason::Poisoned => "poisoned",
        }
    }
}

/// How the guest was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryErrorAction {
    /// The page was poisoned: the faulter got SIGBUS `BUS_MCEERR_AR` (KVM:
    /// a machine check in the guest).
    Poison,
    /// The embedder's handler queued the error to the guest; the page reads
    /// zeros until the guest takes it.
    Injected,
}

impl MemoryErrorAction {
    /// The name used in events and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            MemoryErrorAction::Poison => "poison",
            MemoryErrorAction::Injected => "injected",
        }
    }
}

/// A memory error, as an embedder's handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryError {
    /// Offset of the page in guest RAM (the memfd), what the control
    /// protocol calls `gpa`.
    pub offset: u64,
    /// Bytes (one page).
    pub len: u64,
    /// The faulting thread's id (Linux tid); 0 when unknown.
    pub thread_id: u32,
    /// Why the content is lost.
    pub reason: MemoryErrorReason,
}

/// What an embedder's handler did with a memory error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerAnswer {
    /// Poison the page (the default without a handler).
    Poison,
    /// The handler queued the error to the guest itself: fill the page with
    /// zeros and wake the faulter.
    Injected,
    /// The error cannot be delivered: stop the process.
    Stop,
}

/// Decides how a memory error reaches the guest. Called on the fault thread
/// while the faulter waits: it must not wait for anything a faulting thread
/// may hold (QEMU's BQL).
pub trait MemoryErrorHandler: Send + Sync {
    /// One memory error.
    fn memory_error(&self, err: &MemoryError) -> HandlerAnswer;
}

/// The memory errors of one VM: the handler and the poisoned pages.
#[derive(Default)]
pub struct MemoryErrors {
    handler: RwLock<Option<Arc<dyn MemoryErrorHandler>>>,
    /// Pages that went Poisoned (some may have been released since).
    poisoned: Mutex<BTreeSet<u64>>,
}

impl std::fmt::Debug for MemoryErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryErrors")
            .field("handler", &self.handler().is_some())
            .field("poisoned", &*self.poisoned())
            .finish()
    }
}

impl MemoryErrors {
    fn poisoned(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        // A set of pfns: a poisoned lock still holds usable values.
        self.poisoned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handler(&self) -> Option<Arc<dyn MemoryErrorHandler>> {
        self.handler
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets (or with `None` removes) the handler. A call of the old one
    /// under way finishes with its own `Arc`.
    pub fn set_handler(&self, handler: Option<Arc<dyn MemoryErrorHandler>>) {
        *self.handler.write().unwrap_or_else(|p| p.into_inner()) = handler;
    }

    /// The pfns recorded as poisoned.
    pub fn pages(&self) -> Vec<u64> {
        self.poisoned().iter().copied().collect()
    }
}

/// The content of the owned page `page` is lost because of `cause`: tells
/// the guest (see the module docs) and settles the page Poisoned with the
/// faulter woken. Returns only when the guest was told.
pub fn content_lost(
    ctx: &Ctx<'_>,
    page: Owned<'_>,
    reason: MemoryErrorReason,
    cause: &Error,
) -> Result<()> {
    let pfn = page.pfn();
    let ps = ctx.mech.page_size();
    let err = MemoryError {
        offset: pfn * ps,
        len: ps,
        thread_id: faulting_thread(),
        reason,
    };
    Counters::add(&ctx.counters.memory_errors, 1);
    log::error!(
        "memory error: guest page 0x{:x} lost ({}: {cause}); faulting thread {}",
        err.offset,
        reason.as_str(),
        err.thread_id
    );
    let answer = match ctx.memory_errors.handler() {
        Some(h) => h.memory_error(&err),
        None => HandlerAnswer::Poison,
    };
    let action = match answer {
        HandlerAnswer::Stop => fail_stop(&format!(
            "guest page 0x{:x} lost ({}) and the embedder cannot tell the guest (thread {})",
            err.offset,
            reason.as_str(),
            err.thread_id
        )),
        HandlerAnswer::Poison => {
            if !ctx.mech.can_poison() {
                fail_stop(&format!(
                    "guest page 0x{:x} lost ({}) and no way to tell the guest (no UFFDIO_POISON, \
                     Linux 6.6+, and no memory-error handler)",
                    err.offset,
                    reason.as_str()
                ));
            }
            if let Err(e) = ctx.mech.poison(pfn, 1) {
                fail_stop(&format!(
                    "guest page 0x{:x} lost ({}) and poisoning it failed: {e}",
                    err.offset,
                    reason.as_str()
                ));
            }
            MemoryErrorAction::Poison
        }
        HandlerAnswer::Injected => {
            // The guest takes the error before it can use what it reads.
            if let Err(e) = ctx.mech.fill_zero(pfn, 1) {
                fail_stop(&format!(
                    "guest page 0x{:x} lost ({}), error injected, but filling it failed: {e}",
                    err.offset,
                    reason.as_str()
                ));
            }
            MemoryErrorAction::Injected
        }
    };
    ctx.memory_errors.poisoned().insert(pfn);
    ctx.settle(page, PageState::Poisoned);
    ctx.events.emit(VmEvent::MemoryError {
        gpa: err.offset,
        len: err.len,
        reason,
        action,
        thread_id: err.thread_id,
    });
    ctx.mech.wake(pfn, 1)
}

/// A fault on the Poisoned page `pfn` (its poison was zapped behind us, or
/// the handler's zeros were punched): the error is delivered again.
pub fn refault(ctx: &Ctx<'_>, pfn: u64) -> Result<()> {
    let page = ctx.p2m.take(pfn, PageState::Poisoned)?;
    let cause = Error::State("a poisoned page was touched again".into());
    content_lost(ctx, page, MemoryErrorReason::Poisoned, &cause)
}

/// Removes the memory and poison of the owned Poisoned page (it is being
/// released or cleared).
pub fn forget(ctx: &Ctx<'_>, page: &Owned<'_>) -> Result<()> {
    ctx.mech.clear(page.pfn(), 1)?;
    ctx.memory_errors.poisoned().remove(&page.pfn());
    Ok(())
}

/// Clears every Poisoned page (the guest was reset): memory and poison
/// removed, back to Unpopulated. Returns the pages cleared.
pub fn clear_all(ctx: &Ctx<'_>) -> Result<u64> {
    let mut cleared = 0;
    for pfn in ctx.memory_errors.pages() {
        let page = match ctx.p2m.take(pfn, PageState::Poisoned) {
            Ok(page) => page,
            Err(Error::IllegalTransition { from, .. }) => {
                // Released since (cleared then), or being delivered again.
                if from != PageState::InFlight {
                    ctx.memory_errors.poisoned().remove(&pfn);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = forget(ctx, &page) {
            ctx.settle(page, PageState::Poisoned);
            return Err(e);
        }
        ctx.settle(page, PageState::Unpopulated);
        cleared += 1;
    }
    if cleared > 0 {
        log::info!("cleared {cleared} poisoned pages (guest reset)");
    }
    Ok(cleared)
}
