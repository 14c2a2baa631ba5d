// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A device process's own mapping of guest RAM under swap and zero reclaim
//! (`Vm::attach_device`): its reads of swapped and never-filled pages fault
//! through DMM and read what was written, it populates nothing behind DMM
//! (`st_blocks` equals resident), and its writes racing evictions (which
//! write protection does not cover) are never lost.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod common;
#[path = "common/device.rs"]
mod device;
use common::{swap_guest, Mapped};
use device::Device;

const PS: u64 = 4096;

fn guest(pages: u64, policies: &str) -> (Arc<Mapped>, tempfile::TempDir) {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = tempfile::tempdir().unwrap();
    let ram = swap_guest(dir.path(), pages * PS, policies, false, "device-test");
    (Arc::new(ram), dir)
}

// Guest memory: shared by design.
#[allow(clippy::mut_from_ref)]
fn words<'a>(p: *mut u64) -> &'a mut [u64] {
    // SAFETY: a page of a live mapping; tests touch disjoint pages per thread.
    unsafe { std::slice::from_raw_parts_mut(p, 512) }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Runs the policies until resident is within `pool` pages and settled.
fn reach(ram: &Mapped, pool: u64) {
    ram.vm.set_pool_size(pool * PS).unwrap();
    for _ in 0..200 {
        ram.vm.run_policies();
        let s = ram.vm.stats();
        if s.resident_pages <= pool && s.inflight_pages == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("pool not reached: {:?}", ram.vm.stats());
}

#[test]
fn device_reads_of_swapped_and_unfilled_pages_fault_through_dmm() {
    let pages = 8192; // 32 MiB
    let (ram, _dir) = guest(pages, "swap,zero");
    // 0..6000 data (every 7th page zeros), the rest never touched.
    for pfn in 0..6000 {
        let v = if pfn % 7 == 0 {
            0
        } else {
            (pfn << 32) | 0xd00d
        };
        words(ram.page_ptr(pfn, PS)).fill(v);
    }
    let dev = Arc::new(Device::attach(ram.vm.clone(), "disk1"));
    assert_eq!(ram.vm.stats().devices, 1);
    reach(&ram, pages / 8);
    let before = ram.vm.stats();
    assert!(before.swap_outs > 4000, "{before:?}");
    // Two device threads read every page through the device's mapping.
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                for pfn in (t..pages).step_by(2) {
                    let want = if pfn >= 6000 || pfn % 7 == 0 {
                        0
                    } else {
                        (pfn << 32) | 0xd00d
                    };
                    let got = words(dev.page_ptr(pfn));
                    // SAFETY: volatile reads of a live page.
                    let bad = got
                        .iter()
                        .position(|w| unsafe { std::ptr::read_volatile(w) } != want);
                    assert!(
                        bad.is_none(),
                        "pfn {pfn}: device read {:#x}, want {want:#x}",
                        got[0]
                    );
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let s = ram.vm.stats();
    assert!(s.device_faults >= 4000, "{s:?}");
    assert!(s.swap_ins >= 4000, "{s:?}");
    assert_eq!(s.device_populated_conflicts, 0, "{s:?}");
    // Nothing populated behind DMM: the memfd holds what DMM counts, once
    // the policy thread is between two batches.
    let mut last = (0, s);
    for _ in 0..200 {
        let a = ram.vm.stats();
        let held = ram.held();
        let b = ram.vm.stats();
        if a.inflight_pages == 0 && b.inflight_pages == 0 && a.resident_pages == b.resident_pages {
            last = (held, a);
            if held == a.resident_pages * PS {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (held, at) = last;
    assert_eq!(held, at.resident_pages * PS, "memfd holds {held}: {at:?}");
    drop(dev);
    assert_eq!(ram.vm.stats().devices, 0);
}

/// Three device threads rewrite whole pages through the device's mapping
/// while the pool shrinks and grows under them (swap and zero reclaim copy,
/// then punch: a write in between is not write-protected); every page holds
/// its last value at the end, read through both mappings.
#[test]
fn device_writes_racing_evictions_are_never_lost() {
    let pages = 8192;
    let (ram, _dir) = guest(pages, "swap,zero");
    let dev = Arc::new(Device::attach(ram.vm.clone(), "net0"));
    for pfn in 0..pages {
        words(dev.page_ptr(pfn)).fill(pfn << 32);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let (dev, stop) = (dev.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last: Vec<u64> =
                    (0..pages).filter(|p| p % 3 == t).map(|p| p << 32).collect();
                let mut x = 0x51ed_2701u64 + t;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 20_000 {
                    let i = (xorshift(&mut x) % last.len() as u64) as usize;
                    let pfn = i as u64 * 3 + t;
                    n += 1;
                    // Every 4th write is zeros: zero reclaim takes those.
                    let v = if n % 4 == 0 {
                        0
                    } else {
                        (pfn << 32) | (n & 0xffff_ffff)
                    };
                    for w in words(dev.page_ptr(pfn)).iter_mut() {
                        // SAFETY: a valid, aligned word of the page.
                        unsafe { std::ptr::write_volatile(w, v) };
                    }
                    last[i] = v;
                }
                (t, last)
            })
        })
        .collect();
    for round in 0..8 {
        let pool = if round % 2 == 0 { pages / 4 } else { pages };
        ram.vm.set_pool_size(pool * PS).unwrap();
        for _ in 0..5 {
            ram.vm.run_policies();
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in writers {
        let (t, last) = h.join().unwrap();
        for (i, &v) in last.iter().enumerate() {
            let pfn = i as u64 * 3 + t;
            for (name, p) in [
                ("vCPU", ram.page_ptr(pfn, PS)),
                ("device", dev.page_ptr(pfn)),
            ] {
                let page = words(p);
                assert!(
                    page.iter().all(|&w| w == v),
                    "pfn {pfn} through the {name} mapping: want {v:#x}, found {:#x}: {:?}",
                    page[0],
                    ram.vm.stats()
                );
            }
        }
    }
    let s = ram.vm.stats();
    assert!(s.swap_outs > 0 && s.device_faults > 0, "{s:?}");
    eprintln!(
        "device writes: {} faults, {} swap-outs, {} swap-ins, {} zero pages reclaimed, {} writes caught between copy and punch",
        s.device_faults,
        s.swap_outs,
        s.swap_ins,
        s.reclaimed_zero_bytes / PS,
        s.device_write_races
    );
}
