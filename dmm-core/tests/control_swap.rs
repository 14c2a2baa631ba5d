// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket's swap commands against a simulated VM: `pin`/`unpin`
//! keep pages out of swap, `set-swap-size`, `subscribe-events` delivers
//! `reclaim-behind`, `dmmctl events` prints pool changes, `dmmctl map`
//! draws the P2M, and `dmmctl stats` shows the compressed store.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dmm::control::protocol::Event;
use dmm::control::Client;
use dmm::model::PageState;
use dmm::vm::{PolicySet, Vm, VmConfig};

const PS: u64 = 4096;
const PAGES: u64 = 256;

fn vm(dir: &Path) -> Arc<Vm> {
    vm_with(dir, false)
}

fn vm_with(dir: &Path, swap_compress: bool) -> Arc<Vm> {
    let vm = Vm::new_sim(VmConfig {
        control_path: Some(dir.join("ctl.sock")),
        swap_path: Some(dir.join("swap")),
        swap_compress,
        policies: PolicySet::parse("swap").unwrap(),
        ..VmConfig::new("control-swap", PAGES * PS)
    })
    .unwrap();
    for pfn in 0..PAGES {
        vm.sim_write(pfn, 0, &(pfn + 1).to_le_bytes()).unwrap();
    }
    vm
}

#[test]
fn pin_unpin_and_swap_size_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path());
    let mut c = Client::connect(&dir.path().join("ctl.sock")).unwrap();
    let out = c.pin(vec![(0, 16 * PS), (PAGES * PS, PS)]).unwrap();
    assert_eq!((out.pages, out.ignored), (16, 1));
    c.set_pool(0).unwrap();
    vm.run_policies();
    let states = vm.page_states(0, PAGES).unwrap();
    assert!(states[..16].iter().all(|s| *s == PageState::Resident));
    assert!(states[16..].iter().all(|s| *s == PageState::Swapped));
    assert_eq!(c.stats().unwrap().stats.pinned_pages, 16);
    c.unpin(vec![(0, 16 * PS)]).unwrap();
    vm.run_policies();
    assert_eq!(vm.stats().resident_pages, 0);
    let e = c.set_swap_size(4097).unwrap_err().to_string();
    assert!(e.contains("4097"), "{e}");
    c.set_swap_size(PAGES * PS).unwrap();
    // Every page comes back.
    for pfn in 0..PAGES {
        assert_eq!(vm.sim_read(pfn).unwrap()[..8], (pfn + 1).to_le_bytes());
    }
}

#[test]
fn reclaim_behind_is_pushed_to_event_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path());
    let mut c = Client::connect(&dir.path().join("ctl.sock")).unwrap();
    c.subscribe_events().unwrap();
    c.set_balloon_deadline(0).unwrap();
    c.set_swap_size(10 * PS).unwrap();
    c.set_pool(100 * PS).unwrap();
    vm.run_policies();
    match c.next_event(Some(Duration::from_secs(5))).unwrap() {
        Some(Event::PoolSizeChanged(p)) => {
            assert_eq!(p.pool_size, 100 * PS);
            assert_eq!(p.previous_pool_size, PAGES * PS);
        }
        other => panic!("expected pool-size-changed, got {other:?}"),
    }
    match c.next_event(Some(Duration::from_secs(5))).unwrap() {
        Some(Event::ReclaimBehind(b)) => {
            assert_eq!(b.pool_size, 100 * PS);
            assert_eq!(b.excess_bytes, (PAGES - 10 - 100) * PS);
        }
        other => panic!("expected reclaim-behind, got {other:?}"),
    }
    assert_eq!(c.stats().unwrap().stats.reclaim_behind, 1);
}

