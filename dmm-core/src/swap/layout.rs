// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Where slots live in the swap file: size classes packed into extents.
//!
//! - A **granule** is 1/8 of a page (512 B for 4 KiB pages). A slot of
//!   class `k` (1..=8) is `k` granules; class 8 holds a raw page, the
//!   smaller ones a compressed page.
//! - The file is cut into **extents** of [`EXTENT_PAGES`] pages (16 KiB for
//!   4 KiB pages: a multiple of the filesystem block, so an extent can be
//!   punched). An extent holds slots of one class only, `32 / k` of them.
//! - A slot's id is its file offset in granules; ids never overlap, so the
//!   P2M and the reverse map can use them as they are.
//! - Free slots of partly used extents are reused lowest offset first; an
//!   extent whose last slot is freed returns to the free extents. Freed
//!   extents are punched in batches ([`Layout::take_unpunched`]): the file's
//!   blocks follow the pages stored, without a syscall per swap-in.

use std::collections::BTreeSet;

/// Granules per page.
pub const GRANULES: u64 = 8;
/// Pages per extent.
pub const EXTENT_PAGES: u64 = 4;
/// Granules per extent.
const EXTENT_GRANULES: u64 = GRANULES * EXTENT_PAGES;
/// Size classes: 1..=GRANULES granules (index 0 unused).
const CLASSES: usize = GRANULES as usize + 1;
/// Freed extents left unpunched before a batch is punched.
pub const PUNCH_BATCH: usize = 32;

/// A slot size class, in granules (1..=8; 8 is a raw page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Class(u8);

impl Class {
    /// The raw-page class.
    pub const RAW: Class = Class(GRANULES as u8);

    /// The smallest class holding `bytes` of a page of `page_size` bytes;
    /// `None` when more than a page.
    pub fn fitting(bytes: u64, page_size: u64) -> Option<Class> {
        let granule = page_size / GRANULES;
        let k = bytes.div_ceil(granule).max(1);
        (k <= GRANULES).then_some(Class(k as u8))
    }

    /// Granules of a slot of this class.
    pub fn granules(self) -> u64 {
        u64::from(self.0)
    }

