// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The swap file: slots of size classes, optional compression, dedup.
//!
//! - The file is created `0600` with `O_EXCL`, or, when it exists, opened and
//!   `flock`ed exclusively (non-blocking): two VMs never share a store. It is
//!   unlinked right after opening unless `keep` is asked for (`DMM_SWAP_KEEP=1`
//!   through [`SwapStore::open_from_env`]); its space dies with the VM.
//! - Where slots go is [`super::layout`]'s business: a raw page takes a page,
//!   a compressed one (see [`super::codec`], on with
//!   [`SwapStore::with_compression`]) the smallest class of 1/8-page granules
//!   it fits in. Freed extents are punched in batches, so the file's blocks
//!   follow what is stored.
//! - The capacity counts pages stored (slots), whatever their size: a full
//!   store is [`Error::SwapFull`] and the caller keeps the page resident.
//! - Identical pages are stored once: a 64-bit hash of the uncompressed
//!   content finds a candidate slot, a byte compare with what the slot holds
//!   (decompressed) confirms it, and the slot counts its users. Pages of all
//!   zeros never come here (they become Zero pages in the P2M).
//! - Every load checks the content hash of what it read back (after
//!   decompression): a slot that does not give back its page is
//!   [`Error::SwapCorrupt`], logged and counted, never a zeroed page.
//! - No file I/O under the lock (a swap-in on the fault thread never waits
//!   behind a swap-out's writes): the lock covers the slot table, the layout
//!   and the counters. A store reserves its slot under it, writes without
//!   it, then publishes the slot; a load or dedup compare registers as a
//!   reader of the slot, reads without it, then ends its read. A slot is
//!   freed only with no users and no readers, and a free extent is taken
//!   out of the layout while it is punched, so no slot is freed, reused or
//!   punched while a read or write of it is under way.
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

use super::codec;
use super::layout::{Class, Layout, EXTENT_PAGES, GRANULES, PUNCH_BATCH};
use crate::{Error, Result};

/// Counters of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Capacity in slots (pages).
    pub capacity: u64,
    /// Slots holding a page.
    pub used: u64,
    /// Stores that found an identical page and shared its slot.
    pub dedup_hits: u64,
    /// Stores refused because the store was full.
    pub full: u64,
    /// Slots holding a compressed page.
    pub compressed: u64,
    /// Bytes of the file the used slots take (their size classes).
    pub stored_bytes: u64,
    /// Loads that found a slot corrupt.
    pub corrupt: u64,
}

/// What the store knows of a used slot.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Guest pages stored in it (the P2M's references); 0: being freed.
    users: u32,
    /// Reads of it under way without the lock (loads, dedup compares).
    readers: u32,
    /// Its page is written: false while the store's write is under way.
    written: bool,
    class: Class,
    /// Bytes written (the page size for a raw page).
    len: u32,
    /// Content hash of the uncompressed page.
    hash: u64,
}

#[derive(Debug)]
struct Slots {
    layout: Layout,
    used: HashMap<u64, Slot>,
    /// Content hash -> slot (the latest slot stored with that hash).
    by_hash: HashMap<u64, u64>,
    dedup_hits: u64,
    full: u64,
    compressed: u64,
    stored_bytes: u64,
    corrupt: u64,
    /// Slots whose next read fails with EIO (fault injection, tests only).
    failing: std::collections::HashSet<u64>,
    /// When the file's filesystem last said it is full (ENOSPC): no room
    /// until a slot is freed or [`FS_FULL_RETRY`] passed.
    fs_full_at: Option<std::time::Instant>,
}

/// How long a full filesystem makes the store full before it tries again.
const FS_FULL_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a used slot's bytes are in the swap file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotLocation {
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes written there (the page size for a raw page).
    pub len: u64,
    /// True when the bytes are an LZ4-compressed page.
    pub compressed: bool,
    /// Guest pages sharing the slot (identical content).
    pub users: u32,
}

/// A file operation, for the test hook ([`SwapStore::before_io`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum Io {
    /// A read of a slot.
    Read(u64),
    /// The write of a new slot.
    Write(u64),
    /// A punch of free extents.
    Punch,
}

#[cfg(test)]
type IoHook = std::sync::Arc<dyn Fn(Io) + Send + Sync>;

/// The swap store of one VM.
pub struct SwapStore {
    file: File,
    path: PathBuf,
    page_size: u64,
    compress: bool,
    capacity: AtomicU64,
    slots: Mutex<Slots>,
    /// Called before each file operation, without the lock (tests).
    #[cfg(test)]
    io_hook: Mutex<Option<IoHook>>,
}

