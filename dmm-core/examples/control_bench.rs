// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Benchmark of the control socket on a Linux VM (memfd + userfaultfd):
//! request round trip, and `release` throughput as vhost-balloon drives it
//! (batches of one-page ranges) and with merged ranges. Prints medians.
//!
//!   cargo run --release -p dmm-core --example control_bench [-- RUNS]

use std::time::Instant;

use dmm::control::Client;
use dmm::vm::{PolicySet, ReleaseReason, Vm, VmConfig};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{st_blocks_bytes as held, Mapped};

const SIZE: u64 = 256 << 20;
const PAGE: u64 = 4096;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("bench.sock");
    let vm = Vm::new_linux(VmConfig {
        control_path: Some(sock.clone()),
        policies: PolicySet {
            balloon: true,
            report: true,
            ..PolicySet::default()
        },
        ..VmConfig::new("control-bench", SIZE)
    })?;
    let fd = vm.memfd().ok_or("no memfd")?;
    let mapped = Mapped::new(vm.clone());
    let (ram, len) = (mapped.addr() as *mut u8, mapped.len());
    let mut client = Client::connect(&sock)?;

    // Round trip of a small request.
    let mut rtt = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        for _ in 0..1000 {
            client.stats()?;
        }
        rtt.push(t.elapsed().as_secs_f64() * 1e6 / 1000.0);
    }
    println!(
        "stats round trip: median {:.1} us ({runs} runs of 1000)",
        median(rtt)
    );

    let pages = SIZE / PAGE;
    for (label, per_range, batch) in [
        ("1-page ranges, 4096 per request", 1u64, 4096usize),
        ("2 MiB ranges, 1 request", 512, 128),
    ] {
        let mut rates = Vec::new();
        for _ in 0..runs {
            // SAFETY: `ram` maps SIZE bytes, live for the whole benchmark.
            unsafe { std::ptr::write_bytes(ram, 0x5a, len) };
            let before = held(fd);
            let ranges: Vec<(u64, u64)> = (0..pages / per_range)
                .map(|i| (i * per_range * PAGE, per_range * PAGE))
                .collect();
            let t = Instant::now();
            let mut released = 0;
            for chunk in ranges.chunks(batch) {
                released += client
                    .release(ReleaseReason::Balloon, chunk.to_vec())?
                    .pages;
            }
            let secs = t.elapsed().as_secs_f64();
            client.reclaim_back(vec![(0, SIZE)])?;
            assert_eq!(released, pages);
            let after = held(fd);
            assert!(
                after < before / 100,
                "memfd still holds {after} of {before} bytes"
            );
            rates.push((before - after) as f64 / (1 << 20) as f64 / secs);
        }
        println!(
            "release {label}: median {:.0} MiB/s given back ({runs} runs of 256 MiB)",
            median(rates)
        );
    }

    drop(mapped);
    Ok(())
}
