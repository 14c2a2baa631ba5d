// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The engine of one VM: model + mechanism + policies, shared by the Vm
//! ([`super::Vm`] is its public face), the fault thread and the policy
//! thread. Its jobs live beside it: faults (`faults.rs`), what the guest
//! gives and takes (`release.rs`), reclaim and pacing (`reclaim.rs`,
//! `pace.rs`), balloon sizing (`sizing.rs`) and giving back when the
//! guest needs memory (`need.rs`), events (`events.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::events::Events;
use super::pace::Episode;
use super::reclaim::Kick;
use super::{GuestStats, PolicySet, VmConfig};
use crate::mech::Mechanism;
use crate::model::{P2m, Pool, Rmap};
use crate::policy::balloon::Balloon;
use crate::policy::demand::Demand;
use crate::policy::poison::MemoryErrors;
use crate::policy::report::Report;
use crate::policy::swap::Swap;
use crate::policy::zero::ZeroShare;
use crate::policy::{Aborts, Counters, Ctx, Pins, Policy};
use crate::swap::SwapStore;
use crate::{Error, Result};

/// Default time the balloon gets before swapping takes over.
pub(super) const DEFAULT_BALLOON_DEADLINE: Duration = Duration::from_secs(5);

/// Checks a config; returns the number of pages.
pub(super) fn validate(cfg: &VmConfig) -> Result<u64> {
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

/// The state shared by the Vm, its fault thread and its policy thread.
#[derive(Debug)]
pub(super) struct Engine {
    pub(super) size: u64,
    pub(super) page_size: u64,
    pub(super) policies: PolicySet,
    pub(super) p2m: P2m,
    pub(super) pool: Pool,
    pub(super) rmap: Rmap,
    pub(super) mech: Arc<dyn Mechanism>,
    pub(super) counters: Counters,
    pub(super) demand: Demand,
    pub(super) report: Report,
    pub(super) zero: ZeroShare,
    pub(super) balloon: Balloon,
    pub(super) swap: Swap,
    pub(super) guest_stats: Mutex<GuestStats>,
    /// The guest's need as the balloon sees it (`need.rs`).
    pub(super) need: Mutex<super::need::Watch>,

    pub(super) kick: Kick,
    pub(super) aborts: Aborts,
    pub(super) pins: Pins,
    /// Balloon deadline in milliseconds.
    pub(super) deadline_ms: AtomicU64,
    /// Since when resident has been above the pool (`None`: it is not).
    pub(super) behind_since: Mutex<Option<Instant>>,
    /// The current episode was flagged `reclaim-behind` already.
    pub(super) behind_flagged: AtomicBool,
    /// Event subscribers.
    pub(super) events: Events,
    /// Pages whose content was lost, and who delivers their errors.
    pub(super) memory_errors: MemoryErrors,
    /// One reclaim at a time (the policy thread and `Vm::run_policies`).
    pub(super) reclaiming: Mutex<()>,
    /// When the pool size last changed (the balloon's deadline runs from here).
    pub(super) pool_changed_at: Mutex<Instant>,
    /// Where the guest's pace is measured from since then.
    pub(super) episode: Mutex<Episode>,
    /// A pool change put resident above the pool: `pool-reached` is due.
    pub(super) reach_pending: AtomicBool,
    /// Free page hint rounds (`hint.rs`).
    pub(super) hints: Mutex<super::hint::Rounds>,
}

impl Engine {
    pub(super) fn new(cfg: &VmConfig, pages: u64, mech: Arc<dyn Mechanism>) -> Result<Self> {
        let ps = cfg.page_size.bytes();
        let store = match (&cfg.swap_path, cfg.policies.swap) {
            (Some(path), true) => Some(
                SwapStore::open_from_env(path, cfg.size, ps)?.with_compression(cfg.swap_compress),
            ),
            _ => None,
        };
        let core = Engine {
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
            zero: ZeroShare::default(),
            balloon: Balloon::new(cfg.policies.balloon, cfg.size),
            swap: Swap::new(store, pages),
            guest_stats: Mutex::new(GuestStats::default()),
            need: Mutex::default(),
            kick: Kick::default(),
            aborts: Aborts::default(),
            pins: Pins::default(),
            deadline_ms: AtomicU64::new(DEFAULT_BALLOON_DEADLINE.as_millis() as u64),
            behind_since: Mutex::new(None),
            behind_flagged: AtomicBool::new(false),
            events: Events::default(),
            memory_errors: MemoryErrors::default(),
            reclaiming: Mutex::new(()),
            pool_changed_at: Mutex::new(Instant::now()),
            episode: Mutex::new(Episode::default()),
            reach_pending: AtomicBool::new(false),
            hints: Mutex::default(),
        };
        core.balloon
            .on_pool_change(&core.ctx(), core.pool.size_pages());
        Ok(core)
    }

    pub(super) fn ctx(&self) -> Ctx<'_> {
        Ctx {
            p2m: &self.p2m,
            pool: &self.pool,
            rmap: &self.rmap,
            mech: &*self.mech,
            counters: &self.counters,
            size: self.size,
            aborts: &self.aborts,
            pins: &self.pins,
            store: self.swap.store(),
            clock: self.swap.clock(),
            memory_errors: &self.memory_errors,
            events: &self.events,
        }
    }

    /// Policies asked about a fault, in order.
    pub(super) fn fault_policies(&self) -> [&dyn Policy; 2] {
        [&self.demand, &self.swap]
    }

    /// Enabled reclaiming policies that cost the guest little, in order:
    /// reported pages, zero pages, the balloon. Swap comes after the
    /// balloon's deadline ([`Engine::run_policies`]).
    pub(super) fn cheap_order(&self) -> Vec<&dyn Policy> {
        let p = self.policies;
        let all: [(bool, &dyn Policy); 3] = [
            (p.report, &self.report),
            (p.share_zero, &self.zero),
            (p.balloon, &self.balloon),
        ];
        all.into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| p)
            .collect()
    }
}
