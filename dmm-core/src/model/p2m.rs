// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The P2M table: one byte of state per guest page, and the one ownership
//! protocol every change of state goes through.
//!
//! An entry is an `AtomicU8` holding a [`PageState`]. A page changes state
//! only in two steps by one owner: [`P2m::take`] moves it from the state the
//! owner expects to [`PageState::InFlight`] (a compare-and-swap: one winner)
//! and hands back an [`Owned`] token; [`Owned::settle`] moves it out of
//! `InFlight` to where it ends up. Nobody but the holder of the token moves
//! an in-flight page, however long it takes: a fault, or a release (balloon,
//! free page report) that meets an owned page ([`P2m::claim`]), waits for the
//! settle ([`P2m::wait_settled`]) and looks again. The side data of a page (its
//! swap slot here, the reverse map, the CLOCK bits, abort requests) changes
//! only while its owner holds it. Swap slot numbers live in a separate
//! sparse map (only swapped pages have one): 1 byte per page plus about 40
//! bytes per swapped page.
//!
//! What a page may become, from what it was when taken (anything else is
//! [`Error::IllegalTransition`] and changes nothing; settling back to the
//! state taken from is always allowed: nothing happened):
//!
//! | from | to | why |
//! |---|---|---|
//! | Unpopulated | Resident | demand fill |
//! | Unpopulated | Ballooned, Reported | guest gives up a page it never touched (no host memory to free) |
//! | Resident | Ballooned, Reported | release: the guest gave the page up; it is hole-punched |
//! | Resident | Swapped, Zero | swap-out, zero reclaim |
//! | Resident | Unpopulated | the page was removed behind us (`UFFD_EVENT_REMOVE`) |
//! | Ballooned, Reported, Zero | Unpopulated | guest takes the page back (balloon deflate) |
//! | Ballooned, Reported, Zero | Resident | demand fill, or found populated by someone else (a device process) |
//! | Reported, Zero | Ballooned | the balloon takes a page the guest had reported free / a zero page |
//! | Zero | Reported | the guest reports a reclaimed zero page free |
//! | Swapped | Resident | swap-in |
//! | Swapped | Ballooned, Reported | the guest gives up a swapped page: its slot is freed |
//! | Swapped | Poisoned | a swap-in found the content lost; the guest is told (`policy/poison.rs`) |
//! | Poisoned | Unpopulated | cleared: the guest was reset |
//! | Poisoned | Ballooned, Reported | the guest gives up a poisoned page: it is cleared |

use std::collections::BTreeMap;
use std::time::Duration;

use crate::sync::atomic::{fence, AtomicU8, AtomicUsize, Ordering};
use crate::sync::time::Instant;
use crate::sync::{Condvar, Mutex, MutexGuard};

use super::pool::Counts;
use super::PageState;
use crate::{Error, Result};

/// How long one wait for an in-flight page lasts before looking again.
pub const SETTLE_WAIT: Duration = Duration::from_secs(1);

/// True when a page taken from `from` may be settled to `to`.
pub const fn allowed(from: PageState, to: PageState) -> bool {
    use PageState::*;
    if matches!(from, InFlight) || matches!(to, InFlight) {
        return false;
    }
    if from as u8 == to as u8 {
        return true;
    }
    matches!(
        (from, to),
        (Unpopulated, Resident | Ballooned | Reported)
            | (
                Resident,
                Ballooned | Reported | Swapped | Zero | Unpopulated
            )
            | (Ballooned | Reported | Zero, Unpopulated | Resident)
            | (Reported | Zero, Ballooned)
            | (Zero, Reported)
            | (Swapped, Resident | Ballooned | Reported | Poisoned)
            | (Poisoned, Unpopulated | Ballooned | Reported)
    )
}

/// The P2M table of one VM.
#[derive(Debug)]
pub struct P2m {
    states: Box<[AtomicU8]>,
    counts: Counts,
    swap_slots: Mutex<BTreeMap<u64, u64>>,
    settle: Settle,
}

/// Wakes threads waiting for an in-flight page to settle.
#[derive(Debug, Default)]
struct Settle {
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

/// A page the holder moved to `InFlight` and alone moves out of it
/// ([`Owned::settle`]). Dropping it unsettled is a bug: it is logged and the
/// page goes back to the state it was taken from.
#[derive(Debug)]
#[must_use = "an owned page must be settled"]
pub struct Owned<'a> {
    p2m: &'a P2m,
    pfn: u64,
    from: PageState,
    settled: bool,
}

/// What [`P2m::claim`] did.
#[derive(Debug)]
pub enum Claim<'a> {
    /// The caller owns the page now (taken from [`Owned::from`]).
    Taken(Owned<'a>),
    /// Another thread owns the page: wait for its settle
    /// ([`P2m::wait_settled`]) and claim again.
    Busy,
    /// The page is already in the wanted state, or may not become it; its state.
    Ignored(PageState),
}

