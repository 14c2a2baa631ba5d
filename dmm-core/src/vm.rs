// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One VM's memory: the P2M model, the pool, the platform mechanism and the
//! policies, behind one object shared by the fault thread, the policy thread,
//! the control socket and the C ABI.
//!
//! CONTRACT: the public items of this file are used by `control`, `ffi`,
//! `dmmctl` and the QEMU backend. Change them only together with those.

mod engine;
pub(crate) mod events;
mod faults;
mod hint;
mod need;
mod pace;
mod reclaim;
mod release;
mod sizing;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use self::engine::Engine;
pub use self::stats::Stats;
use crate::mech::linux::LinuxMech;
use crate::mech::sim::SimMech;
use crate::mech::FaultSink;
use crate::model::{Backing, PageState, Pool};
pub use crate::policy::poison::{
    HandlerAnswer, MemoryError, MemoryErrorAction, MemoryErrorHandler, MemoryErrorReason,
};
pub use crate::swap::store::SlotLocation;
use crate::{Error, Result};

/// Size of the pages DMM manages (and of the memfd's pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageSize {
    /// 4 KiB base pages (memfd on shmem).
    Small,
    /// 2 MiB pages (memfd with `MFD_HUGETLB | MFD_HUGE_2MB`).
    Huge2M,
}

impl PageSize {
    /// Bytes in one page.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Small => 4096,
            PageSize::Huge2M => 2 << 20,
        }
    }
}

/// The policies a VM runs. Demand paging is always on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PolicySet {
    /// Ask the guest's balloon driver for pages.
    pub balloon: bool,
    /// Swap cold pages to the swap store (needs a swap path).
    pub swap: bool,
    /// Reclaim zero pages (share the zero page).
    pub share_zero: bool,
    /// Accept free page reports from the guest.
    pub report: bool,
}

impl PolicySet {
    /// Parses a comma list such as `balloon,swap,zero,report` (also `all`, `none`).
    /// An unknown name is an error naming it.
    pub fn parse(s: &str) -> Result<Self> {
        let mut set = PolicySet::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "balloon" => set.balloon = true,
                "swap" => set.swap = true,
                "zero" | "share-zero" => set.share_zero = true,
                "report" => set.report = true,
                "all" => {
                    set = PolicySet {
                        balloon: true,
                        swap: true,
                        share_zero: true,
                        report: true,
                    }
                }
                "none" | "demand" => {}
                other => {
                    return Err(crate::Error::InvalidArgument(format!(
                        "unknown policy '{other}' (expected balloon, swap, zero, report, all, none)"
                    )))
                }
            }
        }
        Ok(set)
    }
}

/// How to create a VM's memory.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM size in bytes; a non-zero multiple of the page size.
    pub size: u64,
    /// Page size of the backing memfd.
    pub page_size: PageSize,
    /// Initial pool size in bytes (`None`: the whole guest RAM). At most `size`.
    pub pool_size: Option<u64>,
    /// Control socket to serve (`None`: no socket).
    pub control_path: Option<PathBuf>,
    /// Swap store file (`None`: no swapping).
    pub swap_path: Option<PathBuf>,
    /// Compress swapped pages (LZ4; incompressible pages stay raw).
    pub swap_compress: bool,
    /// Accept a userfaultfd that takes user-mode faults only, where the host
    /// refuses kernel-mode ones (then faults raised by KVM, vhost or a
    /// `read()` into guest RAM fail with EFAULT). Off: such a host is an
    /// error at [`Vm::attach`] naming the fix.
    pub uffd_user_mode_only: bool,
    /// Policies to run.
    pub policies: PolicySet,
    /// Name used for the memfd and in logs.
    pub name: String,
}

impl VmConfig {
    /// `size` bytes of guest RAM in 4 KiB pages, the pool the whole of it, no
    /// control socket, no swap, demand paging only: set the rest with struct
    /// update syntax (`VmConfig { swap_path, ..VmConfig::new(name, size) }`).
    pub fn new(name: impl Into<String>, size: u64) -> VmConfig {
        VmConfig {
            size,
            page_size: PageSize::Small,
            pool_size: None,
            control_path: None,
            swap_path: None,
            swap_compress: false,
            uffd_user_mode_only: false,
            policies: PolicySet::default(),
            name: name.into(),
        }
    }
}

