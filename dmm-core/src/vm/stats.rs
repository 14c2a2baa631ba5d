// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A VM's statistics: [`Stats`], defined once for Rust, the control socket
//! and the C ABI (cbindgen reads this file; see `docs/ffi.md`), and how the
//! engine fills it in.

use serde::{Deserialize, Serialize};

use super::engine::Engine;
use crate::model::PageState;
use crate::policy::Counters;
use crate::swap::SwapStore;

/// Counters and gauges of one VM (`dmm_vm_get_stats`). Sizes are bytes.
///
/// The one definition of the statistics: `vm::Stats` in Rust, the control
/// socket's `stats` object (field names as here), and the C ABI's
/// `dmm_stats` (this struct as it is). Every field is a `uint64_t`; new
/// fields are only ever appended, never moved, removed or resized, so a
/// caller built against an older `dmm.h` asks `dmm_vm_get_stats` for the
/// first `sizeof(dmm_stats)` bytes it knows and gets exactly those fields.
/// A `stats` answer without some fields (an older server) reads them as 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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
    /// Balloon target in 4 KiB pages (what the guest is asked to hold in the balloon).
    pub balloon_target_pages: u64,
    /// Balloon size in 4 KiB pages the device reported (`actual`).
    pub balloon_actual_pages: u64,
    /// Bad requests ignored (PFNs outside guest RAM, unaligned ranges, ...).
    pub ignored_requests: u64,
    /// Bytes the backing file really holds (`fstat` `st_blocks * 512`; sim: pages held).
    pub host_allocated_bytes: u64,
    /// Write-protect faults handled (guest writes during swap-out or zero reclaim).
    pub wp_faults: u64,
    /// Pages whose swap-out or zero reclaim a write aborted (they stayed resident).
    pub reclaim_aborts: u64,
    /// Swap-ins that found the page populated by a device process (kept, not overwritten).
    pub device_populated_conflicts: u64,
    /// Swap-outs refused because the store was full (pages, or whole rounds).
    pub swap_full: u64,
    /// Times reclaim missed its deadline with resident still above the pool.
    pub reclaim_behind: u64,
    /// Swap store slots in use.
    pub swap_slots_used: u64,
    /// Swap store capacity in slots (0: no swap store).
    pub swap_slots_total: u64,
    /// Pages stored once for several guest pages (identical content).
    pub swap_dedup_hits: u64,
    /// Pages pinned (excluded from swap and zero reclaim).
    pub pinned_pages: u64,
    /// Swap store slots holding a compressed page (of `swap_slots_used`).
    pub swap_compressed_slots: u64,
    /// Bytes of the swap file its used slots take (size classes; raw: a page).
    pub swap_stored_bytes: u64,
    /// Bytes the swap file really holds (`fstat` `st_blocks * 512`).
    pub swap_file_bytes: u64,
    /// Swap-ins that found their slot corrupt (the page could not be restored).
    pub swap_corrupt: u64,
    /// Memory errors delivered to the guest (pages whose content was lost:
    /// corrupt slot, store read error; each delivery counts).
    pub memory_errors: u64,
    /// Pages poisoned now (content lost, the guest told).
    pub poisoned_pages: u64,
    /// Pages populated when the balloon gave them back (deflate, while the
    /// pool had room): the guest's touch of them takes no fault.
    pub take_back_fills: u64,
    /// Pages read back from swap without a fault of their own (neighbours
    /// read with a faulting page, pages brought back after the pool grew);
    /// included in `swap_ins`.
    pub swap_ins_ahead: u64,
    /// Bytes given back from blocks the guest hinted free (their zero pages).
    pub reclaimed_hint_bytes: u64,
    /// Free page hint rounds asked of the guest.
    pub hint_rounds: u64,
    /// Resident pages of hinted blocks kept (not zero, pinned, or written).
    pub hint_kept_pages: u64,
    /// Device processes whose faults DMM handles now (vhost-user backends
    /// that handed over their userfaultfd).
    pub devices: u64,
    /// Faults raised by device processes (included in `faults`).
    pub device_faults: u64,
    /// Pages a device process wrote between an eviction's copy and its
    /// punch: the write was caught (the page's content at the punch is
    /// what DMM kept).
    pub device_write_races: u64,
}

impl Engine {
    /// The current statistics.
    pub(super) fn stats(&self) -> Stats {
        let c = self.p2m.counts();
        let n = &self.counters;
        let store = self.swap.store().map(SwapStore::stats).unwrap_or_default();
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
            wp_faults: Counters::get(&n.wp_faults),
            reclaim_aborts: Counters::get(&n.reclaim_aborts),
            device_populated_conflicts: Counters::get(&n.device_populated_conflicts),
            swap_full: Counters::get(&n.swap_full),
            reclaim_behind: Counters::get(&n.reclaim_behind),
            swap_slots_used: store.used,
            swap_slots_total: store.capacity,
            swap_dedup_hits: store.dedup_hits,
            pinned_pages: self.pins.pages(),
            swap_compressed_slots: store.compressed,
            swap_stored_bytes: store.stored_bytes,
            swap_file_bytes: self.swap.store().map_or(0, SwapStore::allocated_bytes),
            swap_corrupt: store.corrupt,
            memory_errors: Counters::get(&n.memory_errors),
            poisoned_pages: c.get(PageState::Poisoned),
            take_back_fills: Counters::get(&n.take_back_fills),
            swap_ins_ahead: Counters::get(&n.swap_ins_ahead),
            reclaimed_hint_bytes: Counters::get(&n.reclaimed_hint_bytes),
            hint_rounds: Counters::get(&n.hint_rounds),
            hint_kept_pages: Counters::get(&n.hint_kept_pages),
            devices: self.mech.devices() as u64,
            device_faults: Counters::get(&n.device_faults),
            device_write_races: Counters::get(&n.device_write_races),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C ABI copies a prefix of whole fields: every field must be a
    /// `u64` (no padding, no other widths).
    #[test]
    fn every_field_is_a_u64() {
        let v = serde_json::to_value(Stats::default()).unwrap();
        let fields = v.as_object().unwrap();
        assert!(fields.values().all(|f| f.is_u64()), "{v}");
        assert_eq!(fields.len() * 8, std::mem::size_of::<Stats>());
    }

    /// Fields missing from an older server's answer read as 0, fields a
    /// newer server adds are ignored.
    #[test]
    fn older_and_newer_answers_parse() {
        let s: Stats =
            serde_json::from_str(r#"{"size":4096,"page_size":4096,"no_such_field_yet":7}"#)
                .unwrap();
        assert_eq!(
            s,
            Stats {
                size: 4096,
                page_size: 4096,
                ..Stats::default()
            }
        );
    }
}
