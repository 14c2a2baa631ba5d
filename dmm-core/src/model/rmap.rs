// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The reverse map: which guest pages a backing serves. Backings are the
//! shared zero page (zero-page sharing) and swap slots (swapping). Resident
//! pages are backed by their own file offset (identity layout) and are not
//! listed here.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

/// What backs a non-resident page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backing {
    /// The shared zero page.
    ZeroPage,
    /// A slot of the swap store.
    SwapSlot(u64),
}

/// Backing -> guest pfns.
#[derive(Debug, Default)]
pub struct Rmap {
    map: Mutex<HashMap<Backing, BTreeSet<u64>>>,
}

impl Rmap {
    fn lock(&self) -> MutexGuard<'_, HashMap<Backing, BTreeSet<u64>>> {
        // Each operation leaves the map consistent; a poisoned lock is usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `backing` serves `pfn`; false if it already did.
    pub fn add(&self, backing: Backing, pfn: u64) -> bool {
        self.lock().entry(backing).or_default().insert(pfn)
    }

    /// Forgets that `backing` serves `pfn`; false if it did not.
    pub fn remove(&self, backing: Backing, pfn: u64) -> bool {
        let mut map = self.lock();
        let Some(set) = map.get_mut(&backing) else {
            return false;
        };
        let removed = set.remove(&pfn);
        if set.is_empty() {
            map.remove(&backing);
        }
        removed
    }

    /// Number of guest pages `backing` serves.
    pub fn count(&self, backing: Backing) -> u64 {
        self.lock().get(&backing).map_or(0, |s| s.len() as u64)
    }

    /// The guest pages `backing` serves, ascending.
    pub fn pfns(&self, backing: Backing) -> Vec<u64> {
        self.lock()
            .get(&backing)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_count() {
        let r = Rmap::default();
        assert!(r.add(Backing::ZeroPage, 3));
        assert!(r.add(Backing::ZeroPage, 1));
        assert!(!r.add(Backing::ZeroPage, 1));
        assert!(r.add(Backing::SwapSlot(7), 9));
        assert_eq!(r.count(Backing::ZeroPage), 2);
        assert_eq!(r.pfns(Backing::ZeroPage), vec![1, 3]);
        assert!(r.remove(Backing::SwapSlot(7), 9));
        assert!(!r.remove(Backing::SwapSlot(7), 9));
        assert_eq!(r.count(Backing::SwapSlot(7)), 0);
    }
}
