// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-balloon device logic (virtio 1.2, section 5.5), free of vhost-user:
//! the config space, and the parsing and validation of what the driver puts
//! on each queue. Everything here treats guest input as hostile: bad input is
//! ignored and counted, never a panic, never a range outside guest RAM.

use std::collections::BTreeMap;

use serde::Serialize;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Balloon PFNs are always in 4 KiB units (`VIRTIO_BALLOON_PFN_SHIFT`).
pub const PFN_SHIFT: u32 = 12;
/// Bytes in one balloon page.
pub const PAGE_SIZE: u64 = 1 << PFN_SHIFT;
/// Largest PFN array accepted in one inflate/deflate chain. Linux sends at
/// most `VIRTIO_BALLOON_ARRAY_PFNS_MAX` = 256; we accept up to 4 times that.
pub const MAX_PFNS_PER_CHAIN: usize = 1024;
/// Largest stats buffer accepted (Linux sends 16 entries of 10 bytes).
pub const MAX_STATS_BYTES: usize = 64 * STAT_ENTRY_SIZE;
/// Size of one `struct virtio_balloon_stat` (packed: le16 tag, le64 value).
pub const STAT_ENTRY_SIZE: usize = 10;
/// Size of `struct virtio_balloon_config` we serve: num_pages, actual,
/// free_page_hint_cmd_id, poison_val.
pub const CONFIG_SIZE: usize = 16;
/// Offset of `actual` in the config space.
pub const CONFIG_ACTUAL_OFFSET: usize = 4;
/// Config space bytes the driver needs to read `free_page_hint_cmd_id`.
pub const CONFIG_HINT_END: u32 = 12;
/// `free_page_hint_cmd_id` values virtio reserves: the driver's "no more
/// hints" on the queue ...
pub const HINT_CMD_ID_STOP: u32 = 0;
/// ... and the device's "hinted pages are yours again" in the config space.
pub const HINT_CMD_ID_DONE: u32 = 1;

/// virtio-balloon feature bits.
pub mod features {
    /// Guest must tell the host before reusing deflated pages (not offered).
    pub const MUST_TELL_HOST: u32 = 0;
    /// Statistics virtqueue.
    pub const STATS_VQ: u32 = 1;
    /// Deflate on guest OOM.
    pub const DEFLATE_ON_OOM: u32 = 2;
    /// Free page hinting (offered with DMM: `--free-page-hint`).
    pub const FREE_PAGE_HINT: u32 = 3;
    /// Free page reporting virtqueue.
    pub const REPORTING: u32 = 5;
}

/// Names of the `VIRTIO_BALLOON_S_*` tags, as Linux prints them.
pub const STAT_NAMES: [&str; 16] = [
    "swap-in",
    "swap-out",
    "major-faults",
    "minor-faults",
    "free-memory",
    "total-memory",
    "available-memory",
    "disk-caches",
    "hugetlb-allocations",
    "hugetlb-failures",
    "oom-kills",
    "alloc-stalls",
    "async-scans",
    "direct-scans",
    "async-reclaims",
    "direct-reclaims",
];

/// What a queue is used for; the index of stats and reporting depends on the
/// negotiated features (a queue without its feature does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    /// Queue 0: PFNs the guest gives up.
    Inflate,
    /// Queue 1: PFNs the guest takes back.
    Deflate,
    /// Guest statistics.
    Stats,
    /// Free page hints.
    FreePageHint,
    /// Free page reporting.
    Reporting,
}

/// Maps a queue index to its role under the acked virtio features.
pub fn queue_role(index: usize, acked_features: u64) -> Option<QueueRole> {
    let stats = acked_features & (1 << features::STATS_VQ) != 0;
    let hint = acked_features & (1 << features::FREE_PAGE_HINT) != 0;
    let reporting = acked_features & (1 << features::REPORTING) != 0;
    let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
    if stats {
        roles.push(QueueRole::Stats);
    }
    if hint {
        roles.push(QueueRole::FreePageHint);
    }
    if reporting {
        roles.push(QueueRole::Reporting);
    }
    roles.get(index).copied()
}

