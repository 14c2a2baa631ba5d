// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket end to end on a simulated VM: every command, every
//! documented error (with nothing changed), socket ownership and lifetime,
//! balloon subscriptions.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dmm::control::protocol::{ErrorCode, Event, NumPages, StatsAnswer};
use dmm::control::{Client, ClientError};
use dmm::vm::{PolicySet, ReleaseReason, Vm, VmConfig};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;
const PAGES: u64 = SIZE / 4096;

fn config(path: &Path) -> VmConfig {
    VmConfig {
        control_path: Some(path.to_owned()),
        policies: PolicySet {
            balloon: true,
            swap: false,
            share_zero: false,
            report: true,
        },
        ..VmConfig::new("control-test", SIZE)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    vm: Arc<Vm>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dmm.sock");
    let vm = Vm::new_sim(config(&path)).unwrap();
    vm.set_fault_around(4096).unwrap(); // one page per touch
    Fixture {
        _dir: dir,
        path,
        vm,
    }
}

fn connect(f: &Fixture) -> Client {
    Client::connect(&f.path).unwrap()
}

/// Sends a raw line; asserts a failure with `code` whose message names `needle`.
#[track_caller]
fn expect_error(c: &mut Client, line: &str, code: &str, needle: &str) {
    let v = c.call_raw(line).unwrap();
    assert_eq!(v["ok"], json!(false), "{line} -> {v}");
    assert_eq!(v["error"]["code"], json!(code), "{line} -> {v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(needle),
        "{line}: message '{msg}' does not name '{needle}'"
    );
}

#[test]
fn every_command_works() {
    let f = fixture();
    let mut c = connect(&f);

    let s = c.stats().unwrap();
    assert_eq!(
        (s.stats.size, s.stats.page_size, s.stats.pool_size),
        (SIZE, 4096, SIZE)
    );
    assert_eq!(s.stats.unpopulated_pages, PAGES);

    // Raw answers have the documented shape.
    let v = c.call_raw(r#"{"cmd":"stats"}"#).unwrap();
    assert_eq!(v["ok"], json!(true));
    assert_eq!(v["stats"]["size"], json!(SIZE));
    assert!(v["guest"].is_object());

    for pfn in 0..8 {
        f.vm.sim_touch(pfn, true).unwrap();
    }
    assert_eq!(c.page_states(0, 10).unwrap(), "RRRRRRRR..");
    assert_eq!(c.page_states(PAGES - 2, 2).unwrap(), "..");

    let out = c
        .release(ReleaseReason::Balloon, vec![(0, 4 * 4096)])
        .unwrap();
    assert_eq!((out.pages, out.bytes, out.ignored), (4, 4 * 4096, 0));
    let out = c
        .release(ReleaseReason::Report, vec![(4 * 4096, 2 * 4096)])
        .unwrap();
    assert_eq!((out.pages, out.bytes), (2, 2 * 4096));
    assert_eq!(c.page_states(0, 8).unwrap(), "BBBBFFRR");
    let s = c.stats().unwrap().stats;
    assert_eq!(
        (s.ballooned_pages, s.reported_pages, s.resident_pages),
        (4, 2, 2)
    );
    assert!(!f.vm.sim_present(0), "a ballooned page still holds memory");

    let out = c.reclaim_back(vec![(0, 2 * 4096)]).unwrap();
    assert_eq!(out.pages, 2);
    assert_eq!(c.page_states(0, 8).unwrap(), "..BBFFRR");

    assert_eq!(c.set_pool(8 * MIB).unwrap(), 8 * MIB);
    assert_eq!(c.stats().unwrap().stats.pool_size, 8 * MIB);

    c.set_balloon_target(100).unwrap();
    assert_eq!(c.stats().unwrap().stats.balloon_target_pages, 100);
    c.balloon_actual(60).unwrap();
    assert_eq!(c.stats().unwrap().stats.balloon_actual_pages, 60);

    c.guest_stats([("swap-in".to_owned(), 5), ("free-memory".to_owned(), 4096)].into())
        .unwrap();
    let g = c.stats().unwrap().guest;
    assert_eq!(g.get("swap-in"), Some(&5));
    assert_eq!(g.get("free-memory"), Some(&4096));

    assert_eq!(c.subscribe_balloon().unwrap(), 100);

    // The typed client reports refusals with their code.
    match c.set_pool(2 * SIZE) {
        Err(ClientError::Remote(e)) => assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}"),
        other => panic!("pool above guest RAM accepted: {other:?}"),
    }
}

/// Each bad request, with what its error must be and name.
const BAD_REQUESTS: &[(&str, &str, &str)] = &[
    ("{\"cmd\":\"stats\"", "malformed", "{\"cmd\":\"stats\""),
    ("hello", "malformed", "hello"),
    ("[\"stats\"]", "malformed", "[\"stats\"]"),
    ("{\"cmd\":\"explode\"}", "unknown-command", "explode"),
    ("{\"command\":\"stats\"}", "malformed", "cmd"),
    ("{\"cmd\":[1]}", "malformed", "[1]"),
    ("{\"cmd\":\"set-pool\"}", "malformed", "bytes"),
    ("{\"cmd\":\"set-pool\",\"bytes\":\"1G\"}", "malformed", "1G"),
    ("{\"cmd\":\"set-pool\",\"bytes\":1.5}", "malformed", "1.5"),
    (
        "{\"cmd\":\"set-pool\",\"bytes\":33554432}",
        "invalid-argument",
        "33554432",
    ),
    (
        "{\"cmd\":\"set-pool\",\"bytes\":4097}",
        "invalid-argument",
        "4097",
    ),
    (
        "{\"cmd\":\"set-pool\",\"bytes\":4096,\"force\":true}",
        "malformed",
        "force",
    ),
    (
        "{\"cmd\":\"page-states\",\"first_pfn\":4090,\"count\":7}",
        "invalid-argument",
        "4090",
    ),
    (
        "{\"cmd\":\"page-states\",\"first_pfn\":0,\"count\":1048577}",
        "invalid-argument",
        "1048577",
    ),
    (
        "{\"cmd\":\"page-states\",\"first_pfn\":18446744073709551615,\"count\":2}",
        "invalid-argument",
        "18446744073709551615",
    ),
    (
        "{\"cmd\":\"page-states\",\"count\":1}",
        "malformed",
        "first_pfn",
    ),
    (
        "{\"cmd\":\"release\",\"reason\":\"boredom\",\"ranges\":[[0,4096]]}",
        "malformed",
        "boredom",
    ),
    (
        "{\"cmd\":\"release\",\"reason\":\"balloon\"}",
        "malformed",
        "ranges",
    ),
    (
        "{\"cmd\":\"release\",\"reason\":\"balloon\",\"ranges\":[[0,\"x\"]]}",
        "malformed",
        "ranges[0]",
    ),
    (
        "{\"cmd\":\"release\",\"reason\":\"balloon\",\"ranges\":[4096]}",
        "malformed",
        "ranges[0]",
    ),
    (
        "{\"cmd\":\"reclaim-back\",\"ranges\":{}}",
        "malformed",
        "ranges",
    ),
    (
        "{\"cmd\":\"set-balloon-target\",\"num_pages\":4097}",
        "invalid-argument",
        "4097",
    ),
    (
        "{\"cmd\":\"set-balloon-target\",\"num_pages\":4294967296}",
        "invalid-argument",
        "4294967296",
    ),
    (
        "{\"cmd\":\"set-balloon-target\",\"num_pages\":-1}",
        "malformed",
        "-1",
    ),
    (
        "{\"cmd\":\"balloon-actual\",\"num_pages\":99999}",
        "invalid-argument",
        "99999",
    ),
    (
        "{\"cmd\":\"guest-stats\",\"values\":{\"swap-in\":\"lots\"}}",
        "malformed",
        "lots",
    ),
    (
        "{\"cmd\":\"subscribe-balloon\",\"num_pages\":1}",
        "malformed",
        "num_pages",
    ),
];

#[test]
fn bad_requests_are_answered_and_change_nothing() {
    let f = fixture();
    for pfn in [0, 5, 9] {
        f.vm.sim_touch(pfn, true).unwrap();
    }
    let mut c = connect(&f);
    c.set_balloon_target(10).unwrap();
    let before: StatsAnswer = c.stats().unwrap();
    let states_before = c.page_states(0, PAGES).unwrap();
    for (line, code, needle) in BAD_REQUESTS {
        expect_error(&mut c, line, code, needle);
        // Same connection still serves, and nothing changed.
        assert_eq!(c.stats().unwrap(), before, "after {line}");
    }
    assert_eq!(c.page_states(0, PAGES).unwrap(), states_before);
}

#[test]
fn ranges_outside_guest_ram_are_ignored_and_counted() {
    let f = fixture();
    f.vm.sim_touch(PAGES - 1, true).unwrap();
    let mut c = connect(&f);
    let before = c.stats().unwrap().stats;
    let states_before = c.page_states(0, PAGES).unwrap();
    let ranges = vec![
        (SIZE, 4096),            // just past the end
        (SIZE - 4096, 2 * 4096), // straddles the end
        (u64::MAX - 4095, 4096), // wraps
        (100, 4096),             // unaligned
        (0, 0),                  // empty
    ];
    for reason in [ReleaseReason::Balloon, ReleaseReason::Report] {
        let out = c.release(reason, ranges.clone()).unwrap();
        assert_eq!((out.pages, out.bytes), (0, 0), "{reason:?}: {out:?}");
        assert!(out.ignored > 0, "{reason:?}: {out:?}");
    }
    let out = c.reclaim_back(ranges).unwrap();
    assert_eq!(out.pages, 0);
    assert_eq!(c.page_states(0, PAGES).unwrap(), states_before);
    assert!(f.vm.sim_present(PAGES - 1), "the last page was released");
    let after = c.stats().unwrap().stats;
    assert!(after.ignored_requests > before.ignored_requests);
    assert_eq!(
        dmm::vm::Stats {
            ignored_requests: 0,
            ..after
        },
        dmm::vm::Stats {
            ignored_requests: 0,
            ..before
        }
    );
}

#[test]
fn long_lines_and_blank_lines() {
    let f = fixture();
    let mut raw = UnixStream::connect(&f.path).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(raw.try_clone().unwrap());
    let mut long = vec![b' '; (1 << 20) + 10];
    long.push(b'\n');
    raw.write_all(&long).unwrap();
    raw.write_all(b"\n\n{\"cmd\":\"stats\"}\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["error"]["code"], json!("malformed"), "{line}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1048576"),
        "{line}"
    );
    line.clear();
    reader.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["ok"],
        json!(true),
        "blank lines are skipped, the next request served: {line}"
    );

    // A line of exactly 1 MiB (padding included) is still read.
    let req = br#"{"cmd":"stats"}"#;
    let mut exact = req.to_vec();
    exact.resize(1 << 20, b' ');
    exact.push(b'\n');
    raw.write_all(&exact).unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], json!(true), "{line}");
}