    /// Slots of this class in one extent.
    fn per_extent(self) -> u64 {
        EXTENT_GRANULES / self.granules()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Extent {
    /// Class of its slots (`None`: free).
    class: Option<Class>,
    /// Slots in use.
    live: u32,
}

/// The slot allocator of one swap file (no I/O: the store punches).
#[derive(Debug)]
pub struct Layout {
    granule: u64,
    extents: Vec<Extent>,
    /// Free slot ids of partly used extents, per class.
    free_slots: [BTreeSet<u64>; CLASSES],
    /// Free extents whose blocks may still be allocated in the file.
    unpunched: Vec<u64>,
    /// Free extents already punched.
    punched: Vec<u64>,
}

impl Layout {
    /// A layout for pages of `page_size` bytes (a multiple of [`GRANULES`]).
    pub fn new(page_size: u64) -> Self {
        Layout {
            granule: page_size / GRANULES,
            extents: Vec::new(),
            free_slots: Default::default(),
            unpunched: Vec::new(),
            punched: Vec::new(),
        }
    }

    /// Bytes in one granule.
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Bytes in one extent.
    pub fn extent_bytes(&self) -> u64 {
        self.granule * EXTENT_GRANULES
    }

    /// File offset of a slot.
    pub fn offset(&self, slot: u64) -> u64 {
        slot * self.granule
    }

    /// Bytes of a slot of `class`.
    pub fn slot_bytes(&self, class: Class) -> u64 {
        class.granules() * self.granule
    }

    /// Extents ever handed out (the file's length in extents).
    pub fn extents(&self) -> u64 {
        self.extents.len() as u64
    }

    /// A free slot of `class`: in a partly used extent of that class, else
    /// a free extent (unpunched first: its blocks exist), else a new one.
    pub fn alloc(&mut self, class: Class) -> u64 {
        let c = usize::from(class.0);
        if let Some(slot) = self.free_slots[c].pop_first() {
            let e = slot / EXTENT_GRANULES;
            if let Some(ext) = self.extents.get_mut(e as usize) {
                ext.live += 1;
            }
            return slot;
        }
        let e = match self.unpunched.pop().or_else(|| self.punched.pop()) {
            Some(e) => e,
            None => {
                self.extents.push(Extent::default());
                self.extents.len() as u64 - 1
            }
        };
        if let Some(ext) = self.extents.get_mut(e as usize) {
            *ext = Extent {
                class: Some(class),
                live: 1,
            };
        }
        let first = e * EXTENT_GRANULES;
        let k = class.granules();
        self.free_slots[c].extend((1..class.per_extent()).map(|i| first + i * k));
        first
    }

    /// Frees `slot` of `class` (allocated before). The extent returns to
    /// the free ones when it was its last slot.
    pub fn free(&mut self, slot: u64, class: Class) {
        let c = usize::from(class.0);
        let e = slot / EXTENT_GRANULES;
        let Some(ext) = self.extents.get_mut(e as usize) else {
            return;
        };
        if ext.class != Some(class) || ext.live == 0 {
            log::error!("swap layout: freeing slot {slot} of class {class:?} not in use");
            return;
        }
        ext.live -= 1;
        if ext.live > 0 {
            self.free_slots[c].insert(slot);
            return;
        }
        ext.class = None;
        let first = e * EXTENT_GRANULES;
        let k = class.granules();
        for i in 0..class.per_extent() {
            self.free_slots[c].remove(&(first + i * k));
        }
        self.unpunched.push(e);
    }

    /// Free extents to punch now: all unpunched ones once there are more
    /// than `keep`. They are handed out to no one until [`Layout::punched`]
    /// gives them back (the punch runs without the store's lock).
    pub fn take_unpunched(&mut self, keep: usize) -> Vec<u64> {
        if self.unpunched.len() <= keep {
            return Vec::new();
        }
        std::mem::take(&mut self.unpunched)
    }

    /// Extents of [`Layout::take_unpunched`] are punched: free again.
    pub fn punched(&mut self, extents: &[u64]) {
        self.punched.extend_from_slice(extents);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(Class::fitting(1, 4096), Some(Class(1)));
        assert_eq!(Class::fitting(512, 4096), Some(Class(1)));
        assert_eq!(Class::fitting(513, 4096), Some(Class(2)));
        assert_eq!(Class::fitting(4096, 4096), Some(Class::RAW));
        assert_eq!(Class::fitting(4097, 4096), None);
        assert_eq!(Class(3).per_extent(), 10);
        assert_eq!(Class::RAW.per_extent(), 4);
    }

    #[test]
    fn slots_pack_into_extents_and_extents_come_back() {
        let mut l = Layout::new(4096);
        assert_eq!(l.extent_bytes(), 16384);
        // Class 1: 32 slots of 512 B in extent 0.
        let small: Vec<u64> = (0..32).map(|_| l.alloc(Class(1))).collect();
        assert_eq!(small, (0..32).collect::<Vec<_>>());
        assert_eq!(l.extents(), 1);
        // Another class takes another extent.
        let raw = l.alloc(Class::RAW);
        assert_eq!(l.offset(raw), 16384);
        // Lowest free slot first.
        l.free(small[7], Class(1));
        l.free(small[3], Class(1));
        assert_eq!(l.alloc(Class(1)), 3);
        // The last slot freed frees the extent; a new class reuses it.
        for &s in &small {
            if s != 7 {
                l.free(s, Class(1));
            }
        }
        assert!(l.free_slots[1].is_empty());
        assert_eq!(l.take_unpunched(0), vec![0]);
        assert!(l.take_unpunched(0).is_empty());
        // Being punched: not handed out; a new extent is.
        assert_eq!(l.alloc(Class(5)), 64);
        l.punched(&[0]);
        assert_eq!(l.alloc(Class(6)), 0);
        assert_eq!(l.alloc(Class(6)), 6);
        assert_eq!(l.alloc(Class(5)), 69);
        assert_eq!(l.extents(), 3);
    }

    #[test]
    fn bad_free_is_ignored() {
        let mut l = Layout::new(4096);
        let s = l.alloc(Class(2));
        l.free(s, Class(3));
        l.free(999_999, Class(2));
        l.free(s, Class(2));
        l.free(s, Class(2));
        assert_eq!(l.unpunched, vec![0]);
    }

    proptest::proptest! {
        /// Any sequence of allocations and frees: live slots never overlap,
        /// each lies inside one extent, and an extent is free (or reused)
        /// exactly when none of its slots is live.
        #[test]
        fn slots_never_overlap(ops in proptest::collection::vec((1u8..=8, 0usize..64, proptest::bool::ANY), 1..400)) {
            let mut l = Layout::new(4096);
            let mut live: Vec<(u64, Class)> = Vec::new();
            for (k, pick, alloc) in ops {
                if alloc || live.is_empty() {
                    let class = Class(k);
                    let slot = l.alloc(class);
                    let (start, end) = (slot, slot + class.granules());
                    proptest::prop_assert_eq!(start / EXTENT_GRANULES, (end - 1) / EXTENT_GRANULES);
                    for &(s, c) in &live {
                        proptest::prop_assert!(end <= s || s + c.granules() <= start,
                            "slot {}+{} overlaps {}+{}", start, class.granules(), s, c.granules());
                    }
                    live.push((slot, class));
                } else {
                    let (slot, class) = live.swap_remove(pick % live.len());
                    l.free(slot, class);
                }
                let batch = l.take_unpunched(PUNCH_BATCH);
                l.punched(&batch);
                let in_use: std::collections::BTreeSet<u64> =
                    live.iter().map(|(s, _)| s / EXTENT_GRANULES).collect();
                let free = l.unpunched.len() + l.punched.len();
                proptest::prop_assert_eq!(in_use.len() + free, l.extents.len());
            }
        }
    }

    #[test]
    fn huge_pages_use_the_same_layout() {
        let mut l = Layout::new(2 << 20);
        assert_eq!(l.granule(), 256 << 10);
        assert_eq!(l.extent_bytes(), 8 << 20);
        let a = l.alloc(Class(3));
        let b = l.alloc(Class(3));
        assert_eq!(l.offset(b) - l.offset(a), 3 * (256 << 10));
    }
}
