// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket on a real Linux VM (memfd + userfaultfd): a `release`
//! over the socket gives memory back to the host (fstat `st_blocks`), keeps
//! every other page's data, and bad ranges release nothing.
#![allow(clippy::unwrap_used)]

use dmm::control::Client;
use dmm::vm::{PolicySet, ReleaseReason, Vm, VmConfig};

mod common;
use common::{st_blocks_bytes as held, Mapped};

const SIZE: u64 = 32 << 20;
const PAGE: u64 = 4096;
const PAGES: u64 = SIZE / PAGE;

/// FNV-1a of a page.
fn checksum(page: &[u8]) -> u64 {
    page.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn release_over_the_socket_frees_memory_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("linux.sock");
    let vm = Vm::new_linux(VmConfig {
        control_path: Some(sock.clone()),
        policies: PolicySet {
            balloon: true,
            report: true,
            ..PolicySet::default()
        },
        ..VmConfig::new("control-linux", SIZE)
    })
    .unwrap();
    let fd = vm.memfd().unwrap();
    let mapped = Mapped::new(vm.clone());
    let (ram, len) = (mapped.addr() as *mut u8, mapped.len());
    // SAFETY: `ram` maps `len` bytes for this whole test; only this thread
    // touches it (the fault thread fills pages through userfaultfd).
    let mem = unsafe { std::slice::from_raw_parts_mut(ram, len) };
    for (i, page) in mem.chunks_mut(PAGE as usize).enumerate() {
        for (j, b) in page.iter_mut().enumerate() {
            *b = (i * 7 + j) as u8 | 1;
        }
    }
    let sums: Vec<u64> = mem.chunks(PAGE as usize).map(checksum).collect();
    let full = held(fd);
    assert_eq!(
        full, SIZE,
        "memfd holds {full} bytes after touching all of it"
    );

    let mut c = Client::connect(&sock).unwrap();
    // Bad ranges release nothing.
    let out = c
        .release(
            ReleaseReason::Balloon,
            vec![(SIZE, PAGE), (SIZE - PAGE, 2 * PAGE), (12, PAGE)],
        )
        .unwrap();
    assert_eq!(out.pages, 0);
    assert!(out.ignored > 0);
    assert_eq!(held(fd), full);

    // Every other page of the first half, as vhost-balloon sends them.
    let ranges: Vec<(u64, u64)> = (0..PAGES / 2)
        .step_by(2)
        .map(|p| (p * PAGE, PAGE))
        .collect();
    let n = ranges.len() as u64;
    let out = c.release(ReleaseReason::Balloon, ranges).unwrap();
    assert_eq!((out.pages, out.bytes), (n, n * PAGE));
    assert_eq!(
        held(fd),
        full - n * PAGE,
        "the hole punch did not give the memory back"
    );
    let s = c.stats().unwrap().stats;
    assert_eq!(
        (s.ballooned_pages, s.host_allocated_bytes),
        (n, full - n * PAGE)
    );

    for (pfn, page) in mem.chunks(PAGE as usize).enumerate() {
        let pfn = pfn as u64;
        if pfn < PAGES / 2 && pfn % 2 == 0 {
            continue; // ballooned: the guest must not touch it until deflate
        }
        assert_eq!(
            checksum(page),
            sums[pfn as usize],
            "page {pfn} lost its data"
        );
    }

    // Deflate: the pages come back zero-filled on touch.
    c.reclaim_back(vec![(0, SIZE / 2)]).unwrap();
    assert!(
        mem[..PAGE as usize].iter().all(|&b| b == 0),
        "a deflated page kept old data"
    );

    drop(mapped);
}