/// Why the guest gave pages up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseReason {
    /// The balloon driver inflated over them.
    Balloon,
    /// Free page reporting.
    Report,
    /// Free page hinting: blocks the guest holds free until the device says
    /// done. Only their zero pages are taken (`policy/hint.rs`).
    Hint,
}

/// A guest-physical byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRange {
    /// Guest-physical start address (page aligned).
    pub gpa: u64,
    /// Length in bytes (page multiple).
    pub len: u64,
}

/// What a release or reclaim batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// Pages whose state changed.
    pub pages: u64,
    /// Host bytes actually given back or taken.
    pub bytes: u64,
    /// Pages ignored (outside guest RAM, unaligned, or already in that state).
    pub ignored: u64,
}

/// Guest statistics as reported by the balloon's stats queue (bytes; `None` unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// VIRTIO_BALLOON_S_* tag name -> value, as the driver reported them.
    pub values: std::collections::BTreeMap<String, u64>,
}

/// Something subscribers of [`Vm::subscribe_events`] are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum VmEvent {
    /// The pool size changed (through any interface).
    #[serde(rename_all = "snake_case")]
    PoolSizeChanged {
        /// New pool size in bytes.
        pool_size: u64,
        /// Pool size before the change, in bytes.
        previous_pool_size: u64,
        /// Bytes resident when the pool changed.
        resident_bytes: u64,
    },
    /// Resident came within the pool after a pool change had put it above.
    #[serde(rename_all = "snake_case")]
    PoolReached {
        /// Pool size in bytes.
        pool_size: u64,
        /// Bytes resident now.
        resident_bytes: u64,
        /// Milliseconds since the pool change.
        took_ms: u64,
    },
    /// Reclaim missed its deadline: resident is still above the pool.
    #[serde(rename_all = "snake_case")]
    ReclaimBehind {
        /// Bytes resident beyond the pool.
        excess_bytes: u64,
        /// Pool size in bytes.
        pool_size: u64,
        /// How long resident has been above the pool.
        waited_ms: u64,
    },
    /// A page's content was lost (its swap slot could not be read back
    /// intact) and the guest was told: a memory error for that page alone.
    #[serde(rename_all = "snake_case")]
    MemoryError {
        /// Offset of the page in guest RAM (as `release` ranges count it).
        gpa: u64,
        /// Bytes (one page).
        len: u64,
        /// Why the content is lost.
        reason: MemoryErrorReason,
        /// How the guest was told.
        action: MemoryErrorAction,
        /// The faulting thread's id (0: unknown).
        thread_id: u32,
    },
}

/// What DMM knows of one guest page (`page-info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageInfo {
    /// Offset of the page in guest RAM.
    pub gpa: u64,
    /// Page frame number (gpa / page size).
    pub pfn: u64,
    /// Bytes in the page.
    pub len: u64,
    /// Its P2M state.
    pub state: PageState,
    /// Excluded from swap and zero reclaim.
    pub pinned: bool,
    /// The swap slot holding its content (swapped pages).
    pub slot: Option<SlotInfo>,
}

/// A swap slot of [`PageInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Slot id (its offset in 1/8-page granules).
    pub id: u64,
    /// Where its bytes are in the swap file.
    #[serde(flatten)]
    pub location: SlotLocation,
}

/// A balloon target pushed to a subscribed balloon device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonTarget {
    /// Target balloon size in 4 KiB pages (virtio `num_pages`).
    pub num_pages: u32,
}

/// A message pushed to a subscribed balloon device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonPush {
    /// A new balloon target.
    Target(BalloonTarget),
    /// Ask the guest for free page hints (round numbers start at 2 and
    /// never repeat back to back); the device answers `hint-done`.
    FreePageHint {
        /// The round.
        round: u32,
    },
}

/// Something the Vm stops when it shuts down (the control socket server).
pub trait Service: Send + Sync + std::fmt::Debug {
    /// Stops the service; called once, from [`Vm::shutdown`].
    fn stop(&self);
}