impl P2m {
    /// A table of `pages` entries, all [`PageState::Unpopulated`].
    pub fn new(pages: u64) -> Self {
        let states = (0..pages)
            .map(|_| AtomicU8::new(PageState::Unpopulated as u8))
            .collect();
        let counts = Counts::default();
        counts.add(PageState::Unpopulated, pages);
        P2m {
            states,
            counts,
            swap_slots: Mutex::new(BTreeMap::new()),
            settle: Settle::default(),
        }
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.states.len() as u64
    }

    /// Per-state page counts.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    fn entry(&self, pfn: u64) -> Result<&AtomicU8> {
        usize::try_from(pfn)
            .ok()
            .and_then(|i| self.states.get(i))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "pfn {pfn} outside guest RAM ({} pages)",
                    self.pages()
                ))
            })
    }

    /// State of `pfn`; an error names a pfn outside the table.
    pub fn get(&self, pfn: u64) -> Result<PageState> {
        let raw = self.entry(pfn)?.load(Ordering::SeqCst);
        // Only `take` and `settle` store, and they store only `PageState` values.
        Ok(PageState::from_u8(raw).unwrap_or(PageState::InFlight))
    }

    /// Takes `pfn` from state `from` (not `InFlight`): the caller owns it
    /// until it settles it. Fails with [`Error::IllegalTransition`] naming
    /// the real state when the page is not in `from`, and changes nothing.
    pub fn take(&self, pfn: u64, from: PageState) -> Result<Owned<'_>> {
        let entry = self.entry(pfn)?;
        if from == PageState::InFlight {
            return Err(Error::IllegalTransition {
                pfn,
                from,
                to: PageState::InFlight,
            });
        }
        match entry.compare_exchange(
            from as u8,
            PageState::InFlight as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => {
                // Counts move add-first: a reader may see a page twice, never
                // lose one (an InFlight count of 0 means nothing is in flight).
                self.counts.add(PageState::InFlight, 1);
                self.counts.sub(from, 1);
                Ok(Owned {
                    p2m: self,
                    pfn,
                    from,
                    settled: false,
                })
            }
            Err(cur) => Err(Error::IllegalTransition {
                pfn,
                from: PageState::from_u8(cur).unwrap_or(PageState::InFlight),
                to: PageState::InFlight,
            }),
        }
    }

    /// Takes `pfn` to move it to `to` (a release): from whatever state it is
    /// in, if the state machine allows it. A page owned by another thread is
    /// left to it ([`Claim::Busy`]): the caller waits for the settle and
    /// claims again, and never returns to the guest before it did the change
    /// (told its page is released, the guest may use it again at once).
    pub fn claim(&self, pfn: u64, to: PageState) -> Result<Claim<'_>> {
        loop {
            let state = self.get(pfn)?;
            if state == PageState::InFlight {
                return Ok(Claim::Busy);
            }
            if state == to || !allowed(state, to) {
                return Ok(Claim::Ignored(state));
            }
            match self.take(pfn, state) {
                Ok(owned) => return Ok(Claim::Taken(owned)),
                // It changed under us: look again.
                Err(Error::IllegalTransition { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn store_settled(&self, pfn: u64, to: PageState) {
        let Ok(entry) = self.entry(pfn) else {
            return;
        };
        // Counts move add-first here too, and the add comes before the
        // store: once the entry says `to`, another thread may take the page
        // and count it out of `to` (counted after the store, `to`'s count
        // went below zero for a moment: u64::MAX, an overflow in the policy
        // thread's `committed()`, seen in the 60 s stress test).
        self.counts.add(to, 1);
        // The owner is the only writer of an in-flight entry.
        let prev = entry.swap(to as u8, Ordering::SeqCst);
        debug_assert_eq!(
            prev,
            PageState::InFlight as u8,
            "pfn {pfn} settled while not in flight"
        );
        self.counts.sub(PageState::InFlight, 1);
        // State, then waiter count; a waiter does the reverse (see
        // `wait_settled`): one of the two sees the other's store. The
        // SeqCst accesses order this already; the fences say so in a form
        // loom models (it does not model SeqCst accesses).
        fence(Ordering::SeqCst);
        if self.settle.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.settle.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.settle.cv.notify_all();
        }
    }

    /// Waits up to `timeout` while `pfn` is in flight; returns its state then.
    pub fn wait_settled(&self, pfn: u64, timeout: Duration) -> Result<PageState> {
        let deadline = Instant::now() + timeout;
        self.settle.waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let mut guard = self.settle.lock.lock().unwrap_or_else(|p| p.into_inner());
        let state = loop {
            let state = self.get(pfn);
            let now = Instant::now();
            if !matches!(state, Ok(PageState::InFlight)) || now >= deadline {
                break state;
            }
            // Short waits bound the cost of a wake-up lost to the race
            // between the waiter count and the notify.
            let wait = (deadline - now).min(Duration::from_millis(5));
            guard = match self.settle.cv.wait_timeout(guard, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        };
        drop(guard);
        self.settle.waiters.fetch_sub(1, Ordering::SeqCst);
        state
    }

    /// States of `count` pages from `first`.
    pub fn snapshot(&self, first: u64, count: u64) -> Result<Vec<PageState>> {
        let end = first
            .checked_add(count)
            .filter(|&e| e <= self.pages())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "pages {first}+{count} outside guest RAM ({} pages)",
                    self.pages()
                ))
            })?;
        (first..end).map(|pfn| self.get(pfn)).collect()
    }

    /// The swap slot recorded for a page, if any (a look: only the page's
    /// owner changes it).
    pub fn swap_slot(&self, pfn: u64) -> Option<u64> {
        self.slots().get(&pfn).copied()
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<u64, u64>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.swap_slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of metadata this table holds (entries, counters, swap slots).
    pub fn metadata_bytes(&self) -> u64 {
        let slot_entry = 2 * std::mem::size_of::<u64>() as u64 + 24; // key, value, B-tree overhead
        self.pages() + std::mem::size_of::<Self>() as u64 + self.slots().len() as u64 * slot_entry
    }
}

