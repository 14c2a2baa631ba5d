// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzzes the balloon device as a hostile guest driver would: arbitrary
//! descriptor tables, avail rings, buffer contents and config accesses on
//! all four queues, under arbitrary feature sets. Checks that the device
//! never panics and never releases a range outside guest RAM.

#![no_main]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vhost_balloon::balloon::GuestRange;
use vhost_balloon::sink::{Reason, ReleaseSink, SinkError};
use vhost_balloon::state::Shared;
use vhost_balloon::vhu_balloon::{VhuBalloon, NUM_QUEUES, STATS_TIMER_EVENT};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

const QSIZE: u16 = 16;
/// RAM: [0, 256 KiB) and [1 MiB, 1 MiB + 256 KiB), a hole between.
const REGIONS: [(u64, usize); 2] = [(0, 0x4_0000), (0x10_0000, 0x4_0000)];

/// Panics (a fuzzer finding) on any range outside guest RAM.
struct Checker(GuestMemoryMmap);

impl Checker {
    fn check(&self, ranges: &[GuestRange]) -> u64 {
        for r in ranges {
            assert!(r.len > 0 && r.gpa % 4096 == 0 && r.len % 4096 == 0, "{r:?}");
            assert!(
                self.0.check_range(GuestAddress(r.gpa), r.len as usize),
                "outside RAM: {r:?}"
            );
        }
        ranges.iter().map(GuestRange::pages).sum()
    }
}

struct Sink(Mutex<Checker>);

impl ReleaseSink for Sink {
    fn release(&self, _: &GuestMemoryMmap, _: Reason, r: &[GuestRange]) -> Result<u64, SinkError> {
        Ok(self.0.lock().unwrap().check(r))
    }
    fn reclaim_back(&self, _: &GuestMemoryMmap, r: &[GuestRange]) -> Result<u64, SinkError> {
        Ok(self.0.lock().unwrap().check(r))
    }
}

fn ring(q: usize) -> (u64, u64, u64) {
    let base = 0x1_0000 * (q as u64 + 1) - 0x8000;
    (base, base + 0x1000, base + 0x2000)
}

/// Reads fixed-size fields off the input.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(feature_bits) = input.u8() else {
        return;
    };
    let regions: Vec<_> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = GuestMemoryMmap::from_ranges(&regions).unwrap();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let sink = Arc::new(Sink(Mutex::new(Checker(mem.clone()))));
    let shared = Arc::new(Shared::default());
    let dev =
        VhuBalloon::new(shared, sink, feature_bits & 4 != 0, Duration::from_nanos(1)).unwrap();
    dev.update_memory(atomic.clone()).unwrap();
    // Bit 0: STATS_VQ, bit 1: REPORTING, bit 3: EVENT_IDX.
    let features = u64::from(feature_bits & 1) << 1 | u64::from(feature_bits & 2) << 4;
    dev.acked_features(features);
    dev.set_event_idx(feature_bits & 8 != 0);
    let vrings: Vec<VringRwLock> = (0..NUM_QUEUES)
        .map(|q| {
            let v = VringRwLock::new(atomic.clone(), QSIZE).unwrap();
            let (d, a, u) = ring(q);
            v.set_queue_size(QSIZE);
            v.set_queue_info(d, a, u).unwrap();
            v.set_queue_event_idx(feature_bits & 8 != 0);
            v.set_queue_ready(true);
            v.set_enabled(true);
            v
        })
        .collect();
    let mut avail_idx = [0u16; NUM_QUEUES];

    while let Some(op) = input.u8() {
        let q = usize::from(op >> 4) % NUM_QUEUES;
        match op & 0xf {
            // A descriptor: index, addr, len, flags, next.
            0 => {
                let (Some(i), Some(addr), Some(len), Some(flags), Some(next)) = (
                    input.u8(),
                    input.u32(),
                    input.u32(),
                    input.u16(),
                    input.u16(),
                ) else {
                    return;
                };
                let at = ring(q).0 + 16 * u64::from(i % QSIZE as u8);
                let mut raw = [0u8; 16];
                raw[0..8].copy_from_slice(&u64::from(addr).to_le_bytes());
                raw[8..12].copy_from_slice(&len.to_le_bytes());
                raw[12..14].copy_from_slice(&flags.to_le_bytes());
                raw[14..16].copy_from_slice(&next.to_le_bytes());
                mem.write_slice(&raw, GuestAddress(at)).unwrap();
            }
            // Make a head available (any value, even out of range).
            1 => {
                let Some(head) = input.u16() else { return };
                let (_, avail, _) = ring(q);
                let slot = avail + 4 + 2 * u64::from(avail_idx[q] % QSIZE);
                mem.write_obj(head, GuestAddress(slot)).unwrap();
                avail_idx[q] = avail_idx[q].wrapping_add(1);
                mem.write_obj(avail_idx[q], GuestAddress(avail + 2))
                    .unwrap();
            }
            // Raw bytes anywhere in RAM (PFN arrays, stats, or ring corruption).
            2 => {
                let (Some(addr), Some(len)) = (input.u32(), input.u8()) else {
                    return;
                };
                let Some(bytes) = input.bytes(usize::from(len)) else {
                    return;
                };
                let _ = mem.write_slice(bytes, GuestAddress(u64::from(addr) % 0x14_0000));
            }
            // Kick.
            3 => {
                let _ = dev.handle_event(q as u16, EventSet::IN, &vrings, 0);
            }
            // Stats timer.
            4 => {
                let _ = dev.handle_event(STATS_TIMER_EVENT, EventSet::IN, &vrings, 0);
            }
            // Config read and write.
            5 => {
                let (Some(off), Some(size)) = (input.u32(), input.u32()) else {
                    return;
                };
                let b = dev.get_config(off % 32, size % 32);
                assert!(b.is_empty() || b.len() == (size % 32) as usize);
            }
            6 => {
                let (Some(off), Some(len)) = (input.u8(), input.u8()) else {
                    return;
                };
                let Some(bytes) = input.bytes(usize::from(len % 32)) else {
                    return;
                };
                dev.set_config(u32::from(off % 32), bytes).unwrap();
            }
            // Guest reset.
            7 => dev.reset_device(),
            _ => {}
        }
    }
});
