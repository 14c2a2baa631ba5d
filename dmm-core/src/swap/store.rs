// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A swap file of fixed-size slots.
//!
//! - The file is created `0600` with `O_EXCL`, or, when it exists, opened and
//!   `flock`ed exclusively (non-blocking): two VMs never share a store. It is
//!   unlinked right after opening unless `keep` is asked for (`DMM_SWAP_KEEP=1`
//!   through [`SwapStore::open_from_env`]); its space dies with the VM.
//! - Slots come from a free list (freed slots first, then the high-water mark);
//!   the capacity is fixed at open. A full store is [`Error::SwapFull`]: the
//!   caller keeps the page resident.
//! - Identical pages are stored once: a 64-bit content hash finds a candidate
//!   slot, a byte compare with what the slot holds confirms it, and the slot
//!   counts its users. Pages of all zeros never come here (they become Zero
//!   pages in the P2M).
//!
//! The store is a plain file on purpose: put it on a real disk, not on tmpfs
//! (tmpfs pages are host memory too).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::{Error, Result};

/// Counters of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Capacity in slots.
    pub capacity: u64,
    /// Slots holding a page.
    pub used: u64,
    /// Stores that found an identical page and shared its slot.
    pub dedup_hits: u64,
    /// Stores refused because the store was full.
    pub full: u64,
}

#[derive(Debug, Default)]
struct Slots {
    /// Freed slots, reused first.
    free: Vec<u64>,
    /// Slots below this were handed out at least once.
    high: u64,
    /// Users of each used slot.
    users: HashMap<u64, u32>,
    /// Content hash -> slot (the latest slot stored with that hash).
    by_hash: HashMap<u64, u64>,
    /// Slot -> its content hash.
    hash_of: HashMap<u64, u64>,
    dedup_hits: u64,
    full: u64,
}

/// The swap store of one VM.
#[derive(Debug)]
pub struct SwapStore {
    file: File,
    path: PathBuf,
    page_size: u64,
    capacity: AtomicU64,
    slots: Mutex<Slots>,
}

/// 64-bit content hash: four independent multiply-xor lanes over u64 words
/// (near memory speed; SipHash was 6% of a swap-out profile). Not
/// collision-resistant on purpose: a match is always confirmed by comparing
/// bytes, so a collision costs a read, never a wrong page.
fn content_hash(data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lanes = [K, K ^ 1, K ^ 2, K ^ 3];
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(b.chunks_exact(8)) {
            let mut x = [0u8; 8];
            x.copy_from_slice(w);
            *lane = (*lane ^ u64::from_le_bytes(x))
                .wrapping_mul(K)
                .rotate_left(29);
        }
    }
    let mut h = data.len() as u64;
    for (i, &b) in blocks.remainder().iter().enumerate() {
        h ^= u64::from(b) << ((i % 8) * 8);
    }
    for lane in lanes {
        h = (h ^ lane).wrapping_mul(K).rotate_left(31);
    }
    h ^ (h >> 32)
}

fn os(op: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Os { op, source }
}