/// Device counters (monotonic), served by `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Inflate chains completed.
    pub inflate_chains: u64,
    /// Deflate chains completed.
    pub deflate_chains: u64,
    /// Stats buffers parsed.
    pub stats_buffers: u64,
    /// Free page report chains completed.
    pub report_chains: u64,
    /// Free page hint rounds the guest ended (sent its stop id).
    pub hint_rounds: u64,
    /// 4 KiB pages the guest hinted free.
    pub pages_hinted: u64,
    /// Hinted blocks of no round under way (late, or a stale id).
    pub stale_hints: u64,
    /// Valid PFNs the guest put in the balloon.
    pub pages_inflated: u64,
    /// Valid PFNs the guest took back.
    pub pages_deflated: u64,
    /// 4 KiB pages the guest reported free.
    pub pages_reported: u64,
    /// Pages really given back (hole punched or accepted by DMM).
    pub pages_released: u64,
    /// PFNs or report ranges outside guest RAM, overflowing, or unaligned.
    pub invalid_pfns: u64,
    /// Chains or descriptors of the wrong direction, size or address.
    pub bad_descriptors: u64,
    /// Config writes not covering exactly `actual`, or out of bounds.
    pub bad_config_writes: u64,
    /// Config reads out of bounds.
    pub bad_config_reads: u64,
    /// Stats entries with an unknown tag.
    pub unknown_stat_tags: u64,
    /// Releases or reclaims that failed (fallocate or DMM error).
    pub release_errors: u64,
    /// Config-change notices sent to the frontend.
    pub config_changes: u64,
    /// Config-change notices that could not be sent.
    pub config_change_errors: u64,
    /// Queue events that failed (unusable ring, signal failure).
    pub queue_errors: u64,
    /// `pin`/`unpin` requests of vring pages that failed (DMM mode).
    pub pin_errors: u64,
}

/// A guest-physical byte range (page aligned, page multiple).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GuestRange {
    /// Start address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

impl GuestRange {
    /// Number of 4 KiB pages in the range.
    pub fn pages(&self) -> u64 {
        self.len >> PFN_SHIFT
    }
}

/// One descriptor as the driver posted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Device-writable (`VRING_DESC_F_WRITE`).
    pub write_only: bool,
}

impl From<virtio_queue::desc::split::Descriptor> for Desc {
    fn from(d: virtio_queue::desc::split::Descriptor) -> Self {
        Desc {
            addr: d.addr().0,
            len: d.len(),
            write_only: d.is_write_only(),
        }
    }
}

/// The balloon config space (`struct virtio_balloon_config`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigSpace {
    /// Target: pages the host wants in the balloon.
    pub num_pages: u32,
    /// Pages the driver says are in the balloon.
    pub actual: u32,
    /// Free page hint round the device asks for (or STOP / DONE).
    pub free_page_hint_cmd_id: u32,
}

impl ConfigSpace {
    fn bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0u8; CONFIG_SIZE];
        b[0..4].copy_from_slice(&self.num_pages.to_le_bytes());
        b[4..8].copy_from_slice(&self.actual.to_le_bytes());
        b[8..12].copy_from_slice(&self.free_page_hint_cmd_id.to_le_bytes());
        // poison_val stays 0: VIRTIO_BALLOON_F_PAGE_POISON is not offered
        // (hinted pages are reclaimed only if they read as zeros).
        b
    }

    /// Serves a read of `size` bytes at `offset`; `None` if out of bounds.
    pub fn read(&self, offset: u32, size: u32) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        self.bytes().get(start..end).map(<[u8]>::to_vec)
    }

    /// Applies a write of `buf` at `offset`. Only `actual` is writable by the
    /// driver; the write must contain all of it. QEMU's `vhost-user-base`
    /// writes the whole config space (offset 0) on every guest write, so the
    /// other bytes of a covering write are dropped silently. Returns the new
    /// `actual`, or `None` when the write is ignored (the caller counts it).
    pub fn write(&mut self, offset: u32, buf: &[u8]) -> Option<u32> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(buf.len())?;
        let field = CONFIG_ACTUAL_OFFSET..CONFIG_ACTUAL_OFFSET + 4;
        if end > CONFIG_SIZE || start > field.start || end < field.end {
            return None;
        }
        let at = field.start - start;
        let bytes: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        self.actual = u32::from_le_bytes(bytes);
        Some(self.actual)
    }
}

