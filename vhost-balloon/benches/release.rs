// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Pages released per second by the no-DMM path (hole punching on the
//! guest-RAM memfd), for inflate batches of 256 PFNs as the Linux driver
//! sends them: coalesced into ranges (what the device does) against one
//! fallocate per page. Prints the median of several runs; not a test.
//!
//! `cargo bench -p vhost-balloon --bench release [-- RUNS]`

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use vhost_balloon::balloon::{coalesce, PAGE_SIZE};
use vhost_balloon::sink::{punch_fd, PunchHole};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 256 << 20;
const BATCH: usize = 256;

fn memfd() -> File {
    // SAFETY: NUL-terminated literal name; the result is checked and owned by File.
    let fd = unsafe { libc::memfd_create(c"balloon-bench".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(MEM).expect("set_len");
    f
}

/// PFN order: ascending runs (a fresh balloon) or a shuffle (a fragmented guest).
fn order(shuffled: bool) -> Vec<u64> {
    let mut pfns: Vec<u64> = (0..MEM / PAGE_SIZE).collect();
    if shuffled {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in (1..pfns.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pfns.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }
    pfns
}

/// One run: touch everything, then release it all in batches; returns pages/s.
fn run(mem: &GuestMemoryMmap, file: &File, pfns: &[u64], coalesced: bool) -> f64 {
    for p in 0..MEM / PAGE_SIZE {
        mem.write_obj(1u8, GuestAddress(p * PAGE_SIZE))
            .expect("touch");
    }
    assert_eq!(file.metadata().expect("fstat").blocks() * 512, MEM);
    let start = Instant::now();
    for batch in pfns.chunks(BATCH) {
        if coalesced {
            let mut gpas: Vec<u64> = batch.iter().map(|p| p * PAGE_SIZE).collect();
            for r in coalesce(&mut gpas) {
                PunchHole::punch(mem, r).expect("punch");
            }
        } else {
            for p in batch {
                punch_fd(file.as_raw_fd(), p * PAGE_SIZE, PAGE_SIZE).expect("punch");
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        file.metadata().expect("fstat").blocks(),
        0,
        "not everything was released"
    );
    pfns.len() as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let file = memfd();
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        MEM as usize,
        Some(FileOffset::new(file.try_clone().expect("dup"), 0)),
    )])
    .expect("mmap");
    println!(
        "vhost-balloon release: {} MiB memfd, batches of {BATCH} PFNs, median of {runs} runs",
        MEM >> 20
    );
    println!(
        "{:<12} {:<22} {:>14} {:>10}",
        "pfn order", "method", "pages/s", "MiB/s"
    );
    for shuffled in [false, true] {
        let pfns = order(shuffled);
        for coalesced in [true, false] {
            let m = median(
                (0..runs)
                    .map(|_| run(&mem, &file, &pfns, coalesced))
                    .collect(),
            );
            println!(
                "{:<12} {:<22} {:>14.0} {:>10.0}",
                if shuffled { "shuffled" } else { "ascending" },
                if coalesced {
                    "coalesced ranges"
                } else {
                    "fallocate per page"
                },
                m,
                m * PAGE_SIZE as f64 / f64::from(1 << 20)
            );
        }
    }
}
