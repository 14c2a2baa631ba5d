// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Releasing pages the guest gave up (balloon inflate, free page reports):
//! each page is taken ([`crate::model::p2m::P2m::claim`]), its side data
//! dropped (zero-page and swap-slot entries of the reverse map, the slot
//! itself), hole-punched and settled Ballooned or Reported. A page another
//! thread owns (being filled, evicted, swapped in) is not taken from it: the
//! release waits for the owner's settle and claims it again. Either way the
//! release is done when [`release`] returns: the guest hears back only then,
//! and may use a reported page again at once.

use super::{Counters, Ctx};
use crate::mech::runs;
use crate::model::p2m::{Claim, Owned, SETTLE_WAIT};
use crate::model::{Backing, PageState};
use crate::{Error, Result};

/// What a release did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Pages released.
    pub pages: u64,
    /// Pages another thread owned when the release met them (waited for).
    pub waited: u64,
    /// Of `pages`, those that were resident (host memory given back).
    pub resident: u64,
    /// Pages already in the wanted state, or that may not become it.
    pub ignored: u64,
}

/// Releases `pfns` (ascending, inside guest RAM) to `to`: Ballooned or Reported.
pub fn release(
    ctx: &Ctx<'_>,
    pfns: impl IntoIterator<Item = u64>,
    to: PageState,
) -> Result<Released> {
    debug_assert!(matches!(to, PageState::Ballooned | PageState::Reported));
    let mut out = Released::default();
    let mut owned: Vec<Owned<'_>> = Vec::new();
    let mut busy = Vec::new();
    for pfn in pfns {
        match ctx.p2m.claim(pfn, to)? {
            Claim::Taken(page) => owned.push(page),
            Claim::Busy => busy.push(pfn),
            Claim::Ignored(_) => out.ignored += 1,
        }
    }
    let mut failure = give_up(ctx, owned, to, &mut out);
    // Owning nothing now (so no owner can be waiting on us), wait for each
    // busy page's owner and claim the page again.
    out.waited = busy.len() as u64;
    Counters::add(&ctx.counters.release_waits, out.waited);
    for pfn in busy {
        let mut waits = 0u64;
        loop {
            if ctx.p2m.wait_settled(pfn, SETTLE_WAIT)? == PageState::InFlight {
                waits += 1;
                log::warn!("release of pfn {pfn}: its owner has held it for {waits} s");
                continue;
            }
            match ctx.p2m.claim(pfn, to)? {
                Claim::Taken(page) => {
                    failure = give_up(ctx, vec![page], to, &mut out).or(failure);
                    break;
                }
                // Taken again by another owner: wait for that one too.
                Claim::Busy => {}
                Claim::Ignored(_) => {
                    out.ignored += 1;
                    break;
                }
            }
        }
    }
    let counter = if to == PageState::Ballooned {
        &ctx.counters.reclaimed_balloon_bytes
    } else {
        &ctx.counters.reclaimed_report_bytes
    };
    Counters::add(counter, out.resident * ctx.mech.page_size());
    match failure {
        Some(e) if out.pages == 0 => Err(e),
        _ => Ok(out),
    }
}

/// Punches the owned pages `owned` (ascending), drops their side data and
/// settles them `to`; counts them in `out`. Punches every page first,
/// whatever its state: a device process may have populated it without
/// faulting through us. A page whose punch failed keeps its content and its
/// state; the first failure is returned.
fn give_up(
    ctx: &Ctx<'_>,
    owned: Vec<Owned<'_>>,
    to: PageState,
    out: &mut Released,
) -> Option<Error> {
    let mut failure = None;
    let mut punched = vec![true; owned.len()];
    let mut idx = 0;
    for (first, count) in runs(owned.iter().map(Owned::pfn)) {
        if let Err(e) = ctx.mech.punch(first, count) {
            log::error!("release: punch of pages {first}+{count}: {e}");
            punched[idx..idx + count as usize].fill(false);
            failure = Some(e);
        }
        idx += count as usize;
    }
    for (page, punched) in owned.into_iter().zip(punched) {
        if !punched {
            out.ignored += 1;
            let from = page.from();
            ctx.settle(page, from);
            continue;
        }
        match page.from() {
            PageState::Zero => {
                ctx.rmap.remove(Backing::ZeroPage, page.pfn());
            }
            PageState::Swapped => drop_slot(ctx, &page),
            PageState::Poisoned => {
                // Usable again: its poison goes (the punch keeps it).
                if let Err(e) = super::poison::forget(ctx, &page) {
                    log::error!("release of poisoned pfn {}: {e}", page.pfn());
                }
            }
            _ => {}
        }
        out.resident += u64::from(page.from() == PageState::Resident);
        out.pages += 1;
        ctx.clock.forget(page.pfn());
        ctx.settle(page, to);
    }
    failure
}

/// Forgets the stored copy of an owned swapped page.
pub(crate) fn drop_slot(ctx: &Ctx<'_>, page: &Owned<'_>) {
    if let Some(slot) = page.take_swap_slot() {
        ctx.rmap.remove(Backing::SwapSlot(slot), page.pfn());
        if let Some(store) = ctx.store {
            store.release(slot);
        }
    }
}

