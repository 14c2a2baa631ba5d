// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory errors on the simulation: a swapped page whose slot cannot be
//! read back intact (corrupt, a read error) is an error for that page
//! alone, counted, evented, never zeros unless an embedder's handler says
//! it told the guest itself; the page is usable again once released or
//! cleared (guest reset).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dmm::model::PageState;
use dmm::vm::{
    GuestRange, HandlerAnswer, MemoryError, MemoryErrorAction, MemoryErrorHandler,
    MemoryErrorReason, PolicySet, ReleaseReason, Vm, VmConfig, VmEvent,
};
use dmm::Error;

const PS: u64 = 4096;
const PAGES: u64 = 32;

fn content(pfn: u64) -> Vec<u8> {
    (0..PS).map(|i| (pfn * 7 + i * 13 + 1) as u8).collect()
}

/// A simulated VM with every page written and then swapped out.
fn swapped(dir: &tempfile::TempDir) -> Arc<Vm> {
    // Fault injection is read at creation; every test here wants it.
    std::env::set_var("DMM_FAULT_INJECTION", "1");
    let vm = Vm::new_sim(VmConfig {
        swap_path: Some(dir.path().join("swap")),
        policies: PolicySet::parse("swap").unwrap(),
        ..VmConfig::new("sim-memory-error", PAGES * PS)
    })
    .unwrap();
    for pfn in 0..PAGES {
        vm.sim_write(pfn, 0, &content(pfn)).unwrap();
    }
    vm.set_pool_size(0).unwrap();
    vm.run_policies();
    assert_eq!(vm.stats().swapped_pages, PAGES);
    vm
}

/// Overwrites the bytes of `pfn`'s swap slot (found with `page_info`).
fn corrupt(vm: &Vm, dir: &tempfile::TempDir, pfn: u64) {
    let info = vm.page_info(pfn * PS + 100).unwrap();
    assert_eq!((info.gpa, info.state), (pfn * PS, PageState::Swapped));
    let slot = info.slot.unwrap();
    assert_eq!(slot.location.len, PS);
    let f = swap_file(dir);
    f.write_all_at(
        &vec![0x5a; slot.location.len as usize],
        slot.location.offset,
    )
    .unwrap();
}

/// The store's file, unlinked but open: through `/proc/self/fd`.
fn swap_file(dir: &tempfile::TempDir) -> std::fs::File {
    let want = format!("{} (deleted)", dir.path().join("swap").display());
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want) {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap();
        }
    }
    panic!("{want} is not open");
}

fn memory_error_events(rx: &std::sync::mpsc::Receiver<VmEvent>) -> Vec<VmEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.recv_timeout(Duration::from_millis(100)) {
        if matches!(ev, VmEvent::MemoryError { .. }) {
            out.push(ev);
        }
    }
    out
}

#[test]
fn corrupt_slot_is_an_error_for_that_page_alone() {
    let dir = tempfile::tempdir().unwrap();
    let vm = swapped(&dir);
    let events = vm.subscribe_events();
    corrupt(&vm, &dir, 5);
    let e = vm.sim_read(5).unwrap_err();
    assert!(
        matches!(e, Error::MemoryError { gpa } if gpa == 5 * PS),
        "{e}"
    );
    // Again: the same error, delivered once (the page stays poisoned).
    assert!(matches!(vm.sim_read(5), Err(Error::MemoryError { .. })));
    assert!(matches!(
        vm.sim_write(5, 0, &[1]),
        Err(Error::MemoryError { .. })
    ));
    assert!(!vm.sim_present(5), "a poisoned page holds no memory");
    for pfn in (0..PAGES).filter(|&p| p != 5) {
        assert_eq!(vm.sim_read(pfn).unwrap(), content(pfn), "pfn {pfn}");
    }
    let s = vm.stats();
    assert_eq!(
        (s.memory_errors, s.poisoned_pages, s.swap_corrupt),
        (1, 1, 1),
        "{s:?}"
    );
    assert_eq!(vm.page_info(5 * PS).unwrap().state, PageState::Poisoned);
    assert_eq!(
        memory_error_events(&events),
        vec![VmEvent::MemoryError {
            gpa: 5 * PS,
            len: PS,
            reason: MemoryErrorReason::SlotCorrupt,
            action: MemoryErrorAction::Poison,
            thread_id: 0,
        }]
    );
    // Poisoned pages are never reclaimed: swap everything out again.
    vm.run_policies();
    assert_eq!(vm.page_states(5, 1).unwrap()[0], PageState::Poisoned);
}

