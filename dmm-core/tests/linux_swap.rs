// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Swapping on the Linux mechanism (memfd + uffd MISSING + WP): a shrunk pool
//! really gives memory back (`st_blocks`), every page comes back intact
//! (checksums), writes racing swap-out are never lost, a full store keeps
//! pages resident, zero pages are shared.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dmm::vm::{Stats, Vm};

mod common;
use common::{kernel_read, swap_guest, write_words, Mapped};

const PS: u64 = 4096;
/// One eviction batch in flight: all the policy thread may hold above the pool.
const SLACK: u64 = 512 * PS;

struct Guest {
    ram: Mapped,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn new(pages: u64, policies: &str) -> Guest {
        Guest::with(pages, policies, false)
    }

    fn with(pages: u64, policies: &str, swap_compress: bool) -> Guest {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = tempfile::tempdir().unwrap();
        Guest {
            ram: swap_guest(dir.path(), pages * PS, policies, swap_compress, "swap-test"),
            _dir: dir,
        }
    }

    fn vm(&self) -> &Vm {
        &self.ram.vm
    }

    // Guest memory: shared with the kernel and other threads by design.
    #[allow(clippy::mut_from_ref)]
    fn page(&self, pfn: u64) -> &mut [u64] {
        // SAFETY: inside the live mapping; tests touch disjoint pages per thread.
        unsafe { std::slice::from_raw_parts_mut(self.ram.page_ptr(pfn, PS), 512) }
    }

