// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Swap and zero-page benchmark (not a test): prints medians of several runs.
//!
//! `cargo bench -p dmm-core --bench swap [-- --runs N --mib M --lz4-only]`
//!
//! - swap-out throughput: pool to 0 over M MiB of distinct random pages
//!   (write-protect, copy, store, punch), GiB/s;
//! - swap-in latency per 4 KiB page: random reads of swapped pages through
//!   the mapping (MISSING fault, store read, `UFFDIO_COPY`), p50/p99 in us;
//!   and the same fault raised in kernel mode, as a device raises it (QEMU's
//!   own device models doing I/O from guest RAM, kernel vhost): a `pwrite`
//!   of the swapped page to a file; and raised by a device process through
//!   its own mapping and userfaultfd (a vhost-user backend that handed its
//!   uffd over, `Vm::attach_device`: DMM's device thread swaps in and wakes);
//! - the same two with the store raw and LZ4-compressed, on random pages and
//!   on half text-like, half random pages, with the swap file's bytes per
//!   stored page (`st_blocks`) and the share of pages kept compressed;
//! - zero reclaim throughput: pool to 0 over M MiB of touched zero pages
//!   (scan, write-protect, re-check, punch), GiB/s; and the zero check alone
//!   over a buffer (GiB/s per core);
//! - cold-page selection: a hot set (20% of pages, 90% of accesses, writes)
//!   with the pool at 50%: swap-ins per 1000 accesses, CLOCK vs random.

#![allow(clippy::unwrap_used)]

use std::os::fd::AsRawFd;
use std::time::Instant;

use dmm::policy::evict::is_zero;
use dmm::policy::swap::Selection;
use dmm::vm::Vm;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{swap_guest, Mapped};
#[path = "../tests/common/device.rs"]
mod device;

mod util;
use util::{arg, median};

const PS: u64 = 4096;

struct Guest {
    ram: Mapped,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn new(size: u64, policies: &str) -> Guest {
        Guest::with(size, policies, false)
    }

    fn with(size: u64, policies: &str, swap_compress: bool) -> Guest {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        Guest {
            ram: swap_guest(dir.path(), size, policies, swap_compress, "bench-swap"),
            _dir: dir,
        }
    }

    fn vm(&self) -> &Vm {
        &self.ram.vm
    }

    fn word(&self, pfn: u64, i: u64) -> *mut u64 {
        self.ram.page_ptr(pfn, PS).wrapping_add(i as usize)
    }

    fn fill_random(&self, seed: u64) {
        self.fill(seed, Data::Random);
    }

    fn fill(&self, seed: u64, data: Data) {
        const VOCAB: [&[u8; 8]; 16] = [
            b"memory  ",
            b"pool    ",
            b"guest   ",
            b"page of ",
            b"swap    ",
            b"the     ",
            b"kernel  ",
            b"and a   ",
            b"balloon ",
            b"fault   ",
            b"zero    ",
            b"host    ",
            b"shrinks ",
            b"grows   ",
            b"process ",
            b"thread  ",
        ];
        let mut x = seed | 1;
        for pfn in 0..self.ram.len() as u64 / PS {
            if data == Data::Mixed && pfn % 2 == 0 {
                // Text-like: words of a small vocabulary, one per word slot.
                for i in 0..512 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let w = u64::from_le_bytes(*VOCAB[(x % 16) as usize]);
                    // SAFETY: inside the mapping.
                    unsafe { self.word(pfn, i).write_volatile(w) };
                }
                continue;
            }
            for i in 0..512 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // SAFETY: inside the mapping.
                unsafe { self.word(pfn, i).write_volatile(x) };
            }
        }
    }

    /// Shrinks the pool; returns (wall seconds, CPU seconds of the process).
    fn shrink(&self, pool: u64) -> (f64, f64) {
        let (t, c) = (Instant::now(), cpu_seconds());
        self.vm().set_pool_size(pool).unwrap();
        // Pages being swapped out (in flight) are still held: a shrink is
        // done when neither is left above the pool.
        let held = |s: dmm::vm::Stats| (s.resident_pages + s.inflight_pages) * PS;
        while held(self.vm().stats()) > pool {
            self.vm().run_policies();
        }
        (t.elapsed().as_secs_f64(), cpu_seconds() - c)
    }
}

/// CPU time of the whole process (all threads), seconds: a figure the
/// machine's load does not inflate the way it does wall time.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn gib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30) / secs
}

/// What the swapped pages hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    /// Distinct random pages (incompressible).
    Random,
    /// Even pages text-like (words of a small vocabulary), odd pages random.
    Mixed,
}