#[test]
fn socket_is_private_and_exclusive() {
    let f = fixture();
    let meta = std::fs::symlink_metadata(&f.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A second VM on a live socket fails, naming the path; the first keeps serving.
    let err = Vm::new_sim(config(&f.path)).unwrap_err().to_string();
    assert!(
        err.contains(&f.path.display().to_string()) && err.contains("in use"),
        "{err}"
    );
    assert_eq!(connect(&f).stats().unwrap().stats.size, SIZE);

    // A path that is not a socket is refused and left alone.
    let file = f.path.with_file_name("plain-file");
    std::fs::write(&file, b"keep me").unwrap();
    let err = Vm::new_sim(config(&file)).unwrap_err().to_string();
    assert!(
        err.contains("plain-file") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // A path in a missing directory: the error names it.
    let missing = f.path.with_file_name("no-such-dir").join("s.sock");
    let err = Vm::new_sim(config(&missing)).unwrap_err().to_string();
    assert!(err.contains("no-such-dir"), "{err}");
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listens
    assert!(path.exists());
    let vm = Vm::new_sim(config(&path)).unwrap();
    assert_eq!(
        Client::connect(&path).unwrap().stats().unwrap().stats.size,
        SIZE
    );
    drop(vm);
}

#[test]
fn shutdown_stops_the_server_and_removes_the_socket() {
    let f = fixture();
    let mut c = connect(&f);
    c.stats().unwrap();
    let mut sub = connect(&f);
    sub.subscribe_balloon().unwrap();
    f.vm.shutdown();
    assert!(!f.path.exists(), "socket left after shutdown");
    match c.stats() {
        Err(ClientError::Closed | ClientError::Io(_)) => {}
        other => panic!("connection still served after shutdown: {other:?}"),
    }
    // The subscriber sees the end of the stream (after the initial event).
    let mut ended = false;
    for _ in 0..3 {
        match sub.next_event(Some(Duration::from_secs(5))) {
            Ok(Some(_)) => {}
            Err(ClientError::Closed | ClientError::Io(_)) => {
                ended = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ended, "subscription not closed by shutdown");
    assert!(matches!(
        Client::connect(&f.path),
        Err(ClientError::Connect { .. })
    ));

    // Dropping the last reference also stops it.
    let g = fixture();
    let path = g.path.clone();
    drop(g.vm);
    assert!(!path.exists(), "socket left after the VM was dropped");
}

#[test]
fn subscription_gets_initial_target_and_changes() {
    let f = fixture();
    f.vm.set_balloon_target(7).unwrap();
    let mut sub = connect(&f);
    assert_eq!(sub.subscribe_balloon().unwrap(), 7);
    let wait = Some(Duration::from_secs(5));
    let first = sub.next_event(wait).unwrap();
    assert_eq!(first, Some(Event::BalloonTarget(NumPages { num_pages: 7 })));

    // A change from another connection and one from the VM itself.
    connect(&f).set_balloon_target(300).unwrap();
    assert_eq!(
        sub.next_event(wait).unwrap(),
        Some(Event::BalloonTarget(NumPages { num_pages: 300 }))
    );
    f.vm.set_balloon_target(0).unwrap();
    assert_eq!(
        sub.next_event(wait).unwrap(),
        Some(Event::BalloonTarget(NumPages { num_pages: 0 }))
    );
    // No event without a change.
    assert_eq!(
        sub.next_event(Some(Duration::from_millis(300))).unwrap(),
        None
    );

    // Requests on the subscribed connection still get their answers.
    sub.balloon_actual(0).unwrap();
    assert_eq!(sub.stats().unwrap().stats.balloon_target_pages, 0);

    // The raw wire format of an event.
    let mut raw = UnixStream::connect(&f.path).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"{\"cmd\":\"subscribe-balloon\"}\n").unwrap();
    let mut reader = BufReader::new(raw);
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        lines.push(serde_json::from_str::<Value>(&l).unwrap());
    }
    assert_eq!(lines[0], json!({"ok": true, "num_pages": 0}));
    assert_eq!(lines[1], json!({"event": "balloon-target", "num_pages": 0}));
}

#[test]
fn many_clients_at_once() {
    let f = fixture();
    let path = f.path.clone();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path).unwrap();
                for _ in 0..50 {
                    c.guest_stats([(format!("client-{i}"), i)].into()).unwrap();
                    assert_eq!(c.stats().unwrap().stats.size, SIZE);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn shutdown_under_load_ends_every_connection() {
    let f = fixture();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for i in 0..6 {
        let (path, done) = (f.path.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(&path).unwrap();
            if i % 2 == 0 {
                c.subscribe_balloon().unwrap();
            }
            let mut served = 0u64;
            while c.stats().is_ok() {
                served += 1;
            }
            done.send(served).unwrap();
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    f.vm.shutdown();
    for _ in 0..6 {
        let served = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a client still served");
        assert!(served > 0);
    }
    assert!(!f.path.exists());
}
