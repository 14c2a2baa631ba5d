// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Faults, as the mechanism's [`FaultSink`]: MISSING faults (demand fill,
//! swap-in, through the fault policies) and write-protect faults (a write
//! to a page being evicted, zero-checked or armed by the CLOCK hand).
//!
//! A fault on an in-flight page waits for its owner's settle and looks
//! again; a write-protect fault also asks the owner to give the page back
//! ([`crate::policy::Aborts`]). Every other answer takes the page first, so
//! no reclaim can start on it meanwhile. A write-protect fault always ends
//! with the page unprotected or gone: a fault that is answered without
//! progress would be raised again at once (a storm is a hang).

use super::engine::Engine;
use crate::mech::FaultSink;
use crate::model::p2m::SETTLE_WAIT;
use crate::model::{Backing, PageState};
use crate::policy::release::drop_slot;
use crate::policy::Counters;
use crate::{Error, Result};

impl Engine {
    /// A write hit the write-protected page `pfn`: wait while it is in flight
    /// (asking its owner to give it back), then make it writable. A page
    /// that is not resident is unprotected too: punched, it faults MISSING
    /// next; populated behind us (a device process), it is resident now.
    pub(super) fn handle_wp_fault(&self, pfn: u64) -> Result<()> {
        Counters::add(&self.counters.wp_faults, 1);
        let ctx = self.ctx();
        loop {
            let state = self.p2m.get(pfn)?;
            if state == PageState::InFlight {
                self.aborts.request(pfn);
                self.p2m.wait_settled(pfn, SETTLE_WAIT)?;
                continue;
            }
            let Ok(page) = self.p2m.take(pfn, state) else {
                continue;
            };
            self.aborts.clear(pfn);
            ctx.clock.forget(pfn);
            let to = if state != PageState::Resident && self.mech.is_populated(pfn) {
                self.found_populated(&page);
                PageState::Resident
            } else {
                state
            };
            // Unprotecting wakes the writer.
            let r = self.mech.write_protect(pfn, 1, false);
            ctx.settle(page, to);
            return r;
        }
    }

    /// An owned page we did not fill holds memory: a device process wrote
    /// or read it through its own mapping. Its content is kept (what a
    /// device wrote must not be overwritten) and its stored copy dropped;
    /// counted and logged, as a swap-in that finds the page populated is.
    fn found_populated(&self, page: &crate::model::p2m::Owned<'_>) {
        let ctx = self.ctx();
        match page.from() {
            PageState::Swapped => drop_slot(&ctx, page),
            PageState::Zero => {
                self.rmap.remove(Backing::ZeroPage, page.pfn());
            }
            _ => {}
        }
        Counters::add(&self.counters.device_populated_conflicts, 1);
        log::warn!(
            "pfn {} ({:?}) was populated behind us (device process); kept",
            page.pfn(),
            page.from()
        );
    }

    pub(super) fn handle_fault(&self, pfn: u64, write: bool) -> Result<()> {
        Counters::add(&self.counters.faults, 1);
        let ctx = self.ctx();
        loop {
            let state = self.p2m.get(pfn)?;
            match state {
                PageState::InFlight => {
                    self.p2m.wait_settled(pfn, SETTLE_WAIT)?;
                    continue;
                }
                // Missing although resident: a duplicate fault on a page just
                // filled, or a page removed behind us. Fill (or just wake),
                // owning it so no eviction punches it under the fill.
                PageState::Resident => {
                    let Ok(page) = self.p2m.take(pfn, state) else {
                        continue;
                    };
                    let r = self.mech.fill_zero(pfn, 1);
                    ctx.settle(page, PageState::Resident);
                    r?;
                    return self.mech.wake(pfn, 1);
                }
                PageState::Poisoned => return crate::policy::poison::refault(&ctx, pfn),
                _ => {}
            }
            let mut raced = false;
            for p in self.fault_policies() {
                match p.on_fault(&ctx, pfn, state, write) {
                    Ok(true) => {
                        if self.pool.excess(self.p2m.counts()) > 0 {
                            self.kick.kick(false);
                        }
                        return Ok(());
                    }
                    Ok(false) => {}
                    // The page changed state under us: look again.
                    Err(Error::IllegalTransition { pfn: p, .. }) if p == pfn => {
                        raced = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !raced {
                return Err(Error::Unsupported(format!(
                    "fault on pfn {pfn} in state {state:?}: no policy handles it"
                )));
            }
        }
    }

    /// `UFFD_EVENT_REMOVE`: `MADV_REMOVE` (QEMU's discard of shared RAM
    /// punches, then `MADV_DONTNEED`s) is about to drop these pages from the
    /// file. A lone `MADV_DONTNEED` on the shared mapping only unmaps them:
    /// then the P2M under-counts until the pages are released again, while
    /// `host_allocated_bytes` (from `st_blocks`) stays exact.
    fn handle_remove(&self, first: u64, count: u64) {
        let ctx = self.ctx();
        for pfn in first..first.saturating_add(count).min(self.p2m.pages()) {
            // Only resident pages lose memory; others have none to lose. An
            // owned page is its owner's: an eviction copying it stores what
            // is left.
            if let Ok(page) = self.p2m.take(pfn, PageState::Resident) {
                ctx.settle(page, PageState::Unpopulated);
            }
        }
    }
}

impl FaultSink for Engine {
    fn on_fault(&self, pfn: u64, write: bool) -> Result<()> {
        self.handle_fault(pfn, write)
    }

    fn on_wp_fault(&self, pfn: u64) -> Result<()> {
        self.handle_wp_fault(pfn)
    }

    fn on_remove(&self, first: u64, count: u64) {
        self.handle_remove(first, count);
    }

    fn on_ignored(&self) {
        Counters::add(&self.counters.ignored_requests, 1);
    }

    fn on_device_fault(&self, pfn: u64, write: bool) -> Result<bool> {
        Counters::add(&self.counters.device_faults, 1);
        // A lost page is the device's memory error: not delivered again
        // through QEMU's mapping (that is the vCPU's, when it touches it).
        if self.p2m.get(pfn)? == PageState::Poisoned {
            return Ok(false);
        }
        self.handle_fault(pfn, write)?;
        Ok(self.p2m.get(pfn)? != PageState::Poisoned)
    }
}