impl Owned<'_> {
    /// The page.
    pub fn pfn(&self) -> u64 {
        self.pfn
    }

    /// The state it was taken from.
    pub fn from(&self) -> PageState {
        self.from
    }

    /// Records the swap slot of the page (before settling it Swapped).
    pub fn set_swap_slot(&self, slot: u64) {
        self.p2m.slots().insert(self.pfn, slot);
    }

    /// Removes and returns the swap slot of the page.
    pub fn take_swap_slot(&self) -> Option<u64> {
        self.p2m.slots().remove(&self.pfn)
    }

    /// Moves the page out of `InFlight` to `to` and wakes its waiters. A
    /// `to` the state machine does not allow from [`Owned::from`] is a bug:
    /// it is logged and the page goes back to where it came from.
    pub fn settle(mut self, to: PageState) {
        self.settled = true;
        let to = if allowed(self.from, to) {
            to
        } else {
            log::error!(
                "pfn {}: settle {:?} -> {to:?} is not allowed; back to {:?}",
                self.pfn,
                self.from,
                self.from
            );
            debug_assert!(false, "illegal settle {:?} -> {to:?}", self.from);
            self.from
        };
        self.p2m.store_settled(self.pfn, to);
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        if !self.settled {
            log::error!(
                "pfn {} dropped in flight (taken from {:?}); back to it",
                self.pfn,
                self.from
            );
            self.p2m.store_settled(self.pfn, self.from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PageState::*;

    #[test]
    fn take_settle_and_counts() {
        let p2m = P2m::new(4);
        let page = p2m.take(1, Unpopulated).unwrap();
        assert_eq!(p2m.get(1).unwrap(), InFlight);
        assert_eq!(p2m.counts().get(InFlight), 1);
        page.settle(Resident);
        assert_eq!(p2m.get(1).unwrap(), Resident);
        assert_eq!(p2m.counts().get(Resident), 1);
        assert_eq!(p2m.counts().get(Unpopulated), 3);
    }

    #[test]
    fn wrong_state_changes_nothing() {
        let p2m = P2m::new(2);
        // Wrong expected state: the error names the real one.
        let e = p2m.take(0, Resident).unwrap_err();
        assert!(matches!(
            e,
            Error::IllegalTransition {
                pfn: 0,
                from: Unpopulated,
                ..
            }
        ));
        assert!(p2m.take(0, InFlight).is_err());
        assert!(p2m.take(2, Unpopulated).is_err());
        let page = p2m.take(0, Unpopulated).unwrap();
        // Only one owner.
        assert!(p2m.take(0, Unpopulated).is_err());
        page.settle(Unpopulated);
        assert_eq!(p2m.get(0).unwrap(), Unpopulated);
        assert_eq!(p2m.counts().get(Unpopulated), 2);
    }

    #[test]
    fn a_release_leaves_an_owned_page_to_its_owner() {
        let p2m = P2m::new(2);
        let page = p2m.take(1, Unpopulated).unwrap();
        assert!(matches!(p2m.claim(1, Ballooned).unwrap(), Claim::Busy));
        assert_eq!(p2m.get(1).unwrap(), InFlight);
        page.settle(Resident);
        match p2m.claim(1, Ballooned).unwrap() {
            Claim::Taken(page) => page.settle(Ballooned),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p2m.claim(1, Ballooned).unwrap(),
            Claim::Ignored(Ballooned)
        ));
        // A balloon claim is not undone by a report.
        assert!(matches!(
            p2m.claim(1, Reported).unwrap(),
            Claim::Ignored(Ballooned)
        ));
    }

    #[test]
    fn a_dropped_page_goes_back() {
        let p2m = P2m::new(1);
        drop(p2m.take(0, Unpopulated).unwrap());
        assert_eq!(p2m.get(0).unwrap(), Unpopulated);
        assert_eq!(p2m.counts().get(InFlight), 0);
    }
}