#[test]
fn store_read_error_is_a_memory_error() {
    let dir = tempfile::tempdir().unwrap();
    let vm = swapped(&dir);
    let events = vm.subscribe_events();
    let info = vm.inject_swap_read_error(9 * PS).unwrap();
    assert_eq!(info.state, PageState::Swapped);
    assert!(matches!(vm.sim_read(9), Err(Error::MemoryError { .. })));
    assert_eq!(vm.sim_read(10).unwrap(), content(10));
    let ev = memory_error_events(&events);
    assert!(
        matches!(
            ev.as_slice(),
            [VmEvent::MemoryError {
                reason: MemoryErrorReason::StoreReadError,
                ..
            }]
        ),
        "{ev:?}"
    );
    // A page that is not swapped (page 9 is poisoned now) has no slot to fail.
    let e = vm.inject_swap_read_error(9 * PS).unwrap_err();
    assert!(e.to_string().contains("not swapped"), "{e}");
}

#[test]
fn poisoned_page_is_usable_again_once_released_or_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let vm = swapped(&dir);
    for pfn in [3, 4] {
        corrupt(&vm, &dir, pfn);
        assert!(vm.sim_read(pfn).is_err());
    }
    // The guest gives page 3 up (balloon): usable again, content zeros.
    let out = vm
        .release(
            &[GuestRange {
                gpa: 3 * PS,
                len: PS,
            }],
            ReleaseReason::Balloon,
        )
        .unwrap();
    assert_eq!(out.pages, 1);
    assert_eq!(vm.sim_read(3).unwrap(), vec![0u8; PS as usize]);
    vm.sim_write(3, 0, &[7]).unwrap();
    // A guest reset clears page 4.
    assert_eq!(vm.clear_memory_errors().unwrap(), 1);
    assert_eq!(vm.page_states(4, 1).unwrap()[0], PageState::Unpopulated);
    assert_eq!(vm.sim_read(4).unwrap(), vec![0u8; PS as usize]);
    assert_eq!(vm.clear_memory_errors().unwrap(), 0);
    let s = vm.stats();
    assert_eq!((s.memory_errors, s.poisoned_pages), (2, 0), "{s:?}");
}

/// An embedder's handler that records what it was asked.
struct Recorder {
    answer: HandlerAnswer,
    seen: Mutex<Vec<MemoryError>>,
    calls: AtomicU32,
}

impl MemoryErrorHandler for Recorder {
    fn memory_error(&self, err: &MemoryError) -> HandlerAnswer {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(*err);
        self.answer
    }
}

#[test]
fn handler_that_injected_the_error_gets_the_page_zero_filled() {
    let dir = tempfile::tempdir().unwrap();
    let vm = swapped(&dir);
    let events = vm.subscribe_events();
    let rec = Arc::new(Recorder {
        answer: HandlerAnswer::Injected,
        seen: Mutex::new(Vec::new()),
        calls: AtomicU32::new(0),
    });
    vm.set_memory_error_handler(Some(rec.clone()));
    corrupt(&vm, &dir, 12);
    // The embedder told the guest; what the page reads meanwhile is zeros.
    assert_eq!(vm.sim_read(12).unwrap(), vec![0u8; PS as usize]);
    assert_eq!(
        *rec.seen.lock().unwrap(),
        vec![MemoryError {
            offset: 12 * PS,
            len: PS,
            thread_id: 0,
            reason: MemoryErrorReason::SlotCorrupt,
        }]
    );
    assert_eq!(vm.page_states(12, 1).unwrap()[0], PageState::Poisoned);
    let ev = memory_error_events(&events);
    assert!(
        matches!(
            ev.as_slice(),
            [VmEvent::MemoryError {
                action: MemoryErrorAction::Injected,
                ..
            }]
        ),
        "{ev:?}"
    );
    // A handler asking to poison gets the default.
    vm.set_memory_error_handler(Some(Arc::new(Recorder {
        answer: HandlerAnswer::Poison,
        seen: Mutex::new(Vec::new()),
        calls: AtomicU32::new(0),
    })));
    corrupt(&vm, &dir, 13);
    assert!(matches!(vm.sim_read(13), Err(Error::MemoryError { .. })));
    assert_eq!(rec.calls.load(Ordering::SeqCst), 1);
}