/// Reads a driver-readable chain of little-endian u32 PFNs and returns the
/// guest-physical address of every valid one. A chain with a device-writable
/// descriptor, a length that is not a multiple of 4, more than
/// [`MAX_PFNS_PER_CHAIN`] PFNs, or an unreadable buffer is ignored as a whole
/// (`bad_descriptors`); a PFN whose page is not entirely inside guest RAM is
/// skipped (`invalid_pfns`), and so is PFN 0: no guest balloons its first
/// page (Linux reserves it), and it is what an array reads as if its page
/// is not in the memfd (swapped out between the driver's write and our read:
/// this process does not fault through DMM).
pub fn parse_pfn_chain<M: GuestMemoryBackend + Bytes<GuestAddress>>(
    mem: &M,
    descs: &[Desc],
    counters: &mut Counters,
) -> Vec<u64> {
    let Some(bytes) = read_readable(mem, descs, MAX_PFNS_PER_CHAIN * 4) else {
        counters.bad_descriptors += 1;
        return Vec::new();
    };
    if bytes.len() % 4 != 0 {
        counters.bad_descriptors += 1;
        return Vec::new();
    }
    let mut gpas = Vec::with_capacity(bytes.len() / 4);
    for chunk in bytes.chunks_exact(4) {
        let pfn = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        match u64::from(pfn).checked_mul(PAGE_SIZE) {
            Some(gpa) if gpa != 0 && page_in_ram(mem, gpa, PAGE_SIZE) => gpas.push(gpa),
            _ => counters.invalid_pfns += 1,
        }
    }
    gpas
}

/// Reads the device-readable buffers of a chain into one byte vector.
/// `None` if a descriptor is device-writable, the total exceeds `cap`, or a
/// buffer is not inside guest memory.
fn read_readable<M: GuestMemoryBackend + Bytes<GuestAddress>>(
    mem: &M,
    descs: &[Desc],
    cap: usize,
) -> Option<Vec<u8>> {
    let mut total: usize = 0;
    for d in descs {
        if d.write_only {
            return None;
        }
        total = total.checked_add(usize::try_from(d.len).ok()?)?;
        if total > cap {
            return None;
        }
    }
    let mut out = vec![0u8; total];
    let mut at = 0;
    for d in descs {
        let len = usize::try_from(d.len).ok()?;
        let dst = out.get_mut(at..at + len)?;
        mem.read_slice(dst, GuestAddress(d.addr)).ok()?;
        at += len;
    }
    Some(out)
}

/// True if `[gpa, gpa + len)` is inside guest RAM (possibly spanning adjacent regions).
fn page_in_ram<M: GuestMemoryBackend>(mem: &M, gpa: u64, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    gpa.checked_add(len as u64).is_some() && mem.check_range(GuestAddress(gpa), len)
}

/// Validates a free-page-report chain: every descriptor must be
/// device-writable, page aligned, a non-zero page multiple and inside guest
/// RAM. Bad descriptors are skipped and counted; the good ones are returned.
pub fn parse_report_chain<M: GuestMemoryBackend>(
    mem: &M,
    descs: &[Desc],
    counters: &mut Counters,
) -> Vec<GuestRange> {
    let mut out = Vec::new();
    for d in descs {
        if !d.write_only {
            counters.bad_descriptors += 1;
            continue;
        }
        let len = u64::from(d.len);
        if len == 0
            || len % PAGE_SIZE != 0
            || d.addr % PAGE_SIZE != 0
            || !page_in_ram(mem, d.addr, len)
        {
            counters.invalid_pfns += 1;
            continue;
        }
        out.push(GuestRange { gpa: d.addr, len });
    }
    out
}

