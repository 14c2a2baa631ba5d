// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The P2M table: one byte of state per guest page, and the one state machine
//! every change of state goes through ([`P2m::transition`]).
//!
//! An entry is an `AtomicU8` holding a [`PageState`]; a transition is a
//! compare-and-swap from the expected state, so the fault thread, the policy
//! thread and the control socket change pages without a table lock. Swap slot
//! numbers live in a separate sparse map (only swapped pages have one). The
//! metadata cost is 1 byte per page plus about 40 bytes per swapped page.
//!
//! Allowed transitions (anything else is [`Error::IllegalTransition`] and
//! changes nothing):
//!
//! | from | to | why |
//! |---|---|---|
//! | Unpopulated | InFlight | demand fill starts (then InFlight -> Resident) |
//! | Unpopulated | Ballooned, Reported | guest gives up a page it never touched (no host memory to free) |
//! | Resident | Ballooned, Reported | release: the guest gave the page up; it is hole-punched |
//! | Resident | InFlight | swap-out or zero reclaim starts; refill of a page punched behind us |
//! | Resident | Unpopulated | the page was removed behind us (`UFFD_EVENT_REMOVE`) |
//! | Ballooned, Reported, Zero | Unpopulated | guest takes the page back (balloon deflate) |
//! | Ballooned, Reported, Zero | InFlight | guest touches it: demand fill starts |
//! | Ballooned, Reported, Zero | Resident | found populated by someone else (a device process) |
//! | Reported, Zero | Ballooned | the balloon takes a page the guest had reported free / a zero page |
//! | Zero | Reported | the guest reports a reclaimed zero page free |
//! | Swapped | InFlight | swap-in starts (then InFlight -> Resident) |
//! | Swapped | Ballooned, Reported | the guest gives up a swapped page: its slot is freed |
//! | InFlight | Resident | fill or swap-in done; swap-out aborted |
//! | InFlight | Swapped, Zero | swap-out / zero reclaim done |
//! | InFlight | Unpopulated, Ballooned, Reported | a fill failed: back to where it came from |
//! | InFlight | Poisoned | a swap-in found the content lost; the guest is told (`vm/memory_error.rs`) |
//! | Poisoned | InFlight | the memory error is delivered again, or the page is cleared (then InFlight -> Unpopulated) |
//! | Poisoned | Ballooned, Reported | the guest gives up a poisoned page: it is cleared |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::pool::Counts;
use super::PageState;
use crate::{Error, Result};

/// True when the state machine allows `from -> to`.
pub const fn allowed(from: PageState, to: PageState) -> bool {
    use PageState::*;
    matches!(
        (from, to),
        (Unpopulated, InFlight | Ballooned | Reported)
            | (Resident, Ballooned | Reported | InFlight | Unpopulated)
            | (
                Ballooned | Reported | Zero,
                Unpopulated | InFlight | Resident
            )
            | (Reported | Zero, Ballooned)
            | (Zero, Reported)
            | (Swapped, InFlight | Ballooned | Reported)
            | (
                InFlight,
                Resident | Swapped | Zero | Unpopulated | Ballooned | Reported | Poisoned
            )
            | (Poisoned, InFlight | Ballooned | Reported)
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
        let raw = self.entry(pfn)?.load(Ordering::Acquire);
        // Only `transition` stores, and it stores only `PageState` values.
        Ok(PageState::from_u8(raw).unwrap_or(PageState::InFlight))
    }

    /// The one state machine: moves `pfn` from `from` to `to`.
    ///
    /// Fails with [`Error::IllegalTransition`] and changes nothing when the
    /// table does not allow `from -> to`, or when the page is not in `from`
    /// (then the error's `from` is the state it is really in).
    pub fn transition(&self, pfn: u64, from: PageState, to: PageState) -> Result<()> {
        let entry = self.entry(pfn)?;
        if !allowed(from, to) {
            return Err(Error::IllegalTransition { pfn, from, to });
        }
        match entry.compare_exchange(from as u8, to as u8, Ordering::SeqCst, Ordering::Acquire) {
            Ok(_) => {
                self.counts.sub(from, 1);
                self.counts.add(to, 1);
                if from == PageState::InFlight && self.settle.waiters.load(Ordering::SeqCst) > 0 {
                    let _guard = self.settle.lock.lock().unwrap_or_else(|p| p.into_inner());
                    self.settle.cv.notify_all();
                }
                Ok(())
            }
            Err(cur) => Err(Error::IllegalTransition {
                pfn,
                from: PageState::from_u8(cur).unwrap_or(PageState::InFlight),
                to,
            }),
        }
    }

    /// Waits up to `timeout` while `pfn` is in flight; returns its state then.
    pub fn wait_settled(&self, pfn: u64, timeout: Duration) -> Result<PageState> {
        let deadline = Instant::now() + timeout;
        self.settle.waiters.fetch_add(1, Ordering::SeqCst);
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

    /// Records the swap slot of a page.
    pub fn set_swap_slot(&self, pfn: u64, slot: u64) {
        self.slots().insert(pfn, slot);
    }

    /// The swap slot recorded for a page, if any.
    pub fn swap_slot(&self, pfn: u64) -> Option<u64> {
        self.slots().get(&pfn).copied()
    }

    /// Removes and returns the swap slot of a page.
    pub fn take_swap_slot(&self, pfn: u64) -> Option<u64> {
        self.slots().remove(&pfn)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.swap_slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of metadata this table holds (entries, counters, swap slots).
    pub fn metadata_bytes(&self) -> u64 {
        let slot_entry = 2 * std::mem::size_of::<u64>() as u64 + 24; // key, value, B-tree overhead
        self.pages() + std::mem::size_of::<Self>() as u64 + self.slots().len() as u64 * slot_entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PageState::*;

    #[test]
    fn fill_cycle_and_counts() {
        let p2m = P2m::new(4);
        p2m.transition(1, Unpopulated, InFlight).unwrap();
        p2m.transition(1, InFlight, Resident).unwrap();
        assert_eq!(p2m.get(1).unwrap(), Resident);
        assert_eq!(p2m.counts().get(Resident), 1);
        assert_eq!(p2m.counts().get(Unpopulated), 3);
    }

    #[test]
    fn illegal_changes_nothing() {
        let p2m = P2m::new(2);
        let e = p2m.transition(0, Unpopulated, Swapped).unwrap_err();
        assert!(matches!(
            e,
            Error::IllegalTransition {
                pfn: 0,
                from: Unpopulated,
                to: Swapped
            }
        ));
        // Wrong expected state: the error names the real one.
        let e = p2m.transition(0, Resident, Ballooned).unwrap_err();
        assert!(matches!(
            e,
            Error::IllegalTransition {
                from: Unpopulated,
                ..
            }
        ));
        assert_eq!(p2m.get(0).unwrap(), Unpopulated);
        assert_eq!(p2m.counts().get(Unpopulated), 2);
        assert!(p2m.transition(2, Unpopulated, InFlight).is_err());
    }
}