impl SwapStore {
    /// Opens the store at `path` for `capacity_bytes` of pages of
    /// `page_size` bytes; `keep` leaves the file in place at exit.
    pub fn open(path: &Path, capacity_bytes: u64, page_size: u64, keep: bool) -> Result<Self> {
        if page_size == 0 || capacity_bytes < page_size {
            return Err(Error::InvalidArgument(format!(
                "swap capacity {capacity_bytes} bytes holds no page of {page_size} bytes"
            )));
        }
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| {
                    Error::InvalidArgument(format!("swap path {}: {e}", path.display()))
                })?,
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "swap path {}: {e}",
                    path.display()
                )))
            }
        };
        // SAFETY: plain flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            return Err(Error::InvalidArgument(format!(
                "swap path {} is in use by another VM (flock: {})",
                path.display(),
                io::Error::last_os_error()
            )));
        }
        // Whatever an earlier user left there is not ours.
        file.set_len(0).map_err(os("ftruncate(swap)"))?;
        if !keep {
            std::fs::remove_file(path).map_err(os("unlink(swap)"))?;
        }
        Ok(SwapStore {
            file,
            path: path.to_owned(),
            page_size,
            capacity: AtomicU64::new(capacity_bytes / page_size),
            slots: Mutex::new(Slots::default()),
        })
    }

    /// [`SwapStore::open`], keeping the file when `DMM_SWAP_KEEP=1`.
    pub fn open_from_env(path: &Path, capacity_bytes: u64, page_size: u64) -> Result<Self> {
        let keep = std::env::var("DMM_SWAP_KEEP").is_ok_and(|v| v == "1");
        Self::open(path, capacity_bytes, page_size, keep)
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // Every critical section leaves the slots consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The path the store was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity in slots.
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Sets the capacity (slots in use stay; new stores fail once `slots`
    /// are in use).
    pub fn set_capacity(&self, slots: u64) {
        self.capacity.store(slots, Ordering::Relaxed);
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let s = self.lock();
        StoreStats {
            capacity: self.capacity(),
            used: s.users.len() as u64,
            dedup_hits: s.dedup_hits,
            full: s.full,
        }
    }

    fn offset(&self, slot: u64) -> u64 {
        slot * self.page_size
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len as u64 != self.page_size {
            return Err(Error::InvalidArgument(format!(
                "swap page of {len} bytes, the store holds pages of {}",
                self.page_size
            )));
        }
        Ok(())
    }

    /// Stores one page; returns its slot (shared when an identical page is
    /// stored already). [`Error::SwapFull`] when no slot is free.
    pub fn store(&self, data: &[u8]) -> Result<u64> {
        self.check_len(data.len())?;
        let hash = content_hash(data);
        let mut s = self.lock();
        if let Some(&slot) = s.by_hash.get(&hash) {
            let mut old = vec![0u8; data.len()];
            self.file
                .read_exact_at(&mut old, self.offset(slot))
                .map_err(os("pread(swap)"))?;
            if old == data {
                *s.users.entry(slot).or_insert(0) += 1;
                s.dedup_hits += 1;
                return Ok(slot);
            }
        }
        let capacity = self.capacity();
        if s.users.len() as u64 >= capacity {
            s.full += 1;
            return Err(Error::SwapFull { slots: capacity });
        }
        let slot = match s.free.pop() {
            Some(slot) => slot,
            None => {
                s.high += 1;
                s.high - 1
            }
        };
        if let Err(source) = self.file.write_all_at(data, self.offset(slot)) {
            s.free.push(slot);
            return Err(Error::Os {
                op: "pwrite(swap)",
                source,
            });
        }
        s.users.insert(slot, 1);
        s.by_hash.insert(hash, slot);
        s.hash_of.insert(slot, hash);
        Ok(slot)
    }

    /// Reads the page in `slot` into `buf`.
    pub fn load(&self, slot: u64, buf: &mut [u8]) -> Result<()> {
        self.check_len(buf.len())?;
        if !self.lock().users.contains_key(&slot) {
            return Err(Error::State(format!("swap slot {slot} holds no page")));
        }
        self.file
            .read_exact_at(buf, self.offset(slot))
            .map_err(os("pread(swap)"))
    }

    /// One user of `slot` is gone; the last one frees it. Returns true when
    /// the slot was freed.
    pub fn release(&self, slot: u64) -> bool {
        let mut s = self.lock();
        let Some(users) = s.users.get_mut(&slot) else {
            return false;
        };
        *users -= 1;
        if *users > 0 {
            return false;
        }
        s.users.remove(&slot);
        if let Some(h) = s.hash_of.remove(&slot) {
            if s.by_hash.get(&h) == Some(&slot) {
                s.by_hash.remove(&h);
            }
        }
        s.free.push(slot);
        true
    }

    /// Bytes the file holds on disk.
    pub fn allocated_bytes(&self) -> u64 {
        self.file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(b: u8) -> Vec<u8> {
        let mut p = vec![b; 4096];
        p[7] = b.wrapping_add(1);
        p
    }

    #[test]
    fn store_load_dedup_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swap");
        let s = SwapStore::open(&path, 3 * 4096, 4096, false).unwrap();
        assert!(!path.exists(), "unlinked after open");
        let a = s.store(&page(1)).unwrap();
        let b = s.store(&page(2)).unwrap();
        let a2 = s.store(&page(1)).unwrap();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(s.stats().used, 2);
        assert_eq!(s.stats().dedup_hits, 1);
        let mut buf = vec![0; 4096];
        s.load(b, &mut buf).unwrap();
        assert_eq!(buf, page(2));
        assert!(!s.release(a));
        assert!(s.release(a));
        assert!(s.load(a, &mut buf).is_err());
        s.load(b, &mut buf).unwrap();
        assert_eq!(buf, page(2));
    }

    #[test]
    fn full_is_an_error_and_frees_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let s = SwapStore::open(&dir.path().join("swap"), 2 * 4096, 4096, false).unwrap();
        let a = s.store(&page(1)).unwrap();
        s.store(&page(2)).unwrap();
        assert!(matches!(
            s.store(&page(3)),
            Err(Error::SwapFull { slots: 2 })
        ));
        assert_eq!(s.stats().full, 1);
        s.release(a);
        assert_eq!(s.store(&page(3)).unwrap(), a);
    }

    #[test]
    fn exclusive_and_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swap");
        let s = SwapStore::open(&path, 4096, 4096, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = SwapStore::open(&path, 4096, 4096, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use") && e.contains("swap"), "{e}");
        drop(s);
        SwapStore::open(&path, 4096, 4096, false).unwrap();
        let e = SwapStore::open(&dir.path().join("no/such/dir"), 4096, 4096, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no/such/dir"), "{e}");
    }

    #[test]
    fn hash_collision_is_not_sharing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SwapStore::open(&dir.path().join("swap"), 4 * 4096, 4096, false).unwrap();
        let a = s.store(&page(9)).unwrap();
        // Force a fake collision: point page(8)'s hash at a's slot.
        let h = content_hash(&page(8));
        s.lock().by_hash.insert(h, a);
        let b = s.store(&page(8)).unwrap();
        assert_ne!(a, b);
        let mut buf = vec![0; 4096];
        s.load(a, &mut buf).unwrap();
        assert_eq!(buf, page(9));
    }
}
