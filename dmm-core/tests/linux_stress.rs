// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Concurrency on the Linux mechanism: three threads write while a fourth
//! releases, touches again and takes back pages interleaved with theirs (so
//! fault-around blocks, releases and refaults overlap). Afterwards every page
//! holds its last write (or zeros) and the model matches the memfd's
//! `st_blocks`.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use dmm::model::PageState;
use dmm::vm::{GuestRange, PageSize, PolicySet, ReleaseReason, Vm, VmConfig};

mod common;
use common::Mapped;

const PS: u64 = 4096;
const PAGES: u64 = 16384;

fn pattern(pfn: u64, seed: u64) -> u64 {
    (pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93)) | 1
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

struct Ram(usize);

impl Ram {
    fn word(&self, pfn: u64, i: u64) -> *mut u64 {
        (self.0 + (pfn * PS + i * 512) as usize) as *mut u64
    }

    fn write(&self, pfn: u64, v: u64) {
        for i in 0..8 {
            // SAFETY: inside the mapping.
            unsafe { self.word(pfn, i).write_volatile(v) };
        }
    }

    fn read(&self, pfn: u64) -> [u64; 8] {
        // SAFETY: inside the mapping.
        std::array::from_fn(|i| unsafe { self.word(pfn, i as u64).read_volatile() })
    }
}

#[test]
fn writers_and_balloon_race() {
    let size = PAGES * PS;
    let vm = Vm::new_linux(VmConfig {
        size,
        page_size: PageSize::Small,
        pool_size: None,
        control_path: None,
        swap_path: None,
        swap_compress: false,
        uffd_user_mode_only: false,
        policies: PolicySet::parse("balloon").unwrap(),
        name: "stress".into(),
    })
    .unwrap();
    let mapped = Mapped::new(vm.clone());
    let ram = Ram(mapped.addr());
    // Last value written per page (0: zeros expected).
    let last: Vec<AtomicU64> = (0..PAGES).map(|_| AtomicU64::new(0)).collect();

    std::thread::scope(|s| {
        for w in 0..3u64 {
            let (ram, last) = (&ram, &last);
            s.spawn(move || {
                let mut x = 0x1234_5678 + w;
                for round in 1..=20_000u64 {
                    let pfn = (next(&mut x) % (PAGES / 4)) * 4 + w;
                    let v = pattern(pfn, round);
                    ram.write(pfn, v);
                    last[pfn as usize].store(v, Ordering::Relaxed);
                }
            });
        }
        let (ram, last, vm) = (&ram, &last, &vm);
        s.spawn(move || {
            let mut x = 0xfeed_beef_u64;
            for round in 1..=300u64 {
                let pfns: Vec<u64> = (0..32)
                    .map(|_| (next(&mut x) % (PAGES / 4)) * 4 + 3)
                    .collect();
                for &p in &pfns {
                    let v = pattern(p, round);
                    ram.write(p, v);
                    last[p as usize].store(v, Ordering::Relaxed);
                }
                let ranges: Vec<GuestRange> = pfns
                    .iter()
                    .map(|&p| GuestRange {
                        gpa: p * PS,
                        len: PS,
                    })
                    .collect();
                vm.release(&ranges, ReleaseReason::Balloon).unwrap();
                for &p in &pfns {
                    last[p as usize].store(0, Ordering::Relaxed);
                }
                if round % 2 == 0 {
                    vm.reclaim_back(&ranges[..16]).unwrap();
                }
                // Some released pages read back as zeros right away.
                for &p in &pfns[..4] {
                    assert_eq!(ram.read(p), [0; 8], "released pfn {p} not zero");
                }
            }
        });
    });

    assert_eq!(vm.stats().inflight_pages, 0);
    let states = vm.page_states(0, PAGES).unwrap();
    for pfn in 0..PAGES {
        let want = last[pfn as usize].load(Ordering::Relaxed);
        let st = states[pfn as usize];
        if want != 0 {
            assert_eq!(st, PageState::Resident, "pfn {pfn}");
        }
        if st != PageState::Resident {
            assert!(
                matches!(st, PageState::Unpopulated | PageState::Ballooned),
                "pfn {pfn} {st:?}"
            );
        }
    }
    // Model and memfd agree before the verifying reads fault anything in.
    let s = vm.stats();
    assert_eq!(s.resident_pages * PS, s.host_allocated_bytes, "{s:?}");
    for pfn in 0..PAGES {
        let want = last[pfn as usize].load(Ordering::Relaxed);
        assert_eq!(ram.read(pfn), [want; 8], "pfn {pfn}");
    }
    let s = vm.stats();
    assert_eq!(s.resident_pages * PS, s.host_allocated_bytes, "{s:?}");
    assert_eq!(
        s.resident_pages + s.unpopulated_pages + s.ballooned_pages,
        PAGES
    );
    drop(mapped);
}