#[test]
fn dmmctl_map_draws_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path());
    vm.set_pool_size(PAGES / 2 * PS).unwrap();
    vm.run_policies();
    let svg = dir.path().join("p2m.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .arg("--socket")
        .arg(dir.path().join("ctl.sock"))
        .args(["map", "--output"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&svg).unwrap();
    let s = vm.stats();
    assert!(text.contains(&format!("swapped (S): {} pages", s.swapped_pages)));
    assert!(text.contains(&format!("resident (R): {} pages", s.resident_pages)));
    assert!(s.swapped_pages >= PAGES / 2);
    let bad = Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .arg("--socket")
        .arg(dir.path().join("ctl.sock"))
        .args(["map", "--output", "x.png"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("x.png"));
}

#[test]
fn dmmctl_stats_shows_the_compressed_store() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm_with(dir.path(), true);
    vm.set_pool_size(0).unwrap();
    vm.run_policies();
    let s = vm.stats();
    // Pages of one word and zeros: each compresses into one 512-byte granule.
    assert_eq!(s.swap_slots_used, PAGES, "{s:?}");
    assert_eq!(s.swap_compressed_slots, PAGES, "{s:?}");
    assert_eq!(s.swap_stored_bytes, PAGES * 512, "{s:?}");
    assert!(s.swap_file_bytes <= PAGES * 512 + 16384, "{s:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .arg("--socket")
        .arg(dir.path().join("ctl.sock"))
        .arg("stats")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "swap file       256 compressed of 256 stored, 0.1 MiB in slots (512 bytes per page)"
        ),
        "{text}"
    );
    for pfn in 0..PAGES {
        let page = vm.sim_read(pfn).unwrap();
        assert_eq!(page[..8], (pfn + 1).to_le_bytes());
        assert!(page[8..].iter().all(|&b| b == 0));
    }
    assert_eq!(vm.stats().swap_corrupt, 0);
}

#[test]
fn dmmctl_events_prints_pool_changes() {
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .arg("--socket")
        .arg(dir.path().join("ctl.sock"))
        .args(["events", "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Change the pool until dmmctl, once subscribed, saw a change and exited.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut half = true;
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "dmmctl printed no event"
        );
        let pages = if half { PAGES / 2 } else { PAGES };
        vm.set_pool_size(pages * PS).unwrap();
        half = !half;
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["event"], "pool-size-changed", "{text}");
    let (new, old) = (&lines[0]["pool_size"], &lines[0]["previous_pool_size"]);
    assert!(
        (*new == PAGES / 2 * PS && *old == PAGES * PS)
            || (*new == PAGES * PS && *old == PAGES / 2 * PS),
        "{text}"
    );
}

#[test]
fn page_info_names_the_slot_and_memory_errors_are_pushed() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let vm = vm(dir.path());
    let sock = dir.path().join("ctl.sock");
    let mut c = Client::connect(&sock).unwrap();
    c.set_pool(0).unwrap();
    vm.run_policies();
    let p = c.page_info(7 * PS + 5).unwrap();
    assert_eq!(
        (p.gpa, p.pfn, p.state, p.pinned),
        (7 * PS, 7, PageState::Swapped, false)
    );
    let slot = p.slot.unwrap();
    assert_eq!((slot.location.len, slot.location.compressed), (PS, false));
    let e = c.page_info(PAGES * PS).unwrap_err().to_string();
    assert!(e.contains(&format!("{:#x}", PAGES * PS)), "{e}");
    // Fault injection is off unless asked for at creation.
    let e = c
        .call_raw(r#"{"cmd":"inject-swap-read-error","gpa":0}"#)
        .unwrap();
    assert!(e.to_string().contains("DMM_FAULT_INJECTION"), "{e}");
    // `dmmctl page` prints the same; the damaged slot becomes an event.
    let out = Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .args(["--socket", sock.to_str().unwrap(), "page", "0x7000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("swapped")
            && text.contains(&format!("file offset {:#x}", slot.location.offset)),
        "{text}"
    );
    let mut events = Client::connect(&sock).unwrap();
    events.subscribe_events().unwrap();
    let want = format!("{} (deleted)", dir.path().join("swap").display());
    let fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(fd.path())
        .unwrap();
    f.write_all_at(&[0u8; 64], slot.location.offset).unwrap();
    assert!(vm.sim_read(7).is_err());
    let ev = loop {
        match events.next_event(Some(Duration::from_secs(5))).unwrap() {
            Some(Event::MemoryError(m)) => break m,
            Some(_) => {}
            None => panic!("no memory-error event"),
        }
    };
    assert_eq!((ev.gpa, ev.len), (7 * PS, PS));
    assert_eq!(c.page_info(7 * PS).unwrap().state, PageState::Poisoned);
}