/// One VM's memory. Always used through an `Arc<Vm>`.
#[derive(Debug)]
pub struct Vm {
    engine: Arc<Engine>,
    /// The simulation backing (`new_sim`), for the `sim_*` test hooks.
    sim: Option<Arc<SimMech>>,
    linux: Option<Arc<LinuxMech>>,
    policy_thread: Mutex<Option<JoinHandle<()>>>,
    services: Mutex<Vec<Box<dyn Service>>>,
    shut_down: AtomicBool,
    /// `DMM_FAULT_INJECTION=1` at creation: [`Vm::inject_swap_read_error`] works.
    fault_injection: bool,
}

impl Vm {
    fn build(
        engine: Engine,
        sim: Option<Arc<SimMech>>,
        linux: Option<Arc<LinuxMech>>,
    ) -> Result<Arc<Vm>> {
        let engine = Arc::new(engine);
        let thread_engine = engine.clone();
        let handle = crate::thread::spawn("dmm-policy", move || {
            reclaim::policy_loop(&thread_engine);
        })
        .map_err(|source| Error::Os {
            op: "spawn policy thread",
            source,
        })?;
        Ok(Arc::new(Vm {
            engine,
            sim,
            linux,
            policy_thread: Mutex::new(Some(handle)),
            services: Mutex::new(Vec::new()),
            shut_down: AtomicBool::new(false),
            fault_injection: std::env::var("DMM_FAULT_INJECTION").is_ok_and(|v| v == "1"),
        }))
    }

    /// Creates guest RAM on Linux (memfd), starts the control socket if
    /// configured. Bad config (zero or unaligned size, pool > size, unknown
    /// hugepage support) is an `InvalidArgument`/`Unsupported` error naming the value.
    pub fn new_linux(cfg: VmConfig) -> Result<Arc<Vm>> {
        let pages = engine::validate(&cfg)?;
        // Check the pool before creating anything.
        Pool::new(pages, cfg.page_size.bytes(), cfg.pool_size)?;
        let mech = Arc::new(LinuxMech::new(
            &cfg.name,
            cfg.size,
            cfg.page_size,
            cfg.uffd_user_mode_only,
        )?);
        let engine = Engine::new(&cfg, pages, mech.clone())?;
        let vm = Vm::build(engine, None, Some(mech))?;
        if let Some(path) = &cfg.control_path {
            start_control(&vm, path)?;
        }
        Ok(vm)
    }

    /// Creates a VM on the in-memory simulation mechanism (tests, no uffd).
    pub fn new_sim(cfg: VmConfig) -> Result<Arc<Vm>> {
        let pages = engine::validate(&cfg)?;
        let mech = Arc::new(SimMech::new(cfg.page_size.bytes(), pages));
        let engine = Engine::new(&cfg, pages, mech.clone())?;
        let vm = Vm::build(engine, Some(mech), None)?;
        if let Some(path) = &cfg.control_path {
            start_control(&vm, path)?;
        }
        Ok(vm)
    }

    /// The guest-RAM memfd (Linux mechanism), owned by the Vm. `None` on sim.
    pub fn memfd(&self) -> Option<std::os::fd::RawFd> {
        self.engine.mech.memfd()
    }