    fn stats(&self) -> Stats {
        self.vm().stats()
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn checksum(words: &[u64]) -> u64 {
    words.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &w| {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Shrinks the pool and runs the policies until resident is within it.
fn shrink(g: &Guest, pool_pages: u64) {
    g.vm().set_pool_size(pool_pages * PS).unwrap();
    for _ in 0..100 {
        g.vm().run_policies();
        // Settled too: a page still in flight is not counted Swapped yet.
        let s = g.stats();
        if s.resident_pages <= pool_pages && s.inflight_pages == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("pool not reached: {:?}", g.stats());
}

/// Shrinks to `pool_pages` and checks the memfd really holds no more than
/// the pool plus [`SLACK`]; returns the stats.
fn shrink_within_pool(g: &Guest, pool_pages: u64) -> Stats {
    shrink(g, pool_pages);
    let s = g.stats();
    assert!(
        s.host_allocated_bytes <= pool_pages * PS + SLACK,
        "memfd holds {} bytes, pool {} bytes: {s:?}",
        s.host_allocated_bytes,
        pool_pages * PS
    );
    s
}

#[test]
fn shrink_to_40_percent_then_every_checksum_matches() {
    let pages = 32768; // 128 MiB
    let g = Guest::new(pages, "swap,zero");
    let mut sums = Vec::with_capacity(pages as usize);
    let mut seed = 0x1234_5678_9abc_def1u64;
    for pfn in 0..pages {
        let p = g.page(pfn);
        match pfn % 16 {
            // Every 16th page stays zero (written zeros), every 16th+1 is a
            // duplicate of a fixed pattern: zero sharing and dedup.
            0 => p.fill(0),
            1 => p
                .iter_mut()
                .enumerate()
                .for_each(|(i, w)| *w = i as u64 * 3 + 1),
            _ => p.iter_mut().for_each(|w| *w = xorshift(&mut seed)),
        }
        sums.push(checksum(p));
    }
    let before = g.stats();
    assert_eq!(before.resident_pages, pages);
    let pool = pages * 4 / 10;
    let s = shrink_within_pool(&g, pool);
    assert!(s.swap_outs > 0 && s.swapped_pages > 0, "{s:?}");
    assert!(s.zero_pages > 0, "zero pages shared: {s:?}");
    assert!(s.swap_dedup_hits > 0, "duplicates stored once: {s:?}");
    assert!(s.swap_slots_used < s.swapped_pages, "{s:?}");
    // Read everything back through the mapping (faults swap in), while the
    // policy thread keeps the pool.
    for pfn in 0..pages {
        assert_eq!(checksum(g.page(pfn)), sums[pfn as usize], "page {pfn}");
    }
    let s = g.stats();
    assert!(s.swap_ins > 0, "{s:?}");
    // The pool grows back; everything still intact.
    g.vm().set_pool_size(pages * PS).unwrap();
    for pfn in (0..pages).rev() {
        assert_eq!(checksum(g.page(pfn)), sums[pfn as usize], "page {pfn}");
    }
    assert_eq!(g.stats().device_populated_conflicts, 0);
}

/// Text-like bytes: words of a small vocabulary (LZ4 gets 2-3x on them).
fn fill_text(words: &mut [u64], seed: &mut u64) {
    const VOCAB: [&str; 16] = [
        "memory ", "pool ", "guest ", "page ", "swap ", "the ", "of ", "and ", "balloon ",
        "kernel ", "fault ", "zero ", "a ", "host ", "shrinks ", "grows ",
    ];
    let mut text = Vec::with_capacity(4200);
    while text.len() < 4096 {
        text.extend_from_slice(VOCAB[(xorshift(seed) % 16) as usize].as_bytes());
    }
    for (w, b) in words.iter_mut().zip(text.chunks_exact(8)) {
        *w = u64::from_le_bytes(b.try_into().unwrap());
    }
}

/// Half text-like, half random pages swapped out through a shrunk pool,
/// compressed or not: every checksum matches, the memfd stays within the
/// pool; returns the stats after the shrink.
fn shrink_mixed(compress: bool) -> Stats {
    let pages = 16384; // 64 MiB
    let g = Guest::with(pages, "swap", compress);
    let mut seed = 0x5eed_0000_0000_0001u64;
    let mut sums = Vec::with_capacity(pages as usize);
    for pfn in 0..pages {
        let p = g.page(pfn);
        if pfn % 2 == 0 {
            fill_text(p, &mut seed);
        } else {
            p.iter_mut().for_each(|w| *w = xorshift(&mut seed));
        }
        sums.push(checksum(p));
    }
    let pool = pages * 4 / 10;
    let s = shrink_within_pool(&g, pool);
    assert!(s.swapped_pages >= pages - pool - 512, "{s:?}");
    for pfn in 0..pages {
        assert_eq!(checksum(g.page(pfn)), sums[pfn as usize], "page {pfn}");
    }
    g.vm().run_policies();
    let after = g.stats();
    assert!(after.swap_ins > 0 && after.swap_corrupt == 0, "{after:?}");
    assert!(
        after.host_allocated_bytes <= pool * PS + SLACK,
        "memfd holds {} bytes after the re-read, pool {} bytes: {after:?}",
        after.host_allocated_bytes,
        pool * PS
    );
    s
}

#[test]
fn compressed_swap_keeps_every_page_and_takes_less_file() {
    let z = shrink_mixed(true);
    let raw = shrink_mixed(false);
    for (name, s) in [("lz4", &z), ("raw", &raw)] {
        eprintln!(
            "{name}: {} slots ({} compressed), {} bytes in slots, file {} bytes",
            s.swap_slots_used, s.swap_compressed_slots, s.swap_stored_bytes, s.swap_file_bytes
        );
    }
    // Every text page compresses, no random page does.
    assert!(z.swap_compressed_slots > 0, "{z:?}");
    assert!(
        z.swap_compressed_slots <= z.swap_slots_used / 2 + 512,
        "random pages stay raw: {z:?}"
    );
    assert_eq!(raw.swap_compressed_slots, 0, "{raw:?}");
    assert_eq!(raw.swap_stored_bytes, raw.swap_slots_used * PS, "{raw:?}");
    // The file's own blocks: uncompressed needs a page per slot; half of
    // the pages at about half their size save at least a fifth.
    assert!(raw.swap_file_bytes >= raw.swap_slots_used * PS, "{raw:?}");
    assert!(
        z.swap_file_bytes * 5 < raw.swap_file_bytes * 4,
        "compressed file {} bytes, raw {} bytes: {z:?}",
        z.swap_file_bytes,
        raw.swap_file_bytes
    );
    assert!(
        z.swap_stored_bytes < z.swap_slots_used * PS * 4 / 5,
        "{z:?}"
    );
}

#[test]
fn writes_during_swap_out_are_never_lost() {
    writers_race_swap_out(false);
}

/// The same with the kernel writing and reading the pages, as QEMU's device
/// models (I/O from guest RAM by its thread pool) and kernel vhost do: the
/// faults are taken in kernel mode, and a write between swap-out's copy and
/// its punch must wait on the write protection like a vCPU's.
#[test]
fn kernel_mode_writes_and_reads_during_swap_out_are_never_lost() {
    writers_race_swap_out(true);
}

/// Three writers rewrite whole pages while the pool shrinks and grows under
/// them; every page holds its last value at the end. `kernel_mode`: the
/// kernel does the writes (and every 8th access is a read it checks).
fn writers_race_swap_out(kernel_mode: bool) {
    let pages = 8192; // 32 MiB
    let g = Arc::new(Guest::new(pages, "swap"));
    for pfn in 0..pages {
        g.page(pfn).fill(pfn << 32);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let (g, stop) = (g.clone(), stop.clone());
            std::thread::spawn(move || {
                // Thread t owns pages with pfn % 3 == t; last[pfn/3] is the
                // value its words hold.
                let mut last: Vec<u64> =
                    (0..pages).filter(|p| p % 3 == t).map(|p| p << 32).collect();
                let mut x = 0x9e37_79b9u64 + t;
                let mut n = 0u64;
                let file = tempfile::tempfile().unwrap();
                while !stop.load(Ordering::Relaxed) || n < 20_000 {
                    let i = (xorshift(&mut x) % last.len() as u64) as usize;
                    let pfn = i as u64 * 3 + t;
                    n += 1;
                    let v = (pfn << 32) | (n & 0xffff_ffff);
                    let page = g.page(pfn);
                    if kernel_mode && n % 8 == 0 {
                        let got = kernel_read(&file, page);
                        assert!(
                            got.iter().all(|&w| w == last[i]),
                            "pfn {pfn}: the kernel read {:#x}, want {:#x}",
                            got[0],
                            last[i]
                        );
                        continue;
                    }
                    write_words(&file, page, v, kernel_mode);
                    last[i] = v;
                }
                (t, last)
            })
        })
        .collect();
    // Shrink and grow under the writers.
    for round in 0..6 {
        let pool = if round % 2 == 0 { pages / 4 } else { pages };
        g.vm().set_pool_size(pool * PS).unwrap();
        for _ in 0..5 {
            g.vm().run_policies();
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in threads {
        let (t, last) = h.join().unwrap();
        for (i, &v) in last.iter().enumerate() {
            let pfn = i as u64 * 3 + t;
            let page = g.page(pfn);
            assert!(
                page.iter().all(|&w| w == v),
                "pfn {pfn}: want {v:#x}, found {:#x}",
                page[0]
            );
        }
    }
    let s = g.stats();
    assert!(s.swap_outs > 0 && s.swap_ins > 0, "{s:?}");
    assert!(s.wp_faults > 0, "writers met write-protected pages: {s:?}");
}

#[test]
fn full_store_keeps_pages_resident() {
    let pages = 2048;
    let g = Guest::new(pages, "swap");
    let mut seed = 77u64;
    let mut sums = Vec::new();
    for pfn in 0..pages {
        let p = g.page(pfn);
        p.iter_mut().for_each(|w| *w = xorshift(&mut seed));
        sums.push(checksum(p));
    }
    g.vm().set_swap_size(100 * PS).unwrap();
    assert!(g
        .vm()
        .set_swap_size(100)
        .unwrap_err()
        .to_string()
        .contains("100"));
    g.vm().set_pool_size(pages / 2 * PS).unwrap();
    g.vm().run_policies();
    let s = g.stats();
    assert_eq!(s.inflight_pages, 0, "{s:?}");
    assert_eq!(s.swapped_pages, 100, "{s:?}");
    assert_eq!(s.resident_pages, pages - 100, "{s:?}");
    assert!(s.swap_full > 0, "{s:?}");
    for pfn in 0..pages {
        assert_eq!(checksum(g.page(pfn)), sums[pfn as usize], "page {pfn}");
    }
}

#[test]
fn zero_pages_are_shared_and_refill_as_zeros() {
    let pages = 4096;
    let g = Guest::new(pages, "zero");
    for pfn in 0..pages {
        // Touch every page; odd pages get data.
        let p = g.page(pfn);
        p[0] = 0;
        if pfn % 2 == 1 {
            p[5] = pfn;
        }
    }
    let held = g.stats().host_allocated_bytes;
    assert!(held >= pages * PS * 9 / 10, "{held}");
    g.vm().set_pool_size(pages / 2 * PS).unwrap();
    g.vm().run_policies();
    let s = g.stats();
    assert_eq!(s.zero_pages, pages / 2, "{s:?}");
    assert_eq!(g.vm().zero_page_sharers(), pages / 2);
    assert!(s.host_allocated_bytes <= pages / 2 * PS, "{s:?}");
    for pfn in 0..pages {
        let p = g.page(pfn);
        let want = if pfn % 2 == 1 { pfn } else { 0 };
        assert_eq!(p[5], want, "pfn {pfn}");
        assert!(p.iter().enumerate().all(|(i, &w)| i == 5 || w == 0));
    }
}

#[test]
fn pinned_ranges_are_never_swapped() {
    let pages = 1024;
    let g = Guest::new(pages, "swap");
    for pfn in 0..pages {
        g.page(pfn).fill(pfn + 1);
    }
    let out = g.vm().pin(&[dmm::vm::GuestRange {
        gpa: 0,
        len: 256 * PS,
    }]);
    assert_eq!(out.pages, 256);
    g.vm().set_pool_size(300 * PS).unwrap();
    g.vm().run_policies();
    let states = g.vm().page_states(0, 256).unwrap();
    assert!(states.iter().all(|s| *s == dmm::model::PageState::Resident));
    assert!(g.stats().resident_pages <= 300, "{:?}", g.stats());
}

/// What the kernel raises on a swapped-out (write-protected, then punched)
/// shmem page: a MISSING fault for a write as for a read, never a WP fault;
/// swap-in makes the page writable (a second write does not fault).
#[test]
fn punched_write_protected_page_faults_missing() {
    let pages = 64;
    let g = Guest::new(pages, "swap");
    // Every page its own fault: no read-around, nothing brought home.
    g.vm().set_fault_around(PS).unwrap();
    for pfn in 0..pages {
        g.page(pfn).fill(0x5a00 + pfn);
    }
    g.vm().set_pool_size(0).unwrap();
    g.vm().run_policies();
    assert_eq!(g.stats().swapped_pages, pages);
    g.vm().set_pool_size(pages * PS).unwrap();
    let s0 = g.stats();
    // SAFETY: a valid word of the mapping.
    unsafe { std::ptr::write_volatile(&mut g.page(5)[3], 7) };
    let s1 = g.stats();
    assert_eq!(s1.faults, s0.faults + 1, "one MISSING fault: {s1:?}");
    assert_eq!(s1.wp_faults, s0.wp_faults, "no WP fault: {s1:?}");
    assert_eq!(s1.swap_ins, s0.swap_ins + 1);
    // SAFETY: a valid word of the mapping.
    unsafe { std::ptr::write_volatile(&mut g.page(5)[4], 8) };
    let s2 = g.stats();
    assert_eq!(s2.faults, s1.faults, "the swapped-in page is writable");
    let p = g.page(5);
    assert_eq!((p[2], p[3], p[4], p[5]), (0x5a05, 7, 8, 0x5a05));
    // A read of another swapped page: MISSING too, content back.
    assert_eq!(g.page(9)[100], 0x5a09);
    assert_eq!(g.stats().faults, s2.faults + 1);
}

/// A device process (its own mapping of the memfd, no userfaultfd) reads a
/// swapped page: the read populates it behind us, under the uffd-wp marker
/// swap-out left in our mapping. A write to it then raises a write-protect
/// fault on a page DMM thinks swapped. It used to be answered with a wake
/// only, so the write faulted again at once, for ever (measured: ~28,000
/// faults a second, the guest hung); now it is unprotected and the page is
/// resident, the device's page kept and counted.
#[test]
fn a_write_to_a_page_populated_behind_us_makes_progress() {
    let pages = 1024;
    let g = Guest::new(pages, "swap");
    for pfn in 0..pages {
        g.page(pfn).fill(pfn + 1);
    }
    shrink(&g, pages / 4);
    let states = g.vm().page_states(0, pages).unwrap();
    let pfn = (0..pages)
        .find(|&p| states[p as usize] == dmm::model::PageState::Swapped)
        .expect("a swapped page");
    // The device's view: a second shared mapping without userfaultfd.
    let fd = g.vm().memfd().unwrap();
    // SAFETY: a fresh shared read-only mapping of the memfd.
    let dev = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (pages * PS) as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(dev, libc::MAP_FAILED);
    // SAFETY: inside the device mapping.
    let seen = unsafe { std::ptr::read_volatile((dev as *const u64).add((pfn * 512) as usize)) };
    assert_eq!(seen, 0, "a device reads a hole as zeros");
    let before = g.stats().wp_faults;
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, done) = (g.ram.page_ptr(pfn, PS) as usize, done.clone());
        std::thread::spawn(move || {
            // SAFETY: inside the live guest mapping.
            unsafe { std::ptr::write_volatile(addr as *mut u64, 0xfeed) };
            done.store(true, Ordering::SeqCst);
        })
    };
    let t = std::time::Instant::now();
    while !done.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "write stuck: {} write-protect faults in {:?}",
            g.stats().wp_faults - before,
            t.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    writer.join().unwrap();
    let s = g.stats();
    assert!(
        s.wp_faults - before <= 2,
        "{} write-protect faults",
        s.wp_faults - before
    );
    assert_eq!(s.device_populated_conflicts, 1);
    assert_eq!(
        g.vm().page_states(pfn, 1).unwrap()[0],
        dmm::model::PageState::Resident
    );
    assert_eq!(g.page(pfn)[0], 0xfeed);
    // SAFETY: our own mapping.
    unsafe { libc::munmap(dev, (pages * PS) as usize) };
}

fn wait_for(g: &Guest, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = g.stats();
        if done(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {s:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// When the pool grows back, swapped pages come home in the background, no
/// fault of their own: the guest's next read of its data takes no fault,
/// and every checksum matches.
#[test]
fn swapped_pages_come_home_when_the_pool_grows() {
    let pages = 8192; // 32 MiB
    let g = Guest::new(pages, "swap");
    let mut seed = 0x0b1e_55ed_0000_0001u64;
    let sums: Vec<u64> = (0..pages)
        .map(|pfn| {
            let p = g.page(pfn);
            p.iter_mut().for_each(|w| *w = xorshift(&mut seed));
            checksum(p)
        })
        .collect();
    let s0 = shrink_within_pool(&g, pages / 4);
    assert!(s0.swapped_pages >= pages / 2, "{s0:?}");
    g.vm().set_pool_size(pages * PS).unwrap();
    let s1 = wait_for(&g, "swapped pages home", |s| s.swapped_pages == 0);
    assert_eq!(s1.faults, s0.faults, "no page waited for its own fault");
    assert_eq!(s1.swap_ins - s0.swap_ins, s0.swapped_pages);
    assert_eq!(
        s1.swap_ins_ahead - s0.swap_ins_ahead,
        s0.swapped_pages,
        "{s1:?}"
    );
    assert_eq!(s1.resident_pages, pages);
    assert_eq!(s1.host_allocated_bytes, pages * PS, "memfd st_blocks");
    for pfn in 0..pages {
        assert_eq!(checksum(g.page(pfn)), sums[pfn as usize], "pfn {pfn}");
    }
    assert_eq!(g.stats().faults, s1.faults, "the re-read took no fault");
}

/// Bringing pages home and the guest's writes on the same pages at the same
/// time: the home run goes up from pfn 0, the writer down from the top, so
/// they cross; every page holds what the writer wrote last.
#[test]
fn bringing_pages_home_races_the_guests_writes() {
    let pages = 8192;
    let g = Guest::new(pages, "swap");
    for pfn in 0..pages {
        g.page(pfn).fill(pfn << 8 | 1);
    }
    shrink_within_pool(&g, pages / 8);
    let g = std::sync::Arc::new(g);
    let writer = {
        let g = g.clone();
        std::thread::spawn(move || {
            for pfn in (0..pages).rev() {
                let p = g.page(pfn);
                // SAFETY: valid words of the mapping.
                unsafe {
                    std::ptr::write_volatile(&mut p[0], pfn << 8 | 2);
                    std::ptr::write_volatile(&mut p[511], pfn << 8 | 2);
                }
            }
        })
    };
    g.vm().set_pool_size(pages * PS).unwrap();
    writer.join().unwrap();
    let s = wait_for(&g, "swapped pages home", |s| s.swapped_pages == 0);
    assert!(
        s.swap_ins_ahead > 0,
        "nothing came home in the background: {s:?}"
    );
    for pfn in 0..pages {
        let p = g.page(pfn);
        assert_eq!(
            (p[0], p[1], p[511]),
            (pfn << 8 | 2, pfn << 8 | 1, pfn << 8 | 2),
            "pfn {pfn}"
        );
    }
}

/// A swap-in fault brings back the swapped pages of its aligned 64 KiB
/// block with it, as far as the pool has room; pages brought home in the
/// background stop short of the pool (1/16 of it kept free).
#[test]
fn a_swap_in_reads_its_block_around_it() {
    let pages = 1024;
    let g = Guest::new(pages, "swap");
    for pfn in 0..pages {
        g.page(pfn).fill(pfn + 7);
    }
    shrink_within_pool(&g, 480);
    g.vm().set_pool_size(512 * PS).unwrap();
    // The background stops with 512/16 = 32 pages of the pool free.
    let mut s = wait_for(&g, "home up to the margin", |s| {
        s.resident_pages + 32 >= 512
    });
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = g.stats();
        if again.swap_ins == s.swap_ins {
            break;
        }
        s = again;
    }
    assert_eq!(s.resident_pages + s.inflight_pages, 512 - 32, "{s:?}");
    let states = g.vm().page_states(0, pages).unwrap();
    let swapped = |b: u64| {
        (b * 16..b * 16 + 16)
            .filter(|&p| states[p as usize] == dmm::model::PageState::Swapped)
            .count() as u64
    };
    let block = (0..pages / 16).max_by_key(|&b| swapped(b)).unwrap();
    let n = swapped(block);
    assert!(n >= 2, "no block with two swapped pages");
    let pfn = (block * 16..block * 16 + 16)
        .find(|&p| states[p as usize] == dmm::model::PageState::Swapped)
        .unwrap();
    assert_eq!(g.page(pfn)[9], pfn + 7);
    // The faulting page is woken first; its neighbours follow in the same
    // fault's handling, after the guest already runs again.
    let t = wait_for(&g, "the block read around", |t| {
        t.swap_ins - s.swap_ins >= n && t.inflight_pages == 0
    });
    assert_eq!(t.faults, s.faults + 1);
    assert_eq!(t.swap_ins - s.swap_ins, n, "{t:?}");
    assert_eq!(t.swap_ins_ahead - s.swap_ins_ahead, n - 1);
    let after = g.vm().page_states(block * 16, 16).unwrap();
    assert!(after
        .iter()
        .all(|&st| st == dmm::model::PageState::Resident));
    for p in block * 16..block * 16 + 16 {
        assert_eq!(g.page(p)[100], p + 7);
    }
    assert_eq!(
        g.stats().faults,
        t.faults,
        "the block came back in one fault"
    );
}