/// Pages a take-back fills per batch (owned at once: a guest fault on one
/// of them waits for the batch, about a millisecond).
const TAKE_BACK_BATCH: usize = 512;

/// Takes back pages the guest reclaims (balloon deflate): Ballooned,
/// Reported and Zero pages are the guest's again. With `fill`, as many as
/// the pool has room for are populated now (zero-filled, settled Resident:
/// the guest's touch costs what a touch of its own memory costs, no round
/// trip); the others become Unpopulated (filled on the next touch). Pages in
/// other states are left and counted; a page another thread owns is waited
/// for (one wait of up to a second), then looked at again. Returns (pages
/// taken back, pages ignored).
///
/// Why `UFFDIO_ZEROPAGE` (the mechanism's `fill_zero`) over each run,
/// measured on 6.18 (`tests/linux_reuse.rs`, `populate_costs`): it and
/// `fallocate` cost about the same to populate (both allocate and clear
/// the pages), but ZEROPAGE also maps them in our (QEMU's) mapping, so the
/// guest's first touch takes no fault at all under TCG, and KVM's stage-2
/// fault finds the page table entry at once; after `fallocate` every page
/// still takes a minor fault in the kernel, and a page the CLOCK hand had
/// write-protected before the balloon took it keeps its uffd-wp marker, so
/// its first write is a round trip to the fault thread (ZEROPAGE replaces
/// the marker). `MADV_POPULATE_WRITE` on the registered mapping would raise
/// a userfault per page: the round trip this avoids.
pub fn take_back(
    ctx: &Ctx<'_>,
    pfns: impl IntoIterator<Item = u64>,
    fill: bool,
) -> Result<(u64, u64)> {
    let (mut back, mut ignored) = (0, 0);
    let mut batch: Vec<Owned<'_>> = Vec::new();
    for pfn in pfns {
        // Like a release, a take-back owns nothing while it waits for the
        // owner of a busy page (a write-protect fault still opening a page
        // the guest just ballooned), so it is never dropped for being early.
        let state = match ctx.p2m.get(pfn)? {
            PageState::InFlight => {
                back += settle_back(ctx, std::mem::take(&mut batch), fill);
                ctx.p2m.wait_settled(pfn, SETTLE_WAIT)?
            }
            s => s,
        };
        if !matches!(
            state,
            PageState::Ballooned | PageState::Reported | PageState::Zero
        ) {
            ignored += 1;
            continue;
        }
        match ctx.p2m.take(pfn, state) {
            Ok(page) => {
                if state == PageState::Zero {
                    ctx.rmap.remove(Backing::ZeroPage, pfn);
                }
                batch.push(page);
                if batch.len() >= TAKE_BACK_BATCH {
                    back += settle_back(ctx, std::mem::take(&mut batch), fill);
                }
            }
            Err(Error::IllegalTransition { .. }) => ignored += 1,
            Err(e) => {
                settle_back(ctx, batch, fill);
                return Err(e);
            }
        }
    }
    back += settle_back(ctx, batch, fill);
    Ok((back, ignored))
}

/// Settles taken-back pages: with `fill`, the first ones the pool has room
/// for are zero-filled and settled Resident, the rest Unpopulated. Returns
/// the pages settled.
fn settle_back(ctx: &Ctx<'_>, batch: Vec<Owned<'_>>, fill: bool) -> u64 {
    let n = batch.len() as u64;
    if n == 0 {
        return 0;
    }
    // The batch is in flight, so it counts as committed already.
    let committed = ctx.p2m.counts().committed().saturating_sub(n);
    let room = if fill {
        ctx.pool.size_pages().saturating_sub(committed).min(n)
    } else {
        0
    };
    let mut filled = vec![false; batch.len()];
    let mut idx = 0;
    let to_fill = &batch[..room as usize];
    let mut woken = Vec::new();
    for (first, count) in runs(to_fill.iter().map(Owned::pfn)) {
        match ctx.mech.fill_zero(first, count) {
            Ok(()) => {
                filled[idx..idx + count as usize].fill(true);
                woken.push((first, count));
            }
            // The pages stay for demand paging.
            Err(e) => log::warn!("take-back: populating pages {first}+{count}: {e}"),
        }
        idx += count as usize;
    }
    let mut done = 0;
    for (page, filled) in batch.into_iter().zip(filled) {
        ctx.clock.forget(page.pfn());
        if filled {
            done += 1;
            ctx.settle(page, PageState::Resident);
        } else {
            ctx.settle(page, PageState::Unpopulated);
        }
    }
    Counters::add(&ctx.counters.take_back_fills, done);
    // A thread that faulted on a page meanwhile (it waited for the settle)
    // can go on.
    for (first, count) in woken {
        if let Err(e) = ctx.mech.wake(first, count) {
            log::warn!("take-back: waking pages {first}+{count}: {e}");
        }
    }
    n
}
