// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! dmm-core benchmark (not a test): prints medians of several runs.
//!
//! `cargo bench -p dmm-core --bench core [-- --runs N --mib M]`
//!
//! - first touch per 4 KiB page through the uffd path (sequential, random, and
//!   sparse random where fault-around costs pool pages), for several
//!   fault-around sizes, against plain first touch of the same kind of memfd;
//! - release throughput: `Vm::release` of single-page ranges (coalesced into
//!   one hole punch per run) against one `fallocate` per page;
//! - P2M metadata bytes per page.

#![allow(clippy::unwrap_used)]

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use dmm::vm::{GuestRange, ReleaseReason, Vm, VmConfig};

mod util;
use util::{arg, median};

const PS: u64 = 4096;

struct Map {
    addr: usize,
    len: usize,
}

impl Map {
    fn new(fd: RawFd, len: u64) -> Map {
        // SAFETY: a fresh shared mapping of a memfd of `len` bytes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        Map {
            addr: p as usize,
            len: len as usize,
        }
    }

    fn touch(&self, pfn: u64) {
        // SAFETY: inside the mapping.
        unsafe { ((self.addr + (pfn * PS) as usize) as *mut u8).write_volatile(1) };
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

fn vm(size: u64) -> Arc<Vm> {
    Vm::new_linux(VmConfig {
        ..VmConfig::new("bench", size)
    })
    .unwrap()
}

fn plain_memfd(size: u64) -> RawFd {
    // SAFETY: valid name and flags.
    let fd = unsafe { libc::memfd_create(c"bench-plain".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: our fd.
    assert_eq!(unsafe { libc::ftruncate(fd, size as libc::off_t) }, 0);
    fd
}

fn shuffled(pages: u64, take: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..pages).collect();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v.truncate(take as usize);
    v
}

#[derive(Clone, Copy)]
enum Order {
    Seq,
    Random,
    Sparse,
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::Seq => "sequential",
            Order::Random => "random",
            Order::Sparse => "sparse-random-1/16",
        }
    }

    fn pages(self, pages: u64, run: u64) -> Vec<u64> {
        match self {
            Order::Seq => (0..pages).collect(),
            Order::Random => shuffled(pages, pages, 0x9E37 + run),
            Order::Sparse => shuffled(pages, pages / 16, 0x5151 + run),
        }
    }
}

/// One run through the uffd path: (us per touched page, resident per touched page).
fn uffd_run(size: u64, around: u64, order: Order, run: u64) -> (f64, f64) {
    let vm = vm(size);
    vm.set_fault_around(around).unwrap();
    let map = Map::new(vm.memfd().unwrap(), size);
    // SAFETY: `map` outlives the Vm's shutdown below.
    unsafe { vm.attach(map.addr as *mut u8, size) }.unwrap();
    let touches = order.pages(size / PS, run);
    let t = Instant::now();
    touches.iter().for_each(|&p| map.touch(p));
    let el = t.elapsed();
    let resident = vm.stats().resident_pages;
    vm.shutdown();
    let n = touches.len() as f64;
    (el.as_secs_f64() * 1e6 / n, resident as f64 / n)
}

fn plain_run(size: u64, order: Order, run: u64) -> f64 {
    let fd = plain_memfd(size);
    let map = Map::new(fd, size);
    let touches = order.pages(size / PS, run);
    let t = Instant::now();
    touches.iter().for_each(|&p| map.touch(p));
    let el = t.elapsed();
    drop(map);
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    el.as_secs_f64() * 1e6 / touches.len() as f64
}

/// Release of every page of a populated VM: (GiB/s coalesced, GiB/s per-page fallocate).
fn release_run(size: u64, run: u64) -> (f64, f64) {
    let gib = size as f64 / (1u64 << 30) as f64;
    let pages = size / PS;
    let ranges: Vec<GuestRange> = shuffled(pages, pages, 0x77 + run)
        .into_iter()
        .map(|p| GuestRange {
            gpa: p * PS,
            len: PS,
        })
        .collect();
    let populate = |vm: &Arc<Vm>| {
        let map = Map::new(vm.memfd().unwrap(), size);
        // SAFETY: `map` stays mapped until the shutdown below.
        unsafe { vm.attach(map.addr as *mut u8, size) }.unwrap();
        (0..pages).for_each(|p| map.touch(p));
        vm.shutdown();
    };
    let a = vm(size);
    a.set_fault_around(256 << 10).unwrap();
    populate(&a);
    let t = Instant::now();
    let out = a.release(&ranges, ReleaseReason::Balloon).unwrap();
    let coalesced = t.elapsed();
    assert_eq!(out.bytes, size);
    assert_eq!(a.stats().host_allocated_bytes, 0);

    let b = vm(size);
    b.set_fault_around(256 << 10).unwrap();
    populate(&b);
    let fd = b.memfd().unwrap();
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let t = Instant::now();
    for r in &ranges {
        // SAFETY: plain syscall on the VM's memfd, inside the file.
        let rc = unsafe { libc::fallocate(fd, mode, r.gpa as libc::off_t, PS as libc::off_t) };
        assert_eq!(rc, 0);
    }
    let per_page = t.elapsed();
    assert_eq!(b.stats().host_allocated_bytes, 0);
    (gib / coalesced.as_secs_f64(), gib / per_page.as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 5).max(1);
    let size = arg(&args, "--mib", 256) << 20;
    println!(
        "dmm-core bench: {} MiB memfd, median of {runs} runs",
        size >> 20
    );

    println!("\nfirst touch, us per touched 4 KiB page (resident pages per touched page)");
    for order in [Order::Seq, Order::Random, Order::Sparse] {
        let plain = median((0..runs).map(|r| plain_run(size, order, r)).collect());
        println!(
            "  {:<20} plain memfd, no uffd      {plain:7.2} us",
            order.name()
        );
        for around in [4u64 << 10, 16 << 10, 64 << 10, 256 << 10] {
            let rs: Vec<(f64, f64)> = (0..runs)
                .map(|r| uffd_run(size, around, order, r))
                .collect();
            let us = median(rs.iter().map(|r| r.0).collect());
            let res = median(rs.iter().map(|r| r.1).collect());
            println!(
                "  {:<20} uffd fault-around {:>4} KiB {us:7.2} us ({res:.2} resident/touched, {:.1}x plain)",
                order.name(),
                around >> 10,
                us / plain
            );
        }
    }

    println!("\nrelease of every page as single-page ranges, shuffled, GiB/s");
    let rs: Vec<(f64, f64)> = (0..runs).map(|r| release_run(size, r)).collect();
    println!(
        "  Vm::release (coalesced)      {:8.2} GiB/s",
        median(rs.iter().map(|r| r.0).collect())
    );
    println!(
        "  one fallocate per page       {:8.2} GiB/s",
        median(rs.iter().map(|r| r.1).collect())
    );

    let v = vm(size);
    let pages = size / PS;
    println!(
        "\nP2M metadata: {} bytes for {pages} pages = {:.3} bytes/page",
        v.p2m_metadata_bytes(),
        v.p2m_metadata_bytes() as f64 / pages as f64
    );
}
