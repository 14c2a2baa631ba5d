// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One VM's memory: the P2M model, the pool, the platform mechanism and the
//! policies, behind one object shared by the fault thread, the policy thread,
//! the control socket and the C ABI.
//!
//! CONTRACT: the public items of this file are used by `control`, `ffi`,
//! `dmmctl` and the QEMU backend. Change them only together with those.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mech::linux::LinuxMech;
use crate::mech::sim::SimMech;
use crate::mech::{runs, FaultSink, Mechanism};
use crate::model::{Backing, P2m, PageState, Pool, Rmap};
use crate::policy::balloon::Balloon;
use crate::policy::demand::Demand;
use crate::policy::report::Report;
use crate::policy::swap::Swap;
use crate::policy::zero::ZeroShare;
use crate::policy::{self, Counters, Ctx, Policy};
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
    /// Policies to run.
    pub policies: PolicySet,
    /// Name used for the memfd and in logs.
    pub name: String,
}

/// Why the guest gave pages up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseReason {
    /// The balloon driver inflated over them.
    Balloon,
    /// Free page reporting.
    Report,
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

/// Counters and gauges of one VM. `#[repr(C)]` so the C ABI can copy it out.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Guest RAM size in bytes.
    pub size: u64,
    /// Page size in bytes.
    pub page_size: u64,
    /// Pool size in bytes (what the VM may hold resident).
    pub pool_size: u64,
    /// Pages backed by host memory now.
    pub resident_pages: u64,
    /// Pages never touched (or given back and not touched since).
    pub unpopulated_pages: u64,
    /// Pages reclaimed as zero pages.
    pub zero_pages: u64,
    /// Pages the balloon driver holds.
    pub ballooned_pages: u64,
    /// Pages the guest reported free.
    pub reported_pages: u64,
    /// Pages in the swap store.
    pub swapped_pages: u64,
    /// Pages in transition.
    pub inflight_pages: u64,
    /// Faults handled (userfaultfd MISSING events).
    pub faults: u64,
    /// Pages filled by demand paging (zero-fill, including fault-around).
    pub demand_fills: u64,
    /// Pages read back from the swap store.
    pub swap_ins: u64,
    /// Pages written to the swap store.
    pub swap_outs: u64,
    /// Bytes given back to the host by ballooning.
    pub reclaimed_balloon_bytes: u64,
    /// Bytes given back to the host by free page reporting.
    pub reclaimed_report_bytes: u64,
    /// Bytes given back to the host by zero-page sharing.
    pub reclaimed_zero_bytes: u64,
    /// Bytes given back to the host by swapping.
    pub reclaimed_swap_bytes: u64,
    /// Balloon target in pages (what the guest is asked to hold in the balloon).
    pub balloon_target_pages: u64,
    /// Balloon size in pages the device reported (`actual`).
    pub balloon_actual_pages: u64,
    /// Bad requests ignored (PFNs outside guest RAM, unaligned ranges, ...).
    pub ignored_requests: u64,
    /// Bytes the backing file really holds (`fstat` `st_blocks * 512`; sim: pages held).
    pub host_allocated_bytes: u64,
}

/// A message pushed to a subscribed balloon device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonTarget {
    /// Target balloon size in 4 KiB pages (virtio `num_pages`).
    pub num_pages: u32,
}

/// Something the Vm stops when it shuts down (the control socket server).
pub trait Service: Send + Sync + std::fmt::Debug {
    /// Stops the service; called once, from [`Vm::shutdown`].
    fn stop(&self);
}

/// How long a release waits for an in-flight page before ignoring it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the policy thread looks at the pool without being kicked.
const POLICY_PERIOD: Duration = Duration::from_secs(1);

/// Checks a config; returns the number of pages.
fn validate(cfg: &VmConfig) -> Result<u64> {
    let ps = cfg.page_size.bytes();
    if cfg.size == 0 || cfg.size % ps != 0 {
        return Err(Error::InvalidArgument(format!(
            "guest RAM size {} must be a non-zero multiple of the page size {ps}",
            cfg.size
        )));
    }
    if cfg.policies.swap && cfg.swap_path.is_none() {
        return Err(Error::InvalidArgument(
            "policy 'swap' needs a swap path (swap_path is unset)".into(),
        ));
    }
    Ok(cfg.size / ps)
}

/// The policy thread's wake-up flag.
#[derive(Debug, Default)]
struct Kick {
    kicked: Mutex<(bool, bool)>, // (kicked, stop)
    cv: Condvar,
}

