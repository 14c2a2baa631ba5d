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

/// Takes back pages the guest reclaims (balloon deflate): Ballooned,
/// Reported and Zero pages become Unpopulated (zero-filled on next touch).
/// Pages in other states are left and counted; a page another thread owns is
/// waited for (one wait of up to a second), then looked at again.
pub fn take_back(ctx: &Ctx<'_>, pfns: impl IntoIterator<Item = u64>) -> Result<(u64, u64)> {
    let (mut back, mut ignored) = (0, 0);
    for pfn in pfns {
        // Like a release, a take-back owns nothing while it waits for the
        // owner of a busy page (a write-protect fault still opening a page
        // the guest just ballooned), so it is never dropped for being early.
        let state = match ctx.p2m.get(pfn)? {
            PageState::InFlight => ctx.p2m.wait_settled(pfn, SETTLE_WAIT)?,
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
                ctx.settle(page, PageState::Unpopulated);
                back += 1;
            }
            Err(Error::IllegalTransition { .. }) => ignored += 1,
            Err(e) => return Err(e),
        }
    }
    Ok((back, ignored))
}