/// One swap run: swap-out GiB/s (wall, per CPU-second), swap-in latencies
/// (us), and the store's file bytes and compressed slots per stored page.
struct SwapRun {
    out: (f64, f64),
    lat: Vec<f64>,
    /// Kernel-mode (device) faults: `pwrite` of a swapped page, us.
    dev_lat: Vec<f64>,
    /// A device process's faults through its own mapping and uffd, us.
    proc_lat: Vec<f64>,
    file_per_page: f64,
    compressed: f64,
}

fn swap_run_with(size: u64, seed: u64, data: Data, compress: bool) -> SwapRun {
    let g = Guest::with(size, "swap", compress);
    g.fill(seed, data);
    let (secs, cpu) = g.shrink(0);
    let out = (gib_s(size, secs), gib_s(size, cpu));
    let s = g.vm().stats();
    let used = s.swap_slots_used.max(1) as f64;
    let (file_per_page, compressed) = (
        s.swap_file_bytes as f64 / used,
        s.swap_compressed_slots as f64 / used,
    );
    // One fault's cost: no read-around, and the grow below brings nothing
    // home in the background.
    g.vm().set_fault_around(PS).unwrap();
    g.vm().set_pool_size(size).unwrap();
    // Distinct random pages (a shuffled prefix): the first n for vCPU-like
    // reads, the next n for kernel-mode ones, the next n through a device
    // process's mapping, each page swapped when touched.
    let pages = size / PS;
    let n = (pages / 4).min(20_000) as usize;
    let mut order: Vec<u64> = (0..pages).collect();
    let mut x = seed | 1;
    for i in 0..3 * n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = i + (x % (pages - i as u64)) as usize;
        order.swap(i, j);
    }
    let mut lat = Vec::with_capacity(n);
    for &pfn in &order[..n] {
        let t = Instant::now();
        // SAFETY: inside the mapping.
        let _ = unsafe { g.word(pfn, 0).read_volatile() };
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let sink = tempfile::tempfile().unwrap();
    let mut dev_lat = Vec::with_capacity(n);
    for &pfn in &order[n..2 * n] {
        let t = Instant::now();
        // SAFETY: reads one page inside the mapping; the kernel's copy from
        // it takes the userfaultfd fault in kernel mode.
        let done = unsafe { libc::pwrite(sink.as_raw_fd(), g.word(pfn, 0).cast(), PS as usize, 0) };
        dev_lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(done, PS as isize, "pwrite from swapped page {pfn}");
    }
    let dev = device::Device::attach(g.ram.vm.clone(), "bench-device");
    let mut proc_lat = Vec::with_capacity(n);
    for &pfn in &order[2 * n..3 * n] {
        let t = Instant::now();
        // SAFETY: inside the device's mapping of guest RAM.
        let _ = unsafe { dev.page_ptr(pfn).read_volatile() };
        proc_lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(dev);
    SwapRun {
        out,
        lat,
        dev_lat,
        proc_lat,
        file_per_page,
        compressed,
    }
}

/// Percentile `q` of each run's latencies, median over runs.
fn pct(lats: &[&Vec<f64>], q: f64) -> f64 {
    median(
        lats.iter()
            .map(|l| {
                let mut v = (*l).clone();
                v.sort_by(f64::total_cmp);
                v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
            })
            .collect(),
    )
}

fn zero_run(size: u64) -> (f64, f64) {
    let g = Guest::new(size, "zero");
    for pfn in 0..size / PS {
        // SAFETY: inside the mapping.
        unsafe { g.word(pfn, 0).write_volatile(0) };
    }
    let (secs, cpu) = g.shrink(0);
    (gib_s(size, secs), gib_s(size, cpu))
}

/// Swap-ins per 1000 accesses of a hot-set workload with the pool at 50%.
fn cold_run(size: u64, sel: Selection, seed: u64) -> f64 {
    let g = Guest::new(size, "swap");
    g.vm().set_cold_selection(sel);
    let pages = size / PS;
    g.fill_random(seed);
    let hot = pages / 5;
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let access = |g: &Guest, n: u64, next: &mut dyn FnMut() -> u64| {
        for _ in 0..n {
            let r = next();
            // Hot pages are spread over guest RAM (every 5th page).
            let pfn = if r % 10 < 9 {
                (r / 10 % hot) * 5
            } else {
                r / 10 % pages
            };
            // SAFETY: inside the mapping.
            unsafe { g.word(pfn, r % 512).write_volatile(r) };
        }
    };
    // Warm up: the hot set is written while the pool is full.
    access(&g, pages * 2, &mut next);
    g.vm().set_pool_size(pages / 2 * PS).unwrap();
    // Reclaim runs in rounds while the workload goes on (as the policy thread would).
    let rounds = 20;
    let per = pages / 4;
    let before = g.vm().stats().swap_ins;
    for _ in 0..rounds {
        access(&g, per, &mut next);
        g.vm().run_policies();
    }
    let ins = g.vm().stats().swap_ins - before;
    ins as f64 * 1000.0 / (rounds * per) as f64
}

/// Swap-out and swap-in with the store raw and LZ4-compressed, on random
/// and on mixed pages.
fn store_modes(size: u64, runs: u64) {
    println!("  store raw vs lz4 (swap-out GiB/s wall and per CPU-second; swap-in p50/p99; file bytes per stored page):");
    for data in [Data::Random, Data::Mixed] {
        for compress in [false, true] {
            let rs: Vec<SwapRun> = (0..runs)
                .map(|r| swap_run_with(size, 177 + r, data, compress))
                .collect();
            let lats: Vec<&Vec<f64>> = rs.iter().map(|r| &r.lat).collect();
            println!(
                "    {:<7} {:<4} out {:5.2} GiB/s, {:5.2} GiB/CPU-s; in p50 {:5.1} us, p99 {:5.1} us; {:6.0} file bytes/page, {:3.0}% compressed",
                format!("{data:?}"),
                if compress { "lz4" } else { "raw" },
                median(rs.iter().map(|r| r.out.0).collect()),
                median(rs.iter().map(|r| r.out.1).collect()),
                pct(&lats, 0.5),
                pct(&lats, 0.99),
                median(rs.iter().map(|r| r.file_per_page).collect()),
                100.0 * median(rs.iter().map(|r| r.compressed).collect()),
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 5).max(1);
    let size = arg(&args, "--mib", 256) << 20;
    let mut load = [0f64; 3];
    // SAFETY: writes three doubles.
    unsafe { libc::getloadavg(load.as_mut_ptr(), 3) };
    println!(
        "dmm-core swap bench: {} MiB memfd, median of {runs} runs, load average {:.1}",
        size >> 20,
        load[0]
    );
    if args.iter().any(|a| a == "--lz4-only") {
        store_modes(size, runs);
        return;
    }
    let rs: Vec<SwapRun> = (0..runs)
        .map(|r| swap_run_with(size, 77 + r, Data::Random, false))
        .collect();
    let out = median(rs.iter().map(|r| r.out.0).collect());
    let out_cpu = median(rs.iter().map(|r| r.out.1).collect());
    let lats: Vec<&Vec<f64>> = rs.iter().map(|r| &r.lat).collect();
    let dev_lats: Vec<&Vec<f64>> = rs.iter().map(|r| &r.dev_lat).collect();
    let proc_lats: Vec<&Vec<f64>> = rs.iter().map(|r| &r.proc_lat).collect();
    println!(
        "  swap-out                       {out:6.2} GiB/s wall, {out_cpu:6.2} GiB per CPU-second"
    );
    println!(
        "  swap-in per 4 KiB page, random p50 {:6.1} us, p99 {:6.1} us",
        pct(&lats, 0.5),
        pct(&lats, 0.99)
    );
    println!(
        "  swap-in, kernel-mode (device) fault: pwrite of the page p50 {:6.1} us, p99 {:6.1} us",
        pct(&dev_lats, 0.5),
        pct(&dev_lats, 0.99)
    );
    println!(
        "  swap-in, device process's fault (own mapping and uffd) p50 {:6.1} us, p99 {:6.1} us",
        pct(&proc_lats, 0.5),
        pct(&proc_lats, 0.99)
    );
    store_modes(size, runs);
    let zs: Vec<(f64, f64)> = (0..runs).map(|_| zero_run(size)).collect();
    let z = median(zs.iter().map(|r| r.0).collect());
    let zc = median(zs.iter().map(|r| r.1).collect());
    println!("  zero reclaim (scan+wp+punch)   {z:6.2} GiB/s wall, {zc:6.2} GiB per CPU-second");
    let buf = vec![0u8; 64 << 20];
    let zcheck = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let mut n = 0;
                for _ in 0..8 {
                    n += usize::from(std::hint::black_box(is_zero(std::hint::black_box(&buf))));
                }
                assert_eq!(n, 8);
                gib_s(8 * buf.len() as u64, t.elapsed().as_secs_f64())
            })
            .collect(),
    );
    println!("  zero check alone, one core     {zcheck:6.2} GiB/s");
    let cold = (size / 4).max(16 << 20);
    for sel in [Selection::Clock, Selection::Random] {
        let v = median((0..runs).map(|r| cold_run(cold, sel, 5 + r)).collect());
        println!(
            "  hot set 20%/90%, pool 50% of {} MiB, {sel:?}: {v:6.1} swap-ins per 1000 accesses",
            cold >> 20
        );
    }
}