impl Kick {
    fn lock(&self) -> MutexGuard<'_, (bool, bool)> {
        self.kicked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kick(&self, stop: bool) {
        let mut k = self.lock();
        k.0 = true;
        k.1 |= stop;
        self.cv.notify_all();
    }
}

/// The state shared by the Vm, its fault thread and its policy thread.
#[derive(Debug)]
struct Core {
    size: u64,
    page_size: u64,
    policies: PolicySet,
    p2m: P2m,
    pool: Pool,
    rmap: Rmap,
    mech: Arc<dyn Mechanism>,
    counters: Counters,
    demand: Demand,
    report: Report,
    zero: ZeroShare,
    balloon: Balloon,
    swap: Swap,
    guest_stats: Mutex<GuestStats>,
    kick: Kick,
}

impl Core {
    fn new(cfg: &VmConfig, pages: u64, mech: Arc<dyn Mechanism>) -> Result<Self> {
        let ps = cfg.page_size.bytes();
        let core = Core {
            size: cfg.size,
            page_size: ps,
            policies: cfg.policies,
            p2m: P2m::new(pages),
            pool: Pool::new(pages, ps, cfg.pool_size)?,
            rmap: Rmap::default(),
            mech,
            counters: Counters::default(),
            demand: Demand::new(ps),
            report: Report,
            zero: ZeroShare,
            balloon: Balloon::new(cfg.policies.balloon, cfg.size),
            swap: Swap,
            guest_stats: Mutex::new(GuestStats::default()),
            kick: Kick::default(),
        };
        core.balloon
            .on_pool_change(&core.ctx(), core.pool.size_pages());
        Ok(core)
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            p2m: &self.p2m,
            pool: &self.pool,
            rmap: &self.rmap,
            mech: &*self.mech,
            counters: &self.counters,
            size: self.size,
        }
    }

    /// Policies asked about a fault, in order.
    fn fault_policies(&self) -> [&dyn Policy; 2] {
        [&self.demand, &self.swap]
    }

    /// Enabled reclaiming policies in order of cost to the guest.
    fn reclaim_order(&self) -> Vec<&dyn Policy> {
        let p = self.policies;
        let all: [(bool, &dyn Policy); 4] = [
            (p.report, &self.report),
            (p.share_zero, &self.zero),
            (p.balloon, &self.balloon),
            (p.swap, &self.swap),
        ];
        all.into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| p)
            .collect()
    }

    fn handle_fault(&self, pfn: u64, write: bool) -> Result<()> {
        Counters::add(&self.counters.faults, 1);
        let ctx = self.ctx();
        loop {
            let state = self.p2m.get(pfn)?;
            match state {
                PageState::InFlight => {
                    self.p2m.wait_settled(pfn, SETTLE_TIMEOUT)?;
                    continue;
                }
                // Missing although resident: a duplicate fault on a page just
                // filled, or a page punched behind us. Fill (or just wake).
                PageState::Resident => {
                    self.mech.fill_zero(pfn, 1)?;
                    return self.mech.wake(pfn, 1);
                }
                _ => {}
            }
            let mut raced = false;
            for p in self.fault_policies() {
                match p.on_fault(&ctx, pfn, state, write) {
                    Ok(true) => {
                        if self.pool.excess(self.p2m.counts()) > 0 {
                            self.kick.kick(false);
                        }
                        return Ok(());
                    }
                    Ok(false) => {}
                    // The page changed state under us: look again.
                    Err(Error::IllegalTransition { pfn: p, .. }) if p == pfn => {
                        raced = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !raced {
                return Err(Error::Unsupported(format!(
                    "fault on pfn {pfn} in state {state:?}: no policy handles it"
                )));
            }
        }
    }

    /// `UFFD_EVENT_REMOVE`: `MADV_REMOVE` (QEMU's discard of shared RAM
    /// punches, then `MADV_DONTNEED`s) is about to drop these pages from the
    /// file. A lone `MADV_DONTNEED` on the shared mapping only unmaps them:
    /// then the P2M under-counts until the pages are released again, while
    /// `host_allocated_bytes` (from `st_blocks`) stays exact.
    fn handle_remove(&self, first: u64, count: u64) {
        for pfn in first..first.saturating_add(count).min(self.p2m.pages()) {
            // Only resident pages lose memory; others have none to lose.
            let _ = self
                .p2m
                .transition(pfn, PageState::Resident, PageState::Unpopulated);
        }
    }

    /// Valid pfn range of a guest range, or `None` (counted as ignored).
    fn pfns_of(&self, r: &GuestRange, out: &mut BatchOutcome) -> Option<std::ops::Range<u64>> {
        let ps = self.page_size;
        let ok = r.len > 0
            && r.gpa % ps == 0
            && r.len % ps == 0
            && r.gpa.checked_add(r.len).is_some_and(|end| end <= self.size);
        if ok {
            Some(r.gpa / ps..(r.gpa + r.len) / ps)
        } else {
            out.ignored += r.len.div_ceil(ps).max(1);
            Counters::add(&self.counters.ignored_requests, 1);
            log::debug!("ignored range gpa 0x{:x} len 0x{:x}", r.gpa, r.len);
            None
        }
    }

    fn release(&self, ranges: &[GuestRange], reason: ReleaseReason) -> Result<BatchOutcome> {
        let to = match reason {
            ReleaseReason::Balloon => PageState::Ballooned,
            ReleaseReason::Report => PageState::Reported,
        };
        let mut out = BatchOutcome::default();
        let mut changed = Vec::new();
        let mut resident = 0;
        for r in ranges {
            let Some(pfns) = self.pfns_of(r, &mut out) else {
                continue;
            };
            for pfn in pfns {
                let mut state = self.p2m.get(pfn)?;
                if state == PageState::InFlight {
                    state = self.p2m.wait_settled(pfn, SETTLE_TIMEOUT)?;
                }
                if state == to || !crate::model::p2m::allowed(state, to) {
                    out.ignored += 1;
                    continue;
                }
                match self.p2m.transition(pfn, state, to) {
                    Ok(()) => {
                        if state == PageState::Zero {
                            self.rmap.remove(Backing::ZeroPage, pfn);
                        }
                        changed.push(pfn);
                        resident += u64::from(state == PageState::Resident);
                    }
                    Err(Error::IllegalTransition { .. }) => out.ignored += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        changed.sort_unstable();
        // Punch every page whose state changed, whatever it was: a device
        // process may have populated it without faulting through us.
        for (first, count) in runs(changed.iter().copied()) {
            self.mech.punch(first, count)?;
        }
        out.pages = changed.len() as u64;
        out.bytes = resident * self.page_size;
        let counter = match reason {
            ReleaseReason::Balloon => &self.counters.reclaimed_balloon_bytes,
            ReleaseReason::Report => &self.counters.reclaimed_report_bytes,
        };
        Counters::add(counter, out.bytes);
        Ok(out)
    }

    fn reclaim_back(&self, ranges: &[GuestRange]) -> Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        for r in ranges {
            let Some(pfns) = self.pfns_of(r, &mut out) else {
                continue;
            };
            for pfn in pfns {
                let state = self.p2m.get(pfn)?;
                let back = matches!(
                    state,
                    PageState::Ballooned | PageState::Reported | PageState::Zero
                ) && self
                    .p2m
                    .transition(pfn, state, PageState::Unpopulated)
                    .is_ok();
                if back {
                    if state == PageState::Zero {
                        self.rmap.remove(Backing::ZeroPage, pfn);
                    }
                    out.pages += 1;
                } else {
                    out.ignored += 1;
                }
            }
        }
        Ok(out)
    }

    /// Runs the reclaiming policies if resident exceeds the pool.
    fn run_policies(&self) -> u64 {
        let excess = self.pool.excess(self.p2m.counts());
        if excess == 0 {
            return 0;
        }
        policy::reclaim(&self.ctx(), &self.reclaim_order(), excess)
    }

    fn stats(&self) -> Stats {
        let c = self.p2m.counts();
        let n = &self.counters;
        Stats {
            size: self.size,
            page_size: self.page_size,
            pool_size: self.pool.size_bytes(),
            resident_pages: c.get(PageState::Resident),
            unpopulated_pages: c.get(PageState::Unpopulated),
            zero_pages: c.get(PageState::Zero),
            ballooned_pages: c.get(PageState::Ballooned),
            reported_pages: c.get(PageState::Reported),
            swapped_pages: c.get(PageState::Swapped),
            inflight_pages: c.get(PageState::InFlight),
            faults: Counters::get(&n.faults),
            demand_fills: Counters::get(&n.demand_fills),
            swap_ins: Counters::get(&n.swap_ins),
            swap_outs: Counters::get(&n.swap_outs),
            reclaimed_balloon_bytes: Counters::get(&n.reclaimed_balloon_bytes),
            reclaimed_report_bytes: Counters::get(&n.reclaimed_report_bytes),
            reclaimed_zero_bytes: Counters::get(&n.reclaimed_zero_bytes),
            reclaimed_swap_bytes: Counters::get(&n.reclaimed_swap_bytes),
            balloon_target_pages: u64::from(self.balloon.target()),
            balloon_actual_pages: u64::from(self.balloon.actual()),
            ignored_requests: Counters::get(&n.ignored_requests),
            host_allocated_bytes: self.mech.host_allocated_bytes(),
        }
    }
}

impl FaultSink for Core {
    fn on_fault(&self, pfn: u64, write: bool) -> Result<()> {
        self.handle_fault(pfn, write)
    }

    fn on_remove(&self, first: u64, count: u64) {
        self.handle_remove(first, count);
    }

    fn on_ignored(&self) {
        Counters::add(&self.counters.ignored_requests, 1);
    }
}

fn policy_loop(core: &Core) {
    loop {
        {
            let mut k = core.kick.lock();
            if !k.0 && !k.1 {
                k = match core.kick.cv.wait_timeout(k, POLICY_PERIOD) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
            if k.1 {
                return;
            }
            k.0 = false;
        }
        core.run_policies();
    }
}

/// One VM's memory. Always used through an `Arc<Vm>`.
#[derive(Debug)]
pub struct Vm {
    core: Arc<Core>,
    /// The simulation backing (`new_sim`), for the `sim_*` test hooks.
    sim: Option<Arc<SimMech>>,
    linux: Option<Arc<LinuxMech>>,
    policy_thread: Mutex<Option<JoinHandle<()>>>,
    services: Mutex<Vec<Box<dyn Service>>>,
    shut_down: AtomicBool,
}

impl Vm {
    fn build(
        core: Core,
        sim: Option<Arc<SimMech>>,
        linux: Option<Arc<LinuxMech>>,
    ) -> Result<Arc<Vm>> {
        let core = Arc::new(core);
        let thread_core = core.clone();
        let handle = std::thread::Builder::new()
            .name("dmm-policy".into())
            .spawn(move || policy_loop(&thread_core))
            .map_err(|source| Error::Os {
                op: "spawn policy thread",
                source,
            })?;
        Ok(Arc::new(Vm {
            core,
            sim,
            linux,
            policy_thread: Mutex::new(Some(handle)),
            services: Mutex::new(Vec::new()),
            shut_down: AtomicBool::new(false),
        }))
    }

    /// Creates guest RAM on Linux (memfd), starts the control socket if
    /// configured. Bad config (zero or unaligned size, pool > size, unknown
    /// hugepage support) is an `InvalidArgument`/`Unsupported` error naming the value.
    pub fn new_linux(cfg: VmConfig) -> Result<Arc<Vm>> {
        let pages = validate(&cfg)?;
        // Check the pool before creating anything.
        Pool::new(pages, cfg.page_size.bytes(), cfg.pool_size)?;
        let mech = Arc::new(LinuxMech::new(&cfg.name, cfg.size, cfg.page_size)?);
        let core = Core::new(&cfg, pages, mech.clone())?;
        let vm = Vm::build(core, None, Some(mech))?;
        if let Some(path) = &cfg.control_path {
            start_control(&vm, path)?;
        }
        Ok(vm)
    }

    /// Creates a VM on the in-memory simulation mechanism (tests, no uffd).
    pub fn new_sim(cfg: VmConfig) -> Result<Arc<Vm>> {
        let pages = validate(&cfg)?;
        let mech = Arc::new(SimMech::new(cfg.page_size.bytes(), pages));
        let core = Core::new(&cfg, pages, mech.clone())?;
        let vm = Vm::build(core, Some(mech), None)?;
        if let Some(path) = &cfg.control_path {
            start_control(&vm, path)?;
        }
        Ok(vm)
    }

    /// The guest-RAM memfd (Linux mechanism), owned by the Vm. `None` on sim.
    pub fn memfd(&self) -> Option<std::os::fd::RawFd> {
        self.core.mech.memfd()
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
        let sink: Arc<dyn FaultSink> = self.core.clone();
        // SAFETY: the caller upholds the mapping contract of this function,
        // which is the mechanism's.
        unsafe { self.core.mech.attach(host_addr, len, sink) }
    }

    /// Sets the pool size (bytes, page multiple, at most guest RAM). The
    /// policy engine acts on it asynchronously.
    pub fn set_pool_size(&self, bytes: u64) -> Result<()> {
        let core = &self.core;
        core.pool.set_size(bytes)?;
        let ctx = core.ctx();
        let pages = core.pool.size_pages();
        for p in [
            &core.demand as &dyn Policy,
            &core.report,
            &core.zero,
            &core.balloon,
            &core.swap,
        ] {
            p.on_pool_change(&ctx, pages);
        }
        core.kick.kick(false);
        Ok(())
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Page states of `count` pages from `first_pfn` (pfn in units of the page size).
    pub fn page_states(&self, first_pfn: u64, count: u64) -> Result<Vec<crate::model::PageState>> {
        self.core.p2m.snapshot(first_pfn, count)
    }

    /// Guest gave these ranges up: release them to the host (hole punch).
    /// Ranges outside guest RAM are ignored and counted, never released.
    pub fn release(&self, ranges: &[GuestRange], reason: ReleaseReason) -> Result<BatchOutcome> {
        self.core.release(ranges, reason)
    }

    /// Guest takes these ranges back (balloon deflate): they become
    /// unpopulated and are zero-filled on next touch.
    pub fn reclaim_back(&self, ranges: &[GuestRange]) -> Result<BatchOutcome> {
        self.core.reclaim_back(ranges)
    }

    /// Sets the balloon target directly (QMP `balloon`), in 4 KiB pages.
    pub fn set_balloon_target(&self, num_pages: u32) -> Result<()> {
        self.core.balloon.set_target(num_pages)
    }

    /// Subscribes a balloon device to targets: the receiver gets the current
    /// target at once and every change after.
    pub fn subscribe_balloon(&self) -> std::sync::mpsc::Receiver<BalloonTarget> {
        self.core.balloon.subscribe()
    }

    /// The balloon device reports the guest's `actual` (4 KiB pages).
    pub fn set_balloon_actual(&self, num_pages: u32) {
        self.core.balloon.set_actual(num_pages);
    }

    /// The balloon device reports guest statistics.
    pub fn set_guest_stats(&self, stats: GuestStats) {
        *self
            .core
            .guest_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = stats;
    }

    /// Last guest statistics reported.
    pub fn guest_stats(&self) -> GuestStats {
        self.core
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
        self.core.kick.kick(true);
        let handle = self
            .policy_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            if h.join().is_err() {
                log::error!("policy thread panicked");
            }
        }
        self.core.mech.shutdown();
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
    /// most 2 MiB; one page or less disables it).
    pub fn set_fault_around(&self, bytes: u64) -> Result<()> {
        self.core.demand.set_fault_around(bytes)
    }

    /// The fault-around block in bytes.
    pub fn fault_around(&self) -> u64 {
        self.core.demand.fault_around_pages() * self.core.page_size
    }

    /// Runs the reclaiming policies now if resident exceeds the pool; returns
    /// pages freed (the policy thread also does this on its own).
    pub fn run_policies(&self) -> u64 {
        self.core.run_policies()
    }

    /// Bytes of P2M metadata (entries and swap slots).
    pub fn p2m_metadata_bytes(&self) -> u64 {
        self.core.p2m.metadata_bytes()
    }

    /// Guest pages backed by the shared zero page (reverse map).
    pub fn zero_page_sharers(&self) -> u64 {
        self.core.rmap.count(Backing::ZeroPage)
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
        self.core.p2m.get(pfn)?;
        if sim.is_present(pfn) {
            return Ok(());
        }
        self.core.handle_fault(pfn, write)
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

    /// Simulation: moves `pfn` through the state machine directly (tests of
    /// illegal transitions).
    #[doc(hidden)]
    pub fn sim_transition(&self, pfn: u64, from: PageState, to: PageState) -> Result<()> {
        if self.sim.is_none() {
            return Err(Error::State("not a simulated VM".into()));
        }
        self.core.p2m.transition(pfn, from, to)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the control socket server of `vm` on `path` (see `docs/control-protocol.md`).
fn start_control(vm: &Arc<Vm>, path: &Path) -> Result<()> {
    // The server registers itself with `Vm::add_service`, so shutdown stops it.
    crate::control::serve(vm, path).map(|_server| ())
}