    /// Registers the caller's mapping of the memfd (`MAP_SHARED`, whole file,
    /// offset 0) with userfaultfd and starts the fault thread.
    ///
    /// # Safety
    /// `host_addr..host_addr+len` must be a live shared mapping of [`Vm::memfd`]
    /// that stays mapped until [`Vm::shutdown`] returns.
    pub unsafe fn attach(&self, host_addr: *mut u8, len: u64) -> Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(Error::State("attach after shutdown".into()));
        }
        let sink: Arc<dyn FaultSink> = self.engine.clone();
        // SAFETY: the caller upholds the mapping contract of this function,
        // which is the mechanism's.
        unsafe { self.engine.mech.attach(host_addr, len, sink) }
    }

    /// Handles the faults of a device process that maps guest RAM (a
    /// vhost-user backend): `uffd` is its userfaultfd, registered in MISSING
    /// mode on its mappings, `regions` where it maps which part of guest
    /// RAM. From now on its accesses to pages DMM swapped, reclaimed or never
    /// filled fault through DMM, and evictions catch its writes between their
    /// copy and their punch ([`crate::mech::Mechanism::punch_read`]). Returns
    /// the id for [`Vm::detach_device`]. Needs [`Vm::attach`] first.
    pub fn attach_device(
        &self,
        name: &str,
        uffd: std::os::fd::OwnedFd,
        regions: &[crate::mech::DeviceRegion],
    ) -> Result<u32> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(Error::State("attach_device after shutdown".into()));
        }
        if self.engine.page_size != PageSize::Small.bytes() {
            return Err(Error::Unsupported(format!(
                "device '{name}': device processes can share DMM's guest RAM only with \
                 4 KiB pages (hugetlb pages cannot be spliced out)"
            )));
        }
        let id = self.engine.mech.attach_device(name, uffd, regions)?;
        log::info!(
            "device '{name}' attached (id {id}): its faults on {} regions of guest RAM \
             go through DMM",
            regions.len()
        );
        Ok(id)
    }

    /// Stops handling the faults of the device `id` ([`Vm::attach_device`]).
    pub fn detach_device(&self, id: u32) -> Result<()> {
        self.engine.mech.detach_device(id)
    }

    /// Sets the pool size (bytes, page multiple, at most guest RAM). The
    /// policy engine acts on it asynchronously.
    pub fn set_pool_size(&self, bytes: u64) -> Result<()> {
        self.engine.set_pool_size(bytes)
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Page states of `count` pages from `first_pfn` (pfn in units of the page size).
    pub fn page_states(&self, first_pfn: u64, count: u64) -> Result<Vec<crate::model::PageState>> {
        self.engine.p2m.snapshot(first_pfn, count)
    }

    /// Guest gave these ranges up: release them to the host (hole punch).
    /// Ranges outside guest RAM are ignored and counted, never released.
    pub fn release(&self, ranges: &[GuestRange], reason: ReleaseReason) -> Result<BatchOutcome> {
        self.engine.release(ranges, reason)
    }

    /// Guest takes these ranges back (balloon deflate): they become
    /// unpopulated and are zero-filled on next touch.
    pub fn reclaim_back(&self, ranges: &[GuestRange]) -> Result<BatchOutcome> {
        self.engine.reclaim_back(ranges)
    }

    /// Sets the balloon target directly (QMP `balloon`), in 4 KiB pages.
    pub fn set_balloon_target(&self, num_pages: u32) -> Result<()> {
        self.engine.balloon.set_target(num_pages)
    }

    /// Subscribes a balloon device to targets: the receiver gets the current
    /// target at once and every change after.
    pub fn subscribe_balloon(&self) -> std::sync::mpsc::Receiver<BalloonPush> {
        self.engine.balloon.subscribe()
    }

    /// The balloon device ended free page hint round `round` (the guest
    /// sent all it had, or the device has no hinting): `pages` hinted.
    pub fn hint_done(&self, round: u32, pages: u64) {
        self.engine.hint_done(round, pages);
    }

    /// The balloon device reports the guest's `actual` (4 KiB pages).
    pub fn set_balloon_actual(&self, num_pages: u32) {
        self.engine.set_balloon_actual(num_pages);
    }

    /// The balloon device reports guest statistics.
    pub fn set_guest_stats(&self, stats: GuestStats) {
        self.engine.set_guest_stats(stats);
    }

    /// Last guest statistics reported.
    pub fn guest_stats(&self) -> GuestStats {
        self.engine
            .guest_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the fault and policy threads and the control socket; idempotent.
    /// Pages stay as they are in the memfd.
    pub fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let services =
            std::mem::take(&mut *self.services.lock().unwrap_or_else(|p| p.into_inner()));
        for s in services {
            s.stop();
        }
        self.engine.kick.kick(true);
        let handle = self
            .policy_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            // A panic there aborted the process already (`crate::thread`).
            let _ = h.join();
        }
        self.engine.mech.shutdown();
    }

    /// Registers a service (the control server) to stop on [`Vm::shutdown`].
    /// After shutdown it is stopped at once.
    pub fn add_service(&self, service: Box<dyn Service>) {
        if self.shut_down.load(Ordering::Acquire) {
            service.stop();
            return;
        }
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(service);
    }

    /// True once [`Vm::shutdown`] ran.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// Sets the demand-paging fault-around block (bytes, power of two, at
    /// most 2 MiB; one page or less disables it, and with it every fill
    /// ahead of a fault: reported pages in 2 MiB blocks, populating what the
    /// balloon gives back, swap read-around and bringing swapped pages home).
    pub fn set_fault_around(&self, bytes: u64) -> Result<()> {
        self.engine.demand.set_fault_around(bytes)?;
        self.engine.swap.set_ahead(self.engine.demand.fills_ahead());
        Ok(())
    }

    /// The fault-around block in bytes.
    pub fn fault_around(&self) -> u64 {
        self.engine.demand.fault_around_pages() * self.engine.page_size
    }

    /// Runs the reclaiming policies now if resident exceeds the pool; returns
    /// pages freed (the policy thread also does this on its own).
    pub fn run_policies(&self) -> u64 {
        self.engine.run_policies()
    }

    /// Pins guest ranges: they are never swapped out or zero-reclaimed (a
    /// device process's vrings). Bad ranges are ignored and counted.
    pub fn pin(&self, ranges: &[GuestRange]) -> BatchOutcome {
        self.engine.pin(ranges, true)
    }

    /// Removes pins from guest ranges.
    pub fn unpin(&self, ranges: &[GuestRange]) -> BatchOutcome {
        self.engine.pin(ranges, false)
    }

    /// Sets by when the balloon must bring resident under the pool (default
    /// 5 s): swap covers earlier what the guest's pace will not deliver by
    /// then, and all that is left at the deadline.
    pub fn set_balloon_deadline(&self, deadline: std::time::Duration) {
        let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        self.engine
            .deadline_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the swap store's capacity in bytes (default: guest RAM size).
    /// Pages stored stay; an error names a size that is not a page multiple
    /// or a VM without a swap store.
    pub fn set_swap_size(&self, bytes: u64) -> Result<()> {
        let store = self.engine.swap.store().ok_or_else(|| {
            Error::State("no swap store (policy 'swap' is off or no swap path)".into())
        })?;
        if bytes % self.engine.page_size != 0 {
            return Err(Error::InvalidArgument(format!(
                "swap size {bytes} is not a multiple of the page size {}",
                self.engine.page_size
            )));
        }
        store.set_capacity(bytes / self.engine.page_size);
        Ok(())
    }

    /// How swap picks cold pages (benchmarks compare them).
    #[doc(hidden)]
    pub fn set_cold_selection(&self, s: crate::policy::swap::Selection) {
        self.engine.swap.set_selection(s);
    }

    /// A receiver of [`VmEvent`]s.
    pub fn subscribe_events(&self) -> std::sync::mpsc::Receiver<VmEvent> {
        self.engine.subscribe_events().1
    }

    /// A receiver of [`VmEvent`]s that [`Vm::unsubscribe_events`] closes,
    /// with the id to do it.
    pub fn subscribe_events_until_closed(&self) -> (u64, std::sync::mpsc::Receiver<VmEvent>) {
        self.engine.subscribe_events()
    }

    /// Closes the subscription `id`: its receiver sees the channel closed
    /// once it read what was sent before.
    pub fn unsubscribe_events(&self, id: u64) {
        self.engine.unsubscribe_events(id);
    }

    /// Bytes of P2M metadata (entries and swap slots).
    pub fn p2m_metadata_bytes(&self) -> u64 {
        self.engine.p2m.metadata_bytes()
    }

    /// Released pages another thread owned when the release met them: the
    /// release waited for the owner's settle (tests of the ownership
    /// protocol; not in [`Stats`]).
    pub fn release_waits(&self) -> u64 {
        crate::policy::Counters::get(&self.engine.counters.release_waits)
    }

    /// Guest pages backed by the shared zero page (reverse map).
    pub fn zero_page_sharers(&self) -> u64 {
        self.engine.rmap.count(Backing::ZeroPage)
    }

    /// Sets (or with `None` removes) who decides how memory errors reach
    /// the guest (see [`MemoryErrorHandler`]); without one, a page whose
    /// content is lost is poisoned. When this returns, a call of the old
    /// handler may still be finishing on the fault thread.
    pub fn set_memory_error_handler(&self, handler: Option<Arc<dyn MemoryErrorHandler>>) {
        self.engine.memory_errors.set_handler(handler);
    }

    /// Clears every poisoned page (the guest was reset: it forgot which
    /// pages it offlined): memory and poison go, the pages are unpopulated
    /// again. Returns how many were cleared.
    pub fn clear_memory_errors(&self) -> Result<u64> {
        crate::policy::poison::clear_all(&self.engine.ctx())
    }

    /// What DMM knows of the page at guest offset `gpa` (any byte of it).
    pub fn page_info(&self, gpa: u64) -> Result<PageInfo> {
        let ps = self.engine.page_size;
        if gpa >= self.engine.size {
            return Err(Error::InvalidArgument(format!(
                "gpa 0x{gpa:x} outside guest RAM ({} bytes)",
                self.engine.size
            )));
        }
        let pfn = gpa / ps;
        let state = self.engine.p2m.get(pfn)?;
        let slot = self.engine.p2m.swap_slot(pfn).and_then(|id| {
            let store = self.engine.swap.store()?;
            Some(SlotInfo {
                id,
                location: store.location(id)?,
            })
        });
        Ok(PageInfo {
            gpa: pfn * ps,
            pfn,
            len: ps,
            state,
            pinned: self.engine.pins.contains(pfn),
            slot,
        })
    }

    /// Fault injection (only with `DMM_FAULT_INJECTION=1` in the environment
    /// at creation): the next read of the swap slot of the swapped page at
    /// `gpa` fails with EIO, as a failing disk would.
    pub fn inject_swap_read_error(&self, gpa: u64) -> Result<PageInfo> {
        if !self.fault_injection {
            return Err(Error::State(
                "fault injection is off (start the VM with DMM_FAULT_INJECTION=1)".into(),
            ));
        }
        let info = self.page_info(gpa)?;
        let slot = info.slot.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "gpa 0x{gpa:x} is {:?}, not swapped: no slot to fail",
                info.state
            ))
        })?;
        let store = self
            .engine
            .swap
            .store()
            .ok_or_else(|| Error::State("no swap store".into()))?;
        store.fail_next_read(slot.id);
        Ok(info)
    }

    /// userfaultfd features `(offered, enabled)`, once attached on Linux.
    pub fn uffd_features(&self) -> Option<(u64, u64)> {
        self.linux.as_ref().and_then(|l| l.uffd_features())
    }

    /// Simulation: a thread touches `pfn`; faults through the core when the
    /// page holds no memory. Errors on a Linux VM or a pfn outside guest RAM.
    #[doc(hidden)]
    pub fn sim_touch(&self, pfn: u64, write: bool) -> Result<()> {
        let sim = self
            .sim
            .as_ref()
            .ok_or_else(|| Error::State("not a simulated VM".into()))?;
        self.engine.p2m.get(pfn)?;
        sim_check_poison(sim, pfn)?;
        if sim.is_present(pfn) {
            return Ok(());
        }
        self.engine.handle_fault(pfn, write)?;
        sim_check_poison(sim, pfn)
    }

    /// Simulation: a thread writes `data` at byte `offset` of `pfn`, faulting
    /// through the core (MISSING or write-protect) as often as needed.
    #[doc(hidden)]
    pub fn sim_write(&self, pfn: u64, offset: usize, data: &[u8]) -> Result<()> {
        use crate::mech::sim::Access;
        let sim = self
            .sim
            .as_ref()
            .ok_or_else(|| Error::State("not a simulated VM".into()))?;
        self.engine.p2m.get(pfn)?;
        loop {
            sim_check_poison(sim, pfn)?;
            match sim.try_write(pfn, offset, data) {
                Access::Done => return Ok(()),
                Access::Missing => self.engine.handle_fault(pfn, true)?,
                Access::Protected => self.engine.handle_wp_fault(pfn)?,
            }
        }
    }

    /// Simulation: a thread reads `pfn`, faulting it in if needed.
    #[doc(hidden)]
    pub fn sim_read(&self, pfn: u64) -> Result<Vec<u8>> {
        let sim = self
            .sim
            .as_ref()
            .ok_or_else(|| Error::State("not a simulated VM".into()))?;
        self.engine.p2m.get(pfn)?;
        loop {
            sim_check_poison(sim, pfn)?;
            if let Some(data) = sim.try_read(pfn) {
                return Ok(data);
            }
            self.engine.handle_fault(pfn, false)?;
        }
    }

    /// Simulation: a MISSING fault on `pfn` is delivered, whatever the page
    /// holds now (a fault raised before a device process populated it).
    #[doc(hidden)]
    pub fn sim_fault(&self, pfn: u64, write: bool) -> Result<()> {
        if self.sim.is_none() {
            return Err(Error::State("not a simulated VM".into()));
        }
        self.engine.handle_fault(pfn, write)
    }

    /// Simulation: a device process populates `pfn` without faulting.
    #[doc(hidden)]
    pub fn sim_populate(&self, pfn: u64) -> Result<()> {
        let sim = self
            .sim
            .as_ref()
            .ok_or_else(|| Error::State("not a simulated VM".into()))?;
        sim.populate(pfn);
        Ok(())
    }

    /// Simulation: true when `pfn` holds memory.
    #[doc(hidden)]
    pub fn sim_present(&self, pfn: u64) -> bool {
        self.sim.as_ref().is_some_and(|s| s.is_present(pfn))
    }

    /// Simulation: takes `pfn` from `from` and holds it in flight, as a
    /// policy does while it works on the page (tests of the ownership
    /// protocol). Errors like [`crate::model::P2m::take`].
    #[doc(hidden)]
    pub fn sim_hold(&self, pfn: u64, from: PageState) -> Result<HeldPage<'_>> {
        if self.sim.is_none() {
            return Err(Error::State("not a simulated VM".into()));
        }
        Ok(HeldPage {
            vm: self,
            page: self.engine.p2m.take(pfn, from)?,
        })
    }

    /// Simulation: takes `pfn` from `from` and settles it to `to` at once
    /// (tests of the state machine). A change the state machine does not
    /// allow, or a page not in `from`, is `IllegalTransition`.
    #[doc(hidden)]
    pub fn sim_transition(&self, pfn: u64, from: PageState, to: PageState) -> Result<()> {
        if self.sim.is_none() {
            return Err(Error::State("not a simulated VM".into()));
        }
        if !crate::model::p2m::allowed(from, to) {
            return Err(Error::IllegalTransition { pfn, from, to });
        }
        let page = self.engine.p2m.take(pfn, from).map_err(|e| match e {
            Error::IllegalTransition { from, .. } => Error::IllegalTransition { pfn, from, to },
            e => e,
        })?;
        self.engine.ctx().settle(page, to);
        Ok(())
    }
}

/// A page a test holds in flight ([`Vm::sim_hold`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct HeldPage<'a> {
    vm: &'a Vm,
    page: crate::model::p2m::Owned<'a>,
}

impl HeldPage<'_> {
    /// Settles the page to `to` as its owner.
    pub fn settle(self, to: PageState) {
        self.vm.engine.ctx().settle(self.page, to);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The memory error a simulated access of a poisoned page gets.
fn sim_check_poison(sim: &SimMech, pfn: u64) -> Result<()> {
    if sim.is_poisoned(pfn) {
        return Err(Error::MemoryError {
            gpa: pfn * crate::mech::Mechanism::page_size(sim),
        });
    }
    Ok(())
}

/// Starts the control socket server of `vm` on `path` (see `docs/control-protocol.md`).
fn start_control(vm: &Arc<Vm>, path: &Path) -> Result<()> {
    // The server registers itself with `Vm::add_service`, so shutdown stops it.
    crate::control::serve(vm, path).map(|_server| ())
}
