// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Taking resident pages out without losing a write: the one routine behind
//! swap-out and zero reclaim.
//!
//! 1. Resident -> InFlight in the P2M (pinned pages are skipped).
//! 2. Write-protect the pages (uffd-wp, in runs). From here a writer blocks
//!    in a write-protect fault; the fault thread asks for the page back
//!    ([`super::Aborts`]) and waits for it to settle.
//! 3. Copy the pages out (`pread` of the memfd: never faults, never allocates).
//! 4. Each page: all zeros -> Zero (Reported for a block the guest hinted
//!    free); else (swap) into the store; store full, not-zero under
//!    zero-only or hinted reclaim, or asked back by a writer -> stays.
//! 5. Punch the pages that go, then InFlight -> Swapped/Zero/Reported. A
//!    writer woken now faults MISSING and gets the stored copy back. With a
//!    device process attached (its writes are not write-protected), each
//!    page's content at the punch is taken ([`crate::mech::Mechanism::punch_read`])
//!    and a page written since its copy is decided again from it (stored,
//!    or installed back and kept).
//! 6. Unprotect the pages that stay (wakes their writers), InFlight -> Resident.

use super::poison::{self, MemoryErrorReason};
use super::{Counters, Ctx};
use crate::mech::runs;
use crate::model::p2m::Owned;
use crate::model::{Backing, PageState};
use crate::swap::SwapStore;
use crate::{Error, Result};

/// Pages handled per batch (2 MiB of 4 KiB pages): bounds how long a writer
/// can wait on a write-protected page.
pub const BATCH: usize = 512;
/// Bytes handled per batch at most (hugetlb pages: 8 per batch).
pub const BATCH_BYTES: u64 = 16 << 20;

/// Pages per batch for pages of `page_size` bytes.
pub fn batch_pages(page_size: u64) -> usize {
    usize::try_from(BATCH_BYTES / page_size.max(1))
        .unwrap_or(BATCH)
        .clamp(1, BATCH)
}

/// Where evicted pages go.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Zero pages become Zero, others go to the store.
    Swap(&'a SwapStore),
    /// Only zero pages go (as Zero); others stay resident.
    ZeroOnly,
    /// Pages of a block the guest hinted free: zero pages go as Reported
    /// (free guest memory that reads as zeros, [`super::hint`]); others stay.
    Hinted,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Pages now in the swap store.
    pub swapped: u64,
    /// Pages now Zero.
    pub zeroed: u64,
    /// Hinted pages now Reported.
    pub hinted: u64,
    /// Pages asked back by a writer.
    pub aborted: u64,
    /// Pages kept because the store was full.
    pub full: u64,
}

impl Evicted {
    /// Pages that left the pool.
    pub fn freed(&self) -> u64 {
        self.swapped + self.zeroed + self.hinted
    }
}

