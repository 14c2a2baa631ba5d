// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest pages the device writes on its own (its vrings), which libdmm must
//! never swap out or zero-reclaim: the device maps guest RAM without
//! userfaultfd, so its write to a swapped-out page would allocate a fresh
//! page behind libdmm (`docs/architecture.md`, "Swapping and device
//! processes"). libdmm's pins are not counted (an `unpin` cuts every pin
//! over its range), so this table remembers which queue holds which pages
//! and unpins only pages no other queue still holds.

use std::collections::BTreeMap;

use crate::balloon::GuestRange;

/// Granule of pin ranges (libdmm ignores unaligned ranges).
pub const PIN_PAGE: u64 = 4096;

/// Byte range `[gpa, gpa+len)` widened to whole 4 KiB pages; `None` if empty or overflowing.
fn align_out(gpa: u64, len: u64) -> Option<GuestRange> {
    let end = gpa.checked_add(len)?.checked_next_multiple_of(PIN_PAGE)?;
    let start = gpa - gpa % PIN_PAGE;
    (len > 0).then_some(GuestRange {
        gpa: start,
        len: end - start,
    })
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge(mut v: Vec<GuestRange>) -> Vec<GuestRange> {
    v.sort_unstable();
    let mut out: Vec<GuestRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.gpa <= last.gpa + last.len => {
                let end = (r.gpa + r.len).max(last.gpa + last.len);
                last.len = end - last.gpa;
            }
            _ => out.push(r),
        }
    }
    out
}

/// `a` minus every range of `b` (`b` merged).
fn subtract(a: &[GuestRange], b: &[GuestRange]) -> Vec<GuestRange> {
    let mut out = Vec::new();
    for r in a {
        let (mut start, end) = (r.gpa, r.gpa + r.len);
        for s in b {
            let s_end = s.gpa + s.len;
            if s_end <= start || s.gpa >= end {
                continue;
            }
            if s.gpa > start {
                out.push(GuestRange {
                    gpa: start,
                    len: s.gpa - start,
                });
            }
            start = start.max(s_end);
        }
        if start < end {
            out.push(GuestRange {
                gpa: start,
                len: end - start,
            });
        }
    }
    out
}

/// Pages of a split ring of `size` entries: descriptor table (16 bytes an
/// entry), avail ring (6 + 2 per entry) and used ring (6 + 8 per entry),
/// widened to 4 KiB pages and merged. Parts that overflow are left out.
pub fn ring_ranges(desc: u64, avail: u64, used: u64, size: u16) -> Vec<GuestRange> {
    let n = u64::from(size);
    let parts = [(desc, 16 * n), (avail, 6 + 2 * n), (used, 6 + 8 * n)];
    merge(
        parts
            .iter()
            .filter_map(|&(gpa, len)| align_out(gpa, len))
            .collect(),
    )
}

/// What one change of the table asks libdmm to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PinChange {
    /// Pages no holder keeps any more.
    pub unpin: Vec<GuestRange>,
    /// Pages newly held.
    pub pin: Vec<GuestRange>,
}

/// Pinned ranges by queue index. libdmm's pinned set covers the union of all entries.
#[derive(Debug, Default)]
pub struct PinTable {
    queues: BTreeMap<usize, Vec<GuestRange>>,
}

impl PinTable {
    fn others(&self, q: usize) -> Vec<GuestRange> {
        merge(
            self.queues
                .iter()
                .filter(|&(&k, _)| k != q)
                .flat_map(|(_, v)| v.iter().copied())
                .collect(),
        )
    }

    /// Queue `q` now uses `ranges` (merged); `None` if that is what it held.
    pub fn set(&mut self, q: usize, ranges: Vec<GuestRange>) -> Option<PinChange> {
        let old = self.queues.get(&q).cloned().unwrap_or_default();
        if old == ranges {
            return None;
        }
        let others = self.others(q);
        let keep = merge(others.iter().chain(&ranges).copied().collect());
        let had = merge(others.iter().chain(&old).copied().collect());
        let change = PinChange {
            unpin: subtract(&old, &keep),
            pin: subtract(&ranges, &had),
        };
        self.queues.insert(q, ranges);
        Some(change)
    }

    /// Queue `q` stopped: the pages only it held.
    pub fn remove(&mut self, q: usize) -> Vec<GuestRange> {
        let old = self.queues.remove(&q).unwrap_or_default();
        subtract(&old, &self.others(q))
    }

    /// Forgets `q` without unpinning (its pin failed: retried on the next event).
    pub fn forget(&mut self, q: usize) {
        self.queues.remove(&q);
    }

    /// Device reset: every held page.
    pub fn clear(&mut self) -> Vec<GuestRange> {
        let all = merge(self.queues.values().flatten().copied().collect());
        self.queues.clear();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(gpa: u64, len: u64) -> GuestRange {
        GuestRange { gpa, len }
    }

    #[test]
    fn ring_parts_are_widened_and_merged() {
        // 256 entries: desc 4096, avail 518, used 2054 bytes.
        assert_eq!(
            ring_ranges(0x1_0000, 0x1_1000, 0x1_2000, 256),
            vec![r(0x1_0000, 0x3000)]
        );
        // Unaligned, packed like Linux's legacy layout, and one part far away.
        assert_eq!(
            ring_ranges(0x1_0800, 0x1_1800, 0x9_0ffc, 256),
            vec![r(0x1_0000, 0x2000), r(0x9_0000, 0x2000)]
        );
        // Overflowing parts are dropped, never wrapped.
        assert_eq!(
            ring_ranges(u64::MAX - 8, 0x1000, 0x2000, 16),
            vec![r(0x1000, 0x2000)]
        );
    }

    #[test]
    fn shared_pages_stay_pinned_until_the_last_holder_goes() {
        let mut t = PinTable::default();
        let a = vec![r(0x1000, 0x2000)];
        let b = vec![r(0x2000, 0x2000)];
        assert_eq!(
            t.set(0, a.clone()),
            Some(PinChange {
                unpin: vec![],
                pin: a.clone()
            })
        );
        assert_eq!(t.set(0, a.clone()), None);
        assert_eq!(
            t.set(1, b).unwrap(),
            PinChange {
                unpin: vec![],
                pin: vec![r(0x3000, 0x1000)]
            }
        );
        // Queue 0 moves: only the page nobody else holds is unpinned.
        assert_eq!(
            t.set(0, vec![r(0x8000, 0x1000)]).unwrap(),
            PinChange {
                unpin: vec![r(0x1000, 0x1000)],
                pin: vec![r(0x8000, 0x1000)]
            }
        );
        assert_eq!(t.remove(1), vec![r(0x2000, 0x2000)]);
        assert_eq!(t.clear(), vec![r(0x8000, 0x1000)]);
        assert!(t.clear().is_empty());
    }
}