/// One chain of the free page hint queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintChain {
    /// The driver's command id: the round it starts, or STOP at its end.
    CmdId(u32),
    /// A free block (page aligned, a page multiple, inside guest RAM).
    Block(GuestRange),
    /// Anything else (counted in `bad_descriptors` or `invalid_pfns`).
    Bad,
}

/// Parses a free page hint chain: a driver-readable 4-byte command id, or
/// one device-writable buffer naming a free block.
pub fn parse_hint_chain<M: GuestMemoryBackend + Bytes<GuestAddress>>(
    mem: &M,
    descs: &[Desc],
    counters: &mut Counters,
) -> HintChain {
    match descs {
        [d] if !d.write_only => match read_readable(mem, descs, 4) {
            Some(b) if b.len() == 4 => {
                HintChain::CmdId(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => {
                counters.bad_descriptors += 1;
                HintChain::Bad
            }
        },
        [d] => match parse_report_chain(mem, std::slice::from_ref(d), counters).first() {
            Some(r) => HintChain::Block(*r),
            None => HintChain::Bad,
        },
        _ => {
            counters.bad_descriptors += 1;
            HintChain::Bad
        }
    }
}

/// Parses a stats buffer into tag name -> value. Unknown tags are kept as
/// `tag-<n>` and counted. A buffer that is device-writable, too long, or not
/// a multiple of the entry size is ignored (`bad_descriptors`).
pub fn parse_stats_chain<M: GuestMemoryBackend + Bytes<GuestAddress>>(
    mem: &M,
    descs: &[Desc],
    counters: &mut Counters,
) -> Option<BTreeMap<String, u64>> {
    let bytes = read_readable(mem, descs, MAX_STATS_BYTES);
    let Some(bytes) = bytes.filter(|b| b.len() % STAT_ENTRY_SIZE == 0) else {
        counters.bad_descriptors += 1;
        return None;
    };
    let mut values = BTreeMap::new();
    for e in bytes.chunks_exact(STAT_ENTRY_SIZE) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&e[2..10]);
        let val = u64::from_le_bytes(v);
        let name = match STAT_NAMES.get(usize::from(tag)) {
            Some(n) => (*n).to_string(),
            None => {
                counters.unknown_stat_tags += 1;
                format!("tag-{tag}")
            }
        };
        values.insert(name, val);
    }
    counters.stats_buffers += 1;
    Some(values)
}

/// Sorts and merges page addresses into maximal contiguous ranges
/// (duplicates collapse).
pub fn coalesce(gpas: &mut [u64]) -> Vec<GuestRange> {
    gpas.sort_unstable();
    let mut out: Vec<GuestRange> = Vec::new();
    for &gpa in gpas.iter() {
        match out.last_mut() {
            Some(r) if r.gpa + r.len == gpa => r.len += PAGE_SIZE,
            Some(r) if r.gpa + r.len > gpa => {} // duplicate
            _ => out.push(GuestRange {
                gpa,
                len: PAGE_SIZE,
            }),
        }
    }
    out
}

