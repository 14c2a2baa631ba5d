// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `dmmctl` against a simulated VM: output, effects, exit codes.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use dmm::vm::{PolicySet, Vm, VmConfig};

const MIB: u64 = 1 << 20;

fn vm(dir: &Path) -> (Arc<Vm>, PathBuf) {
    let path = dir.join("ctl.sock");
    let vm = Vm::new_sim(VmConfig {
        control_path: Some(path.clone()),
        policies: PolicySet {
            balloon: true,
            report: true,
            ..PolicySet::default()
        },
        ..VmConfig::new("dmmctl-test", 64 * MIB)
    })
    .unwrap();
    vm.set_fault_around(4096).unwrap();
    (vm, path)
}

fn dmmctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DMM_SOCKET")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn ok(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

#[track_caller]
fn fails(out: &Output, code: i32, needle: &str) {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr does not name '{needle}': {stderr}"
    );
}

#[test]
fn commands_act_on_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, sock) = vm(dir.path());
    for pfn in 0..4 {
        vm.sim_touch(pfn, true).unwrap();
    }

    let out = ok(&dmmctl(&sock, &["stats"]));
    assert!(
        out.contains("64.0 MiB (16384 pages of 4096 bytes)"),
        "{out}"
    );
    assert!(out.contains("resident 4, unpopulated 16380"), "{out}");

    let out = ok(&dmmctl(&sock, &["stats", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stats"]["resident_pages"], 4);

    ok(&dmmctl(&sock, &["set-pool", "32M"]));
    assert_eq!(vm.stats().pool_size, 32 * MIB);
    ok(&dmmctl(&sock, &["set-pool", "33554432"]));

    let out = ok(&dmmctl(&sock, &["balloon", "48M"]));
    assert_eq!(vm.stats().balloon_target_pages, 4096, "{out}");

    let out = ok(&dmmctl(
        &sock,
        &["release", "--reason", "balloon", "0:4096", "0x1000:4K"],
    ));
    assert!(out.contains("released 2 pages"), "{out}");
    let out = ok(&dmmctl(
        &sock,
        &["release", "--reason", "report", "8192:8192"],
    ));
    assert!(out.contains("released 2 pages"), "{out}");
    assert_eq!(vm.stats().resident_pages, 0);

    let out = ok(&dmmctl(&sock, &["states", "0", "6"]));
    assert!(out.starts_with("0x00000000  BBFF.."), "{out}");
    assert!(
        out.contains("B ballooned 2") && out.contains("F reported 2"),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_2_and_name_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, sock) = vm(dir.path());
    fails(&dmmctl(&sock, &["set-pool", "12Q"]), 2, "12Q");
    fails(
        &dmmctl(&sock, &["release", "--reason", "balloon", "0x1000"]),
        2,
        "0x1000",
    );
    fails(
        &dmmctl(&sock, &["release", "--reason", "whim", "0:4096"]),
        2,
        "whim",
    );
    fails(
        &dmmctl(&sock, &["release", "--reason", "balloon"]),
        2,
        "GPA:LEN",
    );
    fails(&dmmctl(&sock, &["frobnicate"]), 2, "frobnicate");
    let out = Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .arg("stats")
        .env_remove("DMM_SOCKET")
        .output()
        .unwrap();
    fails(&out, 2, "--socket");
    // DMM_SOCKET stands in for --socket.
    let out = Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .arg("stats")
        .env("DMM_SOCKET", &sock)
        .output()
        .unwrap();
    ok(&out);
    let help = ok(&Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .arg("--help")
        .output()
        .unwrap());
    for cmd in [
        "stats",
        "set-pool",
        "balloon",
        "states",
        "release",
        "watch",
        "DMM_SOCKET",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}: {help}");
    }
    assert_eq!(
        vm.stats().pool_size,
        64 * MIB,
        "a usage error changed the VM"
    );
}

#[test]
fn runtime_errors_exit_1_and_name_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, sock) = vm(dir.path());
    fails(&dmmctl(&sock, &["set-pool", "1G"]), 1, "1073741824");
    fails(&dmmctl(&sock, &["balloon", "1G"]), 1, "1073741824");
    fails(&dmmctl(&sock, &["balloon", "0"]), 1, "balloon size 0");
    fails(&dmmctl(&sock, &["states", "16380", "10"]), 1, "16380");
    let missing = dir.path().join("nobody.sock");
    fails(&dmmctl(&missing, &["stats"]), 1, "nobody.sock");
    let s = vm.stats();
    assert_eq!(
        (s.pool_size, s.balloon_target_pages),
        (64 * MIB, 0),
        "a failed command changed the VM"
    );
}

#[test]
fn watch_prints_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, sock) = vm(dir.path());
    vm.set_balloon_target(5).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmmctl"))
        .arg("--socket")
        .arg(&sock)
        .arg("watch")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("balloon target 5 pages"), "{first}");
    vm.set_balloon_target(256).unwrap();
    let second = lines.next().unwrap().unwrap();
    assert!(
        second.contains("balloon target 256 pages (1.0 MiB)"),
        "{second}"
    );
    // Shutting the VM down ends the watch with a runtime error.
    vm.shutdown();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
}

/// `dmmctl stats` against an older server, whose answer has only the
/// statistics of the first release (up to `host_allocated_bytes`), and a
/// newer one, with a field this dmmctl does not know: both print.
#[test]
fn stats_from_older_and_newer_servers() {
    use std::io::Write;
    use std::os::unix::net::UnixListener;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let answers = [
        r#"{"ok":true,"stats":{"size":67108864,"page_size":4096,"pool_size":33554432,"resident_pages":5,"host_allocated_bytes":20480},"guest":{}}"#,
        r#"{"ok":true,"stats":{"size":67108864,"page_size":4096,"pool_size":33554432,"swap_corrupt":2,"from_the_future":9},"guest":{}}"#,
    ];
    let server = std::thread::spawn(move || {
        for answer in answers {
            let (conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).unwrap();
            assert!(line.contains(r#""cmd":"stats""#), "{line}");
            writeln!(&conn, "{answer}").unwrap();
        }
    });
    let out = ok(&dmmctl(&path, &["stats"]));
    assert!(out.contains("pool            32.0 MiB"), "{out}");
    assert!(out.contains("resident        0.0 MiB (5 pages)"), "{out}");
    let out = ok(&dmmctl(&path, &["stats", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stats"]["swap_corrupt"], 2, "{out}");
    assert_eq!(v["stats"]["wp_faults"], 0, "{out}");
    server.join().unwrap();
}
