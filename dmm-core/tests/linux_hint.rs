// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Free page hints on the Linux mechanism: the zero pages of a hinted block
//! really go back (`st_blocks`), every other page keeps its content, and a
//! guest that takes hinted pages back early (its shrinker) and writes them
//! while the hint is processed loses no write, in user or kernel mode.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dmm::model::PageState;
use dmm::vm::{GuestRange, ReleaseReason};

mod common;
use common::{kernel_read, st_blocks_bytes, swap_guest, write_words, Mapped};

const PS: u64 = 4096;

struct Guest {
    ram: Mapped,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn new(pages: u64, policies: &str) -> Guest {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = tempfile::tempdir().unwrap();
        Guest {
            ram: swap_guest(dir.path(), pages * PS, policies, false, "hint-test"),
            _dir: dir,
        }
    }

    // Guest memory: shared with the kernel and other threads by design.
    #[allow(clippy::mut_from_ref)]
    fn page(&self, pfn: u64) -> &mut [u64] {
        // SAFETY: inside the live mapping; tests touch disjoint pages per thread.
        unsafe { std::slice::from_raw_parts_mut(self.ram.page_ptr(pfn, PS), 512) }
    }

    fn hint(&self, first: u64, count: u64) -> dmm::vm::BatchOutcome {
        let r = [GuestRange {
            gpa: first * PS,
            len: count * PS,
        }];
        self.ram.vm.release(&r, ReleaseReason::Hint).unwrap()
    }
}

#[test]
fn zero_pages_of_a_hinted_block_go_back_and_the_rest_stays() {
    let pages = 4096; // 16 MiB
    let g = Guest::new(pages, "zero");
    // One fault, one page: the untouched pages stay unpopulated.
    g.ram.vm.set_fault_around(PS).unwrap();
    for pfn in 0..pages {
        match pfn % 4 {
            // Written, then zeroed again: what init_on_alloc leaves.
            1 => g.page(pfn).fill(0),
            // Never touched.
            2 => {}
            _ => g.page(pfn).fill(pfn | 1 << 40),
        }
    }
    let fd = g.ram.vm.memfd().unwrap();
    let before = st_blocks_bytes(fd);
    let out = g.hint(0, pages);
    assert_eq!(
        (out.pages, out.ignored),
        (pages / 4, pages / 4 * 3),
        "{out:?}"
    );
    let s = g.ram.vm.stats();
    assert_eq!(s.reclaimed_hint_bytes, pages / 4 * PS);
    assert_eq!(s.hint_kept_pages, pages / 2);
    assert_eq!(
        before - st_blocks_bytes(fd),
        pages / 4 * PS,
        "really punched"
    );
    for pfn in 0..pages {
        let want = match pfn % 4 {
            1 | 2 => 0,
            _ => pfn | 1 << 40,
        };
        assert!(g.page(pfn).iter().all(|&w| w == want), "pfn {pfn}");
    }
    assert_eq!(
        g.ram.vm.page_states(1, 1).unwrap(),
        vec![PageState::Resident]
    );
    // A hint outside guest RAM is ignored and counted, never reclaimed.
    let bad = [GuestRange {
        gpa: pages * PS,
        len: PS,
    }];
    let out = g.ram.vm.release(&bad, ReleaseReason::Hint).unwrap();
    assert_eq!((out.pages, out.ignored), (0, 1));
}

#[test]
fn hints_are_ignored_without_the_zero_policy() {
    let g = Guest::new(256, "swap");
    g.page(3).fill(0);
    let out = g.hint(0, 256);
    assert_eq!((out.pages, out.ignored), (0, 256));
    assert_eq!(g.ram.vm.stats().reclaimed_hint_bytes, 0);
}

#[test]
fn writes_to_hinted_pages_taken_back_early_are_never_lost() {
    writers_race_hints(false);
}

#[test]
fn kernel_mode_writes_to_hinted_pages_are_never_lost() {
    writers_race_hints(true);
}

/// Three writers rewrite whole zeroed pages (the guest's shrinker gave the
/// hinted blocks back before DONE) while the hints of those pages are
/// processed again and again; every page holds its last value at the end.
fn writers_race_hints(kernel_mode: bool) {
    let pages = 4096;
    let g = Arc::new(Guest::new(pages, "zero"));
    for pfn in 0..pages {
        g.page(pfn).fill(0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let (g, stop) = (g.clone(), stop.clone());
            std::thread::spawn(move || {
                // Thread t owns pages with pfn % 3 == t; 0: never written.
                let mut last: Vec<u64> = vec![0; (pages as usize).div_ceil(3)];
                let mut x = 0x9e37_79b9u64 + t;
                let mut n = 0u64;
                let file = tempfile::tempfile().unwrap();
                while !stop.load(Ordering::Relaxed) || n < 20_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let pfn = (x % pages) / 3 * 3 + t;
                    if pfn >= pages {
                        continue;
                    }
                    let i = (pfn / 3) as usize;
                    n += 1;
                    let page = g.page(pfn);
                    if kernel_mode && n % 8 == 0 {
                        let got = kernel_read(&file, page);
                        assert!(got.iter().all(|&w| w == last[i]), "pfn {pfn}");
                        continue;
                    }
                    let v = (pfn << 32) | (n & 0xffff_ffff) | 1;
                    write_words(&file, page, v, kernel_mode);
                    last[i] = v;
                }
                (t, last)
            })
        })
        .collect();
    let mut freed = 0;
    for _ in 0..30 {
        freed += g.hint(0, pages).pages;
    }
    stop.store(true, Ordering::Relaxed);
    for h in threads {
        let (t, last) = h.join().unwrap();
        for (i, &v) in last.iter().enumerate() {
            let pfn = i as u64 * 3 + t;
            if pfn < pages {
                let page = g.page(pfn);
                assert!(
                    page.iter().all(|&w| w == v),
                    "pfn {pfn}: want {v:#x}, found {:#x}",
                    page[0]
                );
            }
        }
    }
    let s = g.ram.vm.stats();
    assert!(freed > 0, "some zero pages went: {s:?}");
    assert!(s.wp_faults > 0, "writers met write-protected pages: {s:?}");
}