/// Sorts and merges report ranges (overlaps collapse).
pub fn coalesce_ranges(ranges: &mut [GuestRange]) -> Vec<GuestRange> {
    ranges.sort_unstable();
    let mut out: Vec<GuestRange> = Vec::new();
    for r in ranges.iter() {
        match out.last_mut() {
            Some(last) if last.gpa + last.len >= r.gpa => {
                let end = (last.gpa + last.len).max(r.gpa + r.len);
                last.len = end - last.gpa;
            }
            _ => out.push(*r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        // Two regions with a hole: [0, 1 MiB) and [2 MiB, 3 MiB).
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(2 << 20), 1 << 20),
        ])
        .unwrap()
    }

    fn put_pfns(mem: &GuestMemoryMmap, at: u64, pfns: &[u32]) -> Desc {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        Desc {
            addr: at,
            len: bytes.len() as u32,
            write_only: false,
        }
    }

    #[test]
    fn queue_roles_follow_features() {
        assert_eq!(queue_role(0, 0), Some(QueueRole::Inflate));
        assert_eq!(queue_role(1, 0), Some(QueueRole::Deflate));
        assert_eq!(queue_role(2, 0), None);
        let stats = 1 << features::STATS_VQ;
        let rep = 1 << features::REPORTING;
        assert_eq!(queue_role(2, stats), Some(QueueRole::Stats));
        assert_eq!(queue_role(3, stats), None);
        assert_eq!(queue_role(2, rep), Some(QueueRole::Reporting));
        assert_eq!(queue_role(2, stats | rep), Some(QueueRole::Stats));
        assert_eq!(queue_role(3, stats | rep), Some(QueueRole::Reporting));
    }

    #[test]
    fn pfns_outside_ram_and_overflow_are_skipped() {
        let m = mem();
        let mut c = Counters::default();
        // 0x100 = 1 MiB (hole), 0x200 = 2 MiB (ok), 0x2ff ok, 0x300 = 3 MiB (end), u32::MAX far out.
        // 0: the first page, never ballooned (an array of zeros is a page the
        // host does not hold).
        let d = put_pfns(&m, 0x1000, &[1, 0x100, 0x200, 0x2ff, 0x300, u32::MAX, 0]);
        let gpas = parse_pfn_chain(&m, &[d], &mut c);
        assert_eq!(gpas, vec![0x1000, 0x20_0000, 0x2f_f000]);
        assert_eq!(c.invalid_pfns, 4);
        assert_eq!(c.bad_descriptors, 0);
    }

    #[test]
    fn bad_chains_are_ignored_whole() {
        let m = mem();
        let mut c = Counters::default();
        let mut d = put_pfns(&m, 0x1000, &[1, 2]);
        d.write_only = true;
        assert!(parse_pfn_chain(&m, &[d], &mut c).is_empty());
        let d = Desc {
            addr: 0x1000,
            len: 7,
            write_only: false,
        };
        assert!(parse_pfn_chain(&m, &[d], &mut c).is_empty());
        let d = Desc {
            addr: 0x1000,
            len: (MAX_PFNS_PER_CHAIN as u32 + 1) * 4,
            write_only: false,
        };
        assert!(parse_pfn_chain(&m, &[d], &mut c).is_empty());
        let d = Desc {
            addr: 0x10_0000,
            len: 8,
            write_only: false,
        }; // buffer in the hole
        assert!(parse_pfn_chain(&m, &[d], &mut c).is_empty());
        let d = Desc {
            addr: u64::MAX - 2,
            len: 8,
            write_only: false,
        }; // wraps
        assert!(parse_pfn_chain(&m, &[d], &mut c).is_empty());
        assert_eq!(c.bad_descriptors, 5);
        assert_eq!(c.invalid_pfns, 0);
    }

    #[test]
    fn pfns_split_over_descriptors_are_joined() {
        let m = mem();
        let mut c = Counters::default();
        let a = put_pfns(&m, 0x1000, &[3]);
        let b = put_pfns(&m, 0x2000, &[4, 5]);
        assert_eq!(
            parse_pfn_chain(&m, &[a, b], &mut c),
            vec![0x3000, 0x4000, 0x5000]
        );
    }

    #[test]
    fn coalesce_merges_and_dedups() {
        let mut g = vec![0x5000, 0x3000, 0x4000, 0x4000, 0x9000, 0x20_0000];
        assert_eq!(
            coalesce(&mut g),
            vec![
                GuestRange {
                    gpa: 0x3000,
                    len: 0x3000
                },
                GuestRange {
                    gpa: 0x9000,
                    len: 0x1000
                },
                GuestRange {
                    gpa: 0x20_0000,
                    len: 0x1000
                },
            ]
        );
        let mut r = vec![
            GuestRange {
                gpa: 0x4000,
                len: 0x2000,
            },
            GuestRange {
                gpa: 0x0,
                len: 0x4000,
            },
            GuestRange {
                gpa: 0x5000,
                len: 0x1000,
            },
        ];
        assert_eq!(
            coalesce_ranges(&mut r),
            vec![GuestRange {
                gpa: 0,
                len: 0x6000
            }]
        );
    }

    #[test]
    fn config_reads_and_writes() {
        let mut cfg = ConfigSpace {
            num_pages: 0x1122_3344,
            actual: 7,
            free_page_hint_cmd_id: 5,
        };
        assert_eq!(cfg.read(0, 4).unwrap(), 0x1122_3344u32.to_le_bytes());
        assert_eq!(cfg.read(4, 4).unwrap(), 7u32.to_le_bytes());
        assert_eq!(cfg.read(8, 4).unwrap(), 5u32.to_le_bytes());
        // The command id is the device's: a driver write leaves it.
        assert_eq!(cfg.write(8, &[1, 0, 0, 0]), None);
        assert_eq!(cfg.read(0, 16).unwrap().len(), 16);
        assert!(cfg.read(12, 8).is_none());
        assert!(cfg.read(u32::MAX, 2).is_none());
        // num_pages is read-only for the driver.
        assert_eq!(cfg.write(0, &[1, 0, 0, 0]), None);
        assert_eq!(cfg.write(5, &[1, 0, 0]), None);
        assert_eq!(cfg.write(4, &[1, 0]), None);
        assert_eq!(cfg.write(16, &[1, 0, 0, 0]), None);
        assert_eq!(cfg.write(u32::MAX, &[1, 0, 0, 0]), None);
        assert_eq!(cfg.num_pages, 0x1122_3344);
        assert_eq!(cfg.actual, 7);
        assert_eq!(cfg.write(4, &9u32.to_le_bytes()), Some(9));
        // The whole config as vhost-user-base sends it: only actual is taken.
        let mut whole = [0xffu8; 8];
        whole[4..8].copy_from_slice(&11u32.to_le_bytes());
        assert_eq!(cfg.write(0, &whole), Some(11));
        assert_eq!(cfg.num_pages, 0x1122_3344);
    }

    #[test]
    fn report_ranges_are_validated() {
        let m = mem();
        let mut c = Counters::default();
        let descs = [
            Desc {
                addr: 0x2000,
                len: 0x4000,
                write_only: true,
            }, // ok
            Desc {
                addr: 0x2000,
                len: 0x4000,
                write_only: false,
            }, // wrong direction
            Desc {
                addr: 0x2001,
                len: 0x1000,
                write_only: true,
            }, // unaligned
            Desc {
                addr: 0xf_f000,
                len: 0x2000,
                write_only: true,
            }, // runs into the hole
            Desc {
                addr: 0x20_0000,
                len: 0,
                write_only: true,
            }, // empty
            Desc {
                addr: !0xfff,
                len: 0x2000,
                write_only: true,
            }, // wraps
        ];
        assert_eq!(
            parse_report_chain(&m, &descs, &mut c),
            vec![GuestRange {
                gpa: 0x2000,
                len: 0x4000
            }]
        );
        assert_eq!(c.bad_descriptors, 1);
        assert_eq!(c.invalid_pfns, 4);
    }

    #[test]
    fn stats_are_named_and_unknown_tags_kept() {
        let m = mem();
        let mut c = Counters::default();
        let mut buf = Vec::new();
        for (tag, val) in [(4u16, 1000u64), (5, 2000), (99, 5)] {
            buf.extend_from_slice(&tag.to_le_bytes());
            buf.extend_from_slice(&val.to_le_bytes());
        }
        m.write_slice(&buf, GuestAddress(0x1000)).unwrap();
        let d = Desc {
            addr: 0x1000,
            len: buf.len() as u32,
            write_only: false,
        };
        let v = parse_stats_chain(&m, &[d], &mut c).unwrap();
        assert_eq!(v["free-memory"], 1000);
        assert_eq!(v["total-memory"], 2000);
        assert_eq!(v["tag-99"], 5);
        assert_eq!(c.unknown_stat_tags, 1);
        let d = Desc {
            addr: 0x1000,
            len: 9,
            write_only: false,
        };
        assert!(parse_stats_chain(&m, &[d], &mut c).is_none());
        assert_eq!(c.bad_descriptors, 1);
    }
}