impl std::fmt::Debug for SwapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwapStore")
            .field("path", &self.path)
            .field("page_size", &self.page_size)
            .field("compress", &self.compress)
            .field("capacity", &self.capacity)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
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
    /// `page_size` bytes (a multiple of 4096); `keep` leaves the file in
    /// place at exit. Pages are stored raw until
    /// [`SwapStore::with_compression`].
    pub fn open(path: &Path, capacity_bytes: u64, page_size: u64, keep: bool) -> Result<Self> {
        if page_size == 0 || page_size % 4096 != 0 {
            return Err(Error::InvalidArgument(format!(
                "swap page size {page_size} is not a multiple of 4096"
            )));
        }
        if capacity_bytes < page_size {
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
            compress: false,
            capacity: AtomicU64::new(capacity_bytes / page_size),
            slots: Mutex::new(Slots {
                layout: Layout::new(page_size),
                used: HashMap::new(),
                by_hash: HashMap::new(),
                dedup_hits: 0,
                full: 0,
                compressed: 0,
                stored_bytes: 0,
                corrupt: 0,
                failing: std::collections::HashSet::new(),
                fs_full_at: None,
            }),
            #[cfg(test)]
            io_hook: Mutex::new(None),
        })
    }

    /// [`SwapStore::open`], keeping the file when `DMM_SWAP_KEEP=1`.
    pub fn open_from_env(path: &Path, capacity_bytes: u64, page_size: u64) -> Result<Self> {
        let keep = std::env::var("DMM_SWAP_KEEP").is_ok_and(|v| v == "1");
        Self::open(path, capacity_bytes, page_size, keep)
    }

    /// Compresses the pages stored from now on when `on` (LZ4; a page that
    /// does not shrink to 3/4 of its size is stored raw).
    pub fn with_compression(mut self, on: bool) -> Self {
        self.compress = on;
        self
    }

    /// True when pages are compressed.
    pub fn compresses(&self) -> bool {
        self.compress
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

    /// Slots that can be stored now: the capacity left, or 0 while the
    /// file's filesystem is full.
    pub fn room(&self) -> u64 {
        let mut s = self.lock();
        if let Some(at) = s.fs_full_at {
            if at.elapsed() < FS_FULL_RETRY {
                return 0;
            }
            s.fs_full_at = None;
        }
        self.capacity().saturating_sub(s.used.len() as u64)
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let s = self.lock();
        StoreStats {
            capacity: self.capacity(),
            used: s.used.len() as u64,
            dedup_hits: s.dedup_hits,
            full: s.full,
            compressed: s.compressed,
            stored_bytes: s.stored_bytes,
            corrupt: s.corrupt,
        }
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
    ///
    /// The slot is reserved under the lock, written without it, and
    /// published (found by dedup, loadable) under it again: loads and
    /// releases of other slots go on meanwhile. Two identical pages stored
    /// at the same time may take a slot each.
    pub fn store(&self, data: &[u8]) -> Result<u64> {
        self.check_len(data.len())?;
        let hash = content_hash(data);
        if let Some(slot) = self.share(hash, data) {
            return Ok(slot);
        }
        // Compress without the lock, but not for a full store.
        let packed = if self.compress {
            self.check_room(&mut self.lock())?;
            codec::compress(data)
        } else {
            None
        };
        let (class, bytes) = match &packed {
            Some((class, bytes)) => (*class, bytes.as_slice()),
            None => (Class::RAW, data),
        };
        let (slot, offset) = {
            let mut s = self.lock();
            self.check_room(&mut s)?;
            let slot = s.layout.alloc(class);
            s.used.insert(
                slot,
                Slot {
                    users: 1,
                    readers: 0,
                    written: false,
                    class,
                    len: bytes.len() as u32,
                    hash,
                },
            );
            if class != Class::RAW {
                s.compressed += 1;
            }
            s.stored_bytes += s.layout.slot_bytes(class);
            (slot, s.layout.offset(slot))
        };
        // Nobody else knows the slot until it is published: no lock needed.
        self.before_io(Io::Write(slot));
        let wrote = self.file.write_all_at(bytes, offset);
        let mut s = self.lock();
        match wrote {
            Ok(()) => {
                if let Some(m) = s.used.get_mut(&slot) {
                    m.written = true;
                }
                s.by_hash.insert(hash, slot);
                Ok(slot)
            }
            Err(source) => {
                Self::forget(&mut s, slot);
                // The filesystem is full: the store is, too (the page stays).
                let fs_full = matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
                if fs_full {
                    s.full += 1;
                    if s.fs_full_at.is_none() {
                        log::warn!(
                            "swap store {}: {source}; full at {} slots",
                            self.path.display(),
                            s.used.len()
                        );
                    }
                    s.fs_full_at = Some(std::time::Instant::now());
                }
                let slots = s.used.len() as u64;
                let extents = s.layout.take_unpunched(PUNCH_BATCH);
                drop(s);
                self.punch(extents);
                if fs_full {
                    return Err(Error::SwapFull { slots });
                }
                Err(Error::Os {
                    op: "pwrite(swap)",
                    source,
                })
            }
        }
    }

    /// [`Error::SwapFull`] (counted) when every slot is in use.
    fn check_room(&self, s: &mut Slots) -> Result<()> {
        let capacity = self.capacity();
        if s.used.len() as u64 >= capacity {
            s.full += 1;
            return Err(Error::SwapFull { slots: capacity });
        }
        Ok(())
    }

    /// The slot of a page identical to `data` (hash `hash`), with one more
    /// user; `None` when there is none. The candidate is read back without
    /// the lock, as a reader of the slot (which keeps it from being freed).
    fn share(&self, hash: u64, data: &[u8]) -> Option<u64> {
        let (slot, meta) = {
            let mut s = self.lock();
            let slot = *s.by_hash.get(&hash)?;
            let meta = s.used.get_mut(&slot)?;
            if !meta.written || meta.users == 0 {
                return None;
            }
            meta.readers += 1;
            (slot, *meta)
        };
        let mut old = vec![0u8; data.len()];
        let same = match self.read_slot(slot, meta, &mut old) {
            Ok(()) => old == data,
            Err(e) => {
                // Not shared, then; the load of that slot reports it.
                log::warn!("swap dedup: candidate slot {slot} unreadable: {e}");
                false
            }
        };
        let mut s = self.lock();
        // The last user may have gone meanwhile: a dying slot is not shared.
        let shared = match s.used.get_mut(&slot) {
            Some(m) if same && m.users > 0 => {
                m.users += 1;
                true
            }
            _ => false,
        };
        if shared {
            s.dedup_hits += 1;
        }
        self.end_read(s, slot);
        shared.then_some(slot)
    }

    /// Reads (and decompresses) the page of `slot` into `buf`, checking its
    /// hash. Called without the lock, by a reader of the slot.
    fn read_slot(&self, slot: u64, meta: Slot, buf: &mut [u8]) -> Result<()> {
        let offset = slot * (self.page_size / GRANULES);
        self.before_io(Io::Read(slot));
        if meta.class == Class::RAW {
            self.file
                .read_exact_at(buf, offset)
                .map_err(os("pread(swap)"))?;
        } else {
            let mut packed = vec![0u8; meta.len as usize];
            self.file
                .read_exact_at(&mut packed, offset)
                .map_err(os("pread(swap)"))?;
            codec::decompress(&packed, buf).map_err(|e| Error::SwapCorrupt {
                slot,
                reason: format!("{} compressed bytes: {e}", meta.len),
            })?;
        }
        if content_hash(buf) != meta.hash {
            return Err(Error::SwapCorrupt {
                slot,
                reason: "content hash mismatch".into(),
            });
        }
        Ok(())
    }

    /// Reads the page in `slot` into `buf`. A slot that does not give back
    /// what was stored is [`Error::SwapCorrupt`] (logged, counted). The read
    /// runs without the lock.
    pub fn load(&self, slot: u64, buf: &mut [u8]) -> Result<()> {
        self.load_as(slot, buf, true)
    }

    /// [`SwapStore::load`] for a read ahead of any fault (read-around,
    /// bringing pages home): a slot that fails is neither counted nor logged
    /// as corrupt, and an injected failure stays for the page's own fault,
    /// the one that tells the guest.
    pub fn load_ahead(&self, slot: u64, buf: &mut [u8]) -> Result<()> {
        self.load_as(slot, buf, false)
    }

    fn load_as(&self, slot: u64, buf: &mut [u8], own: bool) -> Result<()> {
        self.check_len(buf.len())?;
        let meta = {
            let mut s = self.lock();
            let injected = if own {
                s.failing.remove(&slot)
            } else {
                s.failing.contains(&slot)
            };
            if injected {
                return Err(Error::Os {
                    op: "pread(swap) (injected)",
                    source: io::Error::from_raw_os_error(libc::EIO),
                });
            }
            let meta = s
                .used
                .get_mut(&slot)
                .filter(|m| m.written && m.users > 0)
                .ok_or_else(|| Error::State(format!("swap slot {slot} holds no page")))?;
            meta.readers += 1;
            *meta
        };
        let r = self.read_slot(slot, meta, buf);
        let mut s = self.lock();
        if let Err(e @ Error::SwapCorrupt { .. }) = &r {
            if own {
                log::error!("swap-in: {e}");
                s.corrupt += 1;
            }
        }
        self.end_read(s, slot);
        r
    }

    /// Where the bytes of the used `slot` are in the file.
    pub fn location(&self, slot: u64) -> Option<SlotLocation> {
        let s = self.lock();
        let meta = s.used.get(&slot)?;
        Some(SlotLocation {
            offset: s.layout.offset(slot),
            len: u64::from(meta.len),
            compressed: meta.class != Class::RAW,
            users: meta.users,
        })
    }

    /// Fault injection: the next load of the used `slot` fails with EIO, as
    /// a failing disk would. False when the slot holds no page.
    pub fn fail_next_read(&self, slot: u64) -> bool {
        let mut s = self.lock();
        if !s.used.contains_key(&slot) {
            return false;
        }
        s.failing.insert(slot)
    }

    /// One read of `slot` is over; frees the slot if it was the last
    /// reader of a slot without users. Takes the lock guard: the punch this
    /// may start runs after it is dropped.
    fn end_read(&self, mut s: MutexGuard<'_, Slots>, slot: u64) {
        let Some(m) = s.used.get_mut(&slot) else {
            return;
        };
        m.readers -= 1;
        if m.readers > 0 || m.users > 0 {
            return;
        }
        Self::forget(&mut s, slot);
        let extents = s.layout.take_unpunched(PUNCH_BATCH);
        drop(s);
        self.punch(extents);
    }

    /// One user of `slot` is gone; after the last one the slot is freed
    /// (once the reads of it under way, dedup compares, are over). Returns
    /// true when that was the last user.
    pub fn release(&self, slot: u64) -> bool {
        let mut s = self.lock();
        let Some(meta) = s.used.get_mut(&slot) else {
            return false;
        };
        if meta.users == 0 {
            log::error!("swap: slot {slot} released once more than stored");
            return false;
        }
        meta.users -= 1;
        if meta.users > 0 {
            return false;
        }
        let (hash, readers) = (meta.hash, meta.readers);
        if s.by_hash.get(&hash) == Some(&slot) {
            s.by_hash.remove(&hash);
        }
        if readers > 0 {
            // The last reader frees it (`end_read`).
            return true;
        }
        Self::forget(&mut s, slot);
        let extents = s.layout.take_unpunched(PUNCH_BATCH);
        drop(s);
        self.punch(extents);
        true
    }

    /// Drops `slot` (no users, no readers) and gives its space back.
    fn forget(s: &mut Slots, slot: u64) {
        let Some(meta) = s.used.remove(&slot) else {
            return;
        };
        s.failing.remove(&slot);
        s.fs_full_at = None;
        if meta.class != Class::RAW {
            s.compressed -= 1;
        }
        s.stored_bytes -= s.layout.slot_bytes(meta.class);
        s.layout.free(slot, meta.class);
    }

    /// Gives the blocks of every free extent back to the filesystem now
    /// (release does it in batches).
    pub fn trim(&self) {
        let extents = self.lock().layout.take_unpunched(0);
        self.punch(extents);
    }

    /// Punches `extents` (taken from the layout: no slot of them can be
    /// handed out meanwhile) without the lock, then returns them to the
    /// layout's punched extents.
    fn punch(&self, mut extents: Vec<u64>) {
        if extents.is_empty() {
            return;
        }
        self.before_io(Io::Punch);
        extents.sort_unstable();
        let eb = self.page_size * EXTENT_PAGES;
        let mut i = 0;
        while i < extents.len() {
            let first = extents[i];
            let mut n = 1;
            while i + n < extents.len() && extents[i + n] == first + n as u64 {
                n += 1;
            }
            i += n;
            let (Ok(off), Ok(len)) = (
                libc::off_t::try_from(first * eb),
                libc::off_t::try_from(n as u64 * eb),
            ) else {
                continue;
            };
            // SAFETY: fallocate on an fd we own; no memory is passed.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                )
            };
            if r < 0 {
                // The extents are reused all the same; only the space stays.
                log::warn!(
                    "swap: punching {len} bytes at {off}: {}",
                    io::Error::last_os_error()
                );
            }
        }
        self.lock().layout.punched(&extents);
    }

    /// Test hook: runs before each read, write and punch of the file.
    #[cfg(test)]
    fn before_io(&self, io: Io) {
        let hook = self
            .io_hook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook(io);
        }
    }

    #[cfg(not(test))]
    #[inline]
    fn before_io(&self, _io: Io) {}

    /// Bytes the file holds on disk.
    pub fn allocated_bytes(&self) -> u64 {
        self.file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod concurrent;

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

    /// A compressible page, distinct per `seed`.
    fn text(seed: u64) -> Vec<u8> {
        let mut p = Vec::with_capacity(4096);
        let mut i = 0;
        while p.len() < 4096 {
            p.extend_from_slice(format!("page {seed} line {i}: the quick brown fox\n").as_bytes());
            i += 1;
        }
        p.truncate(4096);
        p
    }

    /// An incompressible page.
    fn random(seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn compressed_store(dir: &tempfile::TempDir, pages: u64) -> SwapStore {
        SwapStore::open(&dir.path().join("swap"), pages * 4096, 4096, false)
            .unwrap()
            .with_compression(true)
    }

    #[test]
    fn compressed_round_trip_raw_and_incompressible() {
        let dir = tempfile::tempdir().unwrap();
        let s = compressed_store(&dir, 8);
        assert!(s.compresses());
        let t = s.store(&text(1)).unwrap();
        let r = s.store(&random(2)).unwrap();
        let st = s.stats();
        assert_eq!((st.used, st.compressed), (2, 1), "{st:?}");
        // The text page takes at most a quarter page, the random one a page.
        assert!(st.stored_bytes <= 4096 + 1024, "{st:?}");
        let mut buf = vec![0; 4096];
        s.load(t, &mut buf).unwrap();
        assert_eq!(buf, text(1));
        s.load(r, &mut buf).unwrap();
        assert_eq!(buf, random(2));
        // Off: everything raw.
        let dir2 = tempfile::tempdir().unwrap();
        let raw = SwapStore::open(&dir2.path().join("swap"), 8 * 4096, 4096, false).unwrap();
        let t2 = raw.store(&text(1)).unwrap();
        assert_eq!(raw.stats().compressed, 0);
        assert_eq!(raw.stats().stored_bytes, 4096);
        raw.load(t2, &mut buf).unwrap();
        assert_eq!(buf, text(1));
    }

    #[test]
    fn dedup_across_compressed_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = compressed_store(&dir, 8);
        let a = s.store(&text(5)).unwrap();
        let b = s.store(&text(6)).unwrap();
        let a2 = s.store(&text(5)).unwrap();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        let st = s.stats();
        assert_eq!((st.used, st.compressed, st.dedup_hits), (2, 2, 1), "{st:?}");
        assert!(!s.release(a));
        let mut buf = vec![0; 4096];
        s.load(a, &mut buf).unwrap();
        assert_eq!(buf, text(5));
        assert!(s.release(a));
        assert!(s.load(a, &mut buf).is_err());
        // A fake hash collision with a compressed slot is not sharing.
        let h = content_hash(&text(7));
        s.lock().by_hash.insert(h, b);
        let c = s.store(&text(7)).unwrap();
        assert_ne!(c, b);
        s.load(b, &mut buf).unwrap();
        assert_eq!(buf, text(6));
        s.load(c, &mut buf).unwrap();
        assert_eq!(buf, text(7));
    }

    #[test]
    fn compression_saves_file_space_and_freed_space_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let n = 1024;
        let s = compressed_store(&dir, n);
        let slots: Vec<u64> = (0..n).map(|i| s.store(&text(i)).unwrap()).collect();
        let st = s.stats();
        let file = s.allocated_bytes();
        assert_eq!(st.compressed, n, "{st:?}");
        assert!(
            file > 0 && file <= n * 4096 / 4,
            "{n} text pages take {file} bytes of file: {st:?}"
        );
        let mut buf = vec![0; 4096];
        for (i, &slot) in slots.iter().enumerate() {
            s.load(slot, &mut buf).unwrap();
            assert_eq!(buf, text(i as u64), "slot {slot}");
        }
        for &slot in &slots {
            assert!(s.release(slot));
        }
        s.trim();
        assert_eq!(s.allocated_bytes(), 0, "every block punched");
        assert_eq!(s.stats().stored_bytes, 0);
        // Stored again: the same extents, no more file than before.
        let again: Vec<u64> = (0..n).map(|i| s.store(&random(i)).unwrap()).collect();
        assert!(again
            .iter()
            .all(|&a| a < slots.iter().max().unwrap() * 8 + 8 * n));
        for &slot in &again[..n as usize / 2] {
            s.release(slot);
        }
        let half = s.allocated_bytes();
        for i in 0..n / 2 {
            s.store(&random(n + i)).unwrap();
        }
        assert!(s.allocated_bytes() <= half + n / 2 * 4096);
        assert!(s.allocated_bytes() <= n * 4096, "freed slots reused");
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = compressed_store(&dir, 3);
        let pages = [text(1), random(2), text(3)];
        let slots: Vec<u64> = pages.iter().map(|p| s.store(p).unwrap()).collect();
        let e = s.store(&text(4)).unwrap_err();
        assert!(matches!(e, Error::SwapFull { slots: 3 }), "{e}");
        assert!(e.to_string().contains("full"), "{e}");
        // A duplicate still fits: it takes no slot.
        assert_eq!(s.store(&text(3)).unwrap(), slots[2]);
        assert_eq!(s.stats().full, 1);
        let mut buf = vec![0; 4096];
        for (p, &slot) in pages.iter().zip(&slots) {
            s.load(slot, &mut buf).unwrap();
            assert_eq!(&buf, p);
        }
        s.release(slots[1]);
        let d = s.store(&text(4)).unwrap();
        s.load(d, &mut buf).unwrap();
        assert_eq!(buf, text(4));
    }

    #[test]
    fn corrupt_slots_are_errors_never_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = compressed_store(&dir, 8);
        let t = s.store(&text(1)).unwrap();
        let u = s.store(&text(2)).unwrap();
        let r = s.store(&random(3)).unwrap();
        let granule = 4096 / GRANULES;
        let mut buf = vec![0; 4096];
        // Garbage over a compressed slot: LZ4 refuses it.
        s.file.write_all_at(&[0xff; 64], t * granule).unwrap();
        let e = s.load(t, &mut buf).unwrap_err();
        assert!(
            matches!(e, Error::SwapCorrupt { slot, .. } if slot == t),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("slot {t}")), "{e}");
        // One literal byte changed: decodes, but not to the page stored.
        let mut packed = vec![0u8; 8];
        s.file.read_exact_at(&mut packed, u * granule).unwrap();
        packed[5] ^= 0x20; // past the token and its length byte
        s.file.write_all_at(&packed, u * granule).unwrap();
        let e = s.load(u, &mut buf).unwrap_err();
        assert!(e.to_string().contains("hash"), "{e}");
        // A raw page with one bit flipped.
        s.file.write_all_at(&[0x55], r * granule + 100).unwrap();
        assert!(matches!(
            s.load(r, &mut buf),
            Err(Error::SwapCorrupt { .. })
        ));
        assert_eq!(s.stats().corrupt, 3);
        // The corrupt slot is not shared with an identical new page either.
        let t2 = s.store(&text(1)).unwrap();
        assert_ne!(t2, t);
        s.load(t2, &mut buf).unwrap();
        assert_eq!(buf, text(1));
    }

    #[test]
    fn odd_page_sizes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = SwapStore::open(&dir.path().join("swap"), 1 << 20, 1000, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1000"), "{e}");
    }

    #[test]
    fn huge_pages_round_trip_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let ps = 2 << 20;
        let s = SwapStore::open(&dir.path().join("swap"), 4 * ps, ps, false)
            .unwrap()
            .with_compression(true);
        let page: Vec<u8> = (0..512).flat_map(text).collect();
        let noise: Vec<u8> = (0..512).flat_map(random).collect();
        let a = s.store(&page).unwrap();
        let b = s.store(&noise).unwrap();
        let st = s.stats();
        assert_eq!(st.compressed, 1, "{st:?}");
        assert!(st.stored_bytes < 2 * ps, "{st:?}");
        let mut buf = vec![0; ps as usize];
        s.load(a, &mut buf).unwrap();
        assert!(buf == page);
        s.load(b, &mut buf).unwrap();
        assert!(buf == noise);
        assert!(
            s.store(&page[..4096]).is_err(),
            "a 4 KiB page in a 2 MiB store"
        );
    }
}