/// True when `data` is all zero bytes (64-byte blocks OR-ed as u64 words:
/// no branch per word, close to memory speed).
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for b in &mut blocks {
        let mut acc = 0u64;
        for w in b.chunks_exact(8) {
            let mut x = [0u8; 8];
            x.copy_from_slice(w);
            acc |= u64::from_ne_bytes(x);
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// What happens to one taken page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Zero,
    Free,
    Swap(u64),
}

/// Evicts the resident pages among `candidates` (ascending, at most
/// [`BATCH`]) to `target`. Pages not resident or pinned are skipped. Every
/// page taken is settled before this returns, whatever fails.
pub fn evict(ctx: &Ctx<'_>, candidates: &[u64], target: Target<'_>) -> Result<Evicted> {
    if !ctx.mech.can_write_protect() {
        return Err(Error::Unsupported(
            "reclaiming resident pages needs userfaultfd write-protect (not attached or not offered)"
                .into(),
        ));
    }
    let batch = batch_pages(ctx.mech.page_size());
    let mut taken: Vec<Owned<'_>> = Vec::with_capacity(candidates.len().min(batch));
    for &pfn in candidates.iter().take(batch) {
        if ctx.pins.contains(pfn) {
            continue;
        }
        if let Ok(page) = ctx.p2m.take(pfn, PageState::Resident) {
            taken.push(page);
        }
    }
    if taken.is_empty() {
        return Ok(Evicted::default());
    }
    let mut out = Evicted::default();
    let (fates, failure) = decide(ctx, &taken, target, &mut out);
    let mut kept = Vec::new();
    for (page, fate) in taken.into_iter().zip(fates) {
        // Gone or open again: the hand armed it no longer.
        ctx.clock.forget(page.pfn());
        match fate {
            Fate::Keep => kept.push(page),
            Fate::Zero => {
                ctx.rmap.add(Backing::ZeroPage, page.pfn());
                ctx.settle(page, PageState::Zero);
                out.zeroed += 1;
            }
            Fate::Free => {
                ctx.settle(page, PageState::Reported);
                out.hinted += 1;
            }
            Fate::Swap(slot) => {
                page.set_swap_slot(slot);
                ctx.rmap.add(Backing::SwapSlot(slot), page.pfn());
                ctx.settle(page, PageState::Swapped);
                out.swapped += 1;
            }
        }
    }
    for (first, count) in runs(kept.iter().map(Owned::pfn)) {
        if let Err(e) = ctx.mech.write_protect(first, count, false) {
            log::error!("unprotect of pages {first}+{count}: {e}");
        }
    }
    for page in kept {
        ctx.settle(page, PageState::Resident);
    }
    let page = ctx.mech.page_size();
    Counters::add(&ctx.counters.swap_outs, out.swapped);
    Counters::add(&ctx.counters.reclaimed_swap_bytes, out.swapped * page);
    Counters::add(&ctx.counters.reclaimed_zero_bytes, out.zeroed * page);
    Counters::add(&ctx.counters.reclaimed_hint_bytes, out.hinted * page);
    Counters::add(&ctx.counters.reclaim_aborts, out.aborted);
    Counters::add(&ctx.counters.swap_full, out.full);
    match failure {
        Some(e) if out.freed() == 0 => Err(e),
        Some(e) => {
            log::warn!("eviction batch stopped early: {e}");
            Ok(out)
        }
        None => Ok(out),
    }
}

/// Steps 2-5 for the owned pages `taken`: protect, copy, store, punch.
/// Returns each page's fate (a page is only `Zero` or `Swap` once punched)
/// and the first failure; on any failure the pages not yet punched stay.
fn decide(
    ctx: &Ctx<'_>,
    taken: &[Owned<'_>],
    target: Target<'_>,
    out: &mut Evicted,
) -> (Vec<Fate>, Option<Error>) {
    let mut fates = vec![Fate::Keep; taken.len()];
    let page_runs = runs(taken.iter().map(Owned::pfn));
    for &(first, count) in &page_runs {
        if let Err(e) = ctx.mech.write_protect(first, count, true) {
            // Every page is kept: the caller opens them all again.
            return (fates, Some(e));
        }
    }
    let ps = ctx.mech.page_size() as usize;
    // Every taken page's copy, in `taken`'s order.
    let mut copy = vec![0u8; taken.len() * ps];
    let mut idx = 0;
    let mut failure = None;
    'runs: for &(first, count) in &page_runs {
        let run = &mut copy[idx * ps..(idx + count as usize) * ps];
        if let Err(e) = ctx.mech.read_pages(first, count, run) {
            failure = Some(e);
            break;
        }
        for page in run.chunks_exact(ps) {
            match first_fate(page, target, out) {
                Ok(f) => fates[idx] = f,
                Err(e) => {
                    failure = Some(e);
                    break 'runs;
                }
            }
            idx += 1;
        }
    }
    // Writers that asked for their page back keep it; so does everything
    // after a failure.
    let pfns: Vec<u64> = taken.iter().map(Owned::pfn).collect();
    let asked = ctx.aborts.take_any(&pfns);
    for (pfn, fate) in pfns.iter().zip(fates.iter_mut()) {
        let back = asked.contains(pfn);
        if failure.is_some() || back {
            out.aborted += u64::from(back);
            keep(fate, target);
        }
    }
    let gone: Vec<u64> = pfns
        .iter()
        .zip(&fates)
        .filter(|(_, f)| **f != Fate::Keep)
        .map(|(p, _)| *p)
        .collect();
    // A device process writes through its own mapping, which
    // write protection does not cover: take each page's content at the punch.
    let devices = ctx.mech.devices() > 0;
    let mut at_punch = Vec::new();
    for (first, count) in runs(gone.iter().copied()) {
        let (done, err) = if devices {
            at_punch.resize(count as usize * ps, 0);
            ctx.mech.punch_read(first, count, &mut at_punch)
        } else {
            match ctx.mech.punch(first, count) {
                Ok(()) => (count, None),
                Err(e) => (0, Some(e)),
            }
        };
        if devices {
            for (i, now) in at_punch.chunks_exact(ps).take(done as usize).enumerate() {
                let pfn = first + i as u64;
                // `taken` is in ascending pfn order.
                let Ok(j) = pfns.binary_search(&pfn) else {
                    continue;
                };
                if now != &copy[j * ps..(j + 1) * ps] {
                    Counters::add(&ctx.counters.device_write_races, 1);
                    fates[j] = written_at_punch(ctx, pfn, now, fates[j], target, out);
                }
            }
        }
        if let Some(e) = err {
            // Nothing was lost: the pages not punched are still there; keep
            // them (those punched before keep their fate, their copy is
            // stored).
            for (pfn, fate) in pfns.iter().zip(fates.iter_mut()) {
                if *pfn >= first + done {
                    keep(fate, target);
                }
            }
            failure = Some(e);
            break;
        }
    }
    (fates, failure)
}

/// The fate of a page from its copy.
fn first_fate(page: &[u8], target: Target<'_>, out: &mut Evicted) -> Result<Fate> {
    if is_zero(page) {
        return Ok(match target {
            Target::Hinted => Fate::Free,
            _ => Fate::Zero,
        });
    }
    match target {
        Target::ZeroOnly | Target::Hinted => Ok(Fate::Keep),
        Target::Swap(store) => match store.store(page) {
            Ok(slot) => Ok(Fate::Swap(slot)),
            Err(Error::SwapFull { .. }) => {
                out.full += 1;
                Ok(Fate::Keep)
            }
            Err(e) => Err(e),
        },
    }
}

/// The punched page `pfn` held `now` at the punch, not its copy: a device
/// process wrote it in between. Its fate is decided again from `now`; a
/// page that cannot go is installed back with `now` (kept, resident).
fn written_at_punch(
    ctx: &Ctx<'_>,
    pfn: u64,
    now: &[u8],
    old: Fate,
    target: Target<'_>,
    out: &mut Evicted,
) -> Fate {
    let mut old = old;
    keep(&mut old, target);
    let mut scratch = Evicted::default();
    match first_fate(now, target, &mut scratch) {
        Ok(Fate::Keep) | Err(_) => {}
        Ok(f) => return f,
    }
    out.full += scratch.full;
    match ctx.mech.install(pfn, now) {
        Ok(true) => {}
        Ok(false) => {
            Counters::add(&ctx.counters.device_populated_conflicts, 1);
            log::warn!("pfn {pfn}: populated behind us after its punch; kept as it is");
        }
        Err(e) => crate::error::fail_stop(&format!(
            "guest page 0x{:x}, written by a device while it was evicted, cannot be \
             installed back: {e}",
            pfn * ctx.mech.page_size()
        )),
    }
    Fate::Keep
}

/// Turns a fate into Keep, freeing the slot it had.
fn keep(fate: &mut Fate, target: Target<'_>) {
    if let (Fate::Swap(slot), Target::Swap(store)) = (*fate, target) {
        store.release(slot);
    }
    *fate = Fate::Keep;
}

/// Swaps in the page `pfn` a fault asked for (a [`super::Policy::on_fault`]
/// of a Swapped page): read from the store, installed, woken. A page whose
/// copy is lost is poisoned ([`poison::content_lost`]).
pub fn swap_in(ctx: &Ctx<'_>, store: &SwapStore, pfn: u64) -> Result<()> {
    let page = ctx.p2m.take(pfn, PageState::Swapped)?;
    bring_back(ctx, store, page)
}

/// Swaps in the Swapped pages of `first..first + count` that nobody owns,
/// at most `room` of them, without a fault of their own (they count in
/// `swap_ins` and `swap_ins_ahead`). Returns the pages brought back. A page
/// that fails stays Swapped (or is poisoned, if its copy is lost) and is
/// left for its own fault.
pub fn swap_in_range(ctx: &Ctx<'_>, store: &SwapStore, first: u64, count: u64, room: u64) -> u64 {
    let end = first.saturating_add(count).min(ctx.p2m.pages());
    let mut back = 0;
    let mut buf = vec![0u8; ctx.mech.page_size() as usize];
    for p in first..end {
        if back >= room {
            break;
        }
        // A look first: a take of a page in another state is an error path.
        if ctx.p2m.get(p).ok() != Some(PageState::Swapped) {
            continue;
        }
        let Ok(page) = ctx.p2m.take(p, PageState::Swapped) else {
            continue;
        };
        match bring_back_into(ctx, store, page, &mut buf, true) {
            Ok(true) => {
                back += 1;
                Counters::add(&ctx.counters.swap_ins_ahead, 1);
            }
            Ok(false) => {}
            Err(e) => log::debug!("swap-in ahead of pfn {p}: {e}"),
        }
    }
    back
}

fn bring_back(ctx: &Ctx<'_>, store: &SwapStore, page: Owned<'_>) -> Result<()> {
    let mut buf = vec![0u8; ctx.mech.page_size() as usize];
    bring_back_into(ctx, store, page, &mut buf, false).map(|_| ())
}

/// Reads `page`'s copy into `buf`, installs it and settles the page
/// Resident (woken); Ok(false) when the copy was lost: the page is poisoned
/// (its own fault), or, `ahead` of any fault, left Swapped for the fault
/// that will tell the guest (a memory error belongs to the vCPU that
/// touches the page: QEMU stops a VM whose error names no vCPU).
fn bring_back_into(
    ctx: &Ctx<'_>,
    store: &SwapStore,
    page: Owned<'_>,
    buf: &mut [u8],
    ahead: bool,
) -> Result<bool> {
    let pfn = page.pfn();
    if ahead {
        let Some(slot) = page.take_swap_slot() else {
            ctx.settle(page, PageState::Swapped);
            return Ok(false);
        };
        if store.load_ahead(slot, buf).is_err() {
            page.set_swap_slot(slot);
            ctx.settle(page, PageState::Swapped);
            return Ok(false);
        }
        return install_back(ctx, store, page, slot, buf).map(|()| true);
    }
    let Some(slot) = page.take_swap_slot() else {
        let cause = Error::State(format!("swapped pfn {pfn} has no slot recorded"));
        return poison::content_lost(ctx, page, MemoryErrorReason::NoSlot, &cause).map(|()| false);
    };
    if let Err(e) = store.load(slot, buf) {
        let reason = match e {
            Error::SwapCorrupt { .. } => MemoryErrorReason::SlotCorrupt,
            Error::State(_) => MemoryErrorReason::NoSlot,
            _ => MemoryErrorReason::StoreReadError,
        };
        ctx.rmap.remove(Backing::SwapSlot(slot), pfn);
        store.release(slot);
        ctx.clock.forget(pfn);
        return poison::content_lost(ctx, page, reason, &e).map(|()| false);
    }
    install_back(ctx, store, page, slot, buf).map(|()| true)
}

/// Installs the copy of `page` read from `slot` and settles it Resident
/// (woken); on failure it stays Swapped with its slot.
fn install_back(
    ctx: &Ctx<'_>,
    store: &SwapStore,
    page: Owned<'_>,
    slot: u64,
    buf: &[u8],
) -> Result<()> {
    let pfn = page.pfn();
    match ctx.mech.install(pfn, buf) {
        Ok(fresh) => {
            if !fresh {
                Counters::add(&ctx.counters.device_populated_conflicts, 1);
                log::warn!("swap-in of pfn {pfn}: populated behind us (device process); kept");
            }
            ctx.rmap.remove(Backing::SwapSlot(slot), pfn);
            store.release(slot);
            ctx.clock.forget(pfn);
            ctx.settle(page, PageState::Resident);
            Counters::add(&ctx.counters.swap_ins, 1);
            ctx.mech.wake(pfn, 1)
        }
        Err(e) => {
            // Keep the copy: the next fault tries again.
            page.set_swap_slot(slot);
            ctx.settle(page, PageState::Swapped);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_check() {
        let mut p = vec![0u8; 4096];
        assert!(is_zero(&p));
        p[4095] = 1;
        assert!(!is_zero(&p));
        p[4095] = 0;
        p[0] = 0x80;
        assert!(!is_zero(&p));
        assert!(is_zero(&[0u8; 70]));
        let mut q = [0u8; 70];
        q[69] = 1;
        assert!(!is_zero(&q));
    }
}
