// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A panic in any thread libdmm starts ends the process by SIGABRT with
//! `libdmm: thread <name> panicked: <message>; aborting` on stderr. Each
//! test runs this binary again as a child (the ignored test `child`) that
//! makes one thread panic, and checks how the child died.
// SAFETY (every unsafe block of this file): plain libc calls on values of
// our own, and the C ABI called with live pointers to local values.
#![allow(clippy::undocumented_unsafe_blocks, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmm::mech::linux::LinuxMech;
use dmm::mech::{FaultSink, Mechanism};
use dmm::vm::{PageSize, Vm, VmConfig};

/// Which scenario the child runs.
const SCENARIO: &str = "DMM_THREAD_PANIC_SCENARIO";
/// A directory the child may use (the parent removes it).
const DIR: &str = "DMM_THREAD_PANIC_DIR";
const MIB: u64 = 1 << 20;

/// Runs `scenario` in a child; asserts SIGABRT and the report for `thread`
/// with `message`.
fn child_aborts(scenario: &str, thread: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child", "--nocapture"])
        .env(SCENARIO, scenario)
        .env(DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A child stuck for good (a thread died quietly, another waits on it).
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{scenario}: {:?}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    let want = format!("libdmm: thread {thread} panicked: {message}; aborting\n");
    assert!(
        stderr.contains(&want),
        "{scenario}: stderr lacks {want:?}:\n{stderr}"
    );
}

fn hook(thread: &str) -> String {
    format!("test hook: panic_on_start({thread})")
}

#[test]
fn policy_thread() {
    child_aborts("policy", "dmm-policy", &hook("dmm-policy"));
}

#[test]
fn fault_thread() {
    child_aborts("fault", "dmm-fault", &hook("dmm-fault"));
}

#[test]
fn fault_thread_panicking_in_a_fault() {
    child_aborts("fault-sink", "dmm-fault", "fault sink panics on pfn 3");
}

#[test]
fn control_accept_thread() {
    child_aborts("control", "dmm-control", &hook("dmm-control"));
}

#[test]
fn control_connection_thread() {
    child_aborts(
        "control-conn",
        "dmm-control-conn",
        &hook("dmm-control-conn"),
    );
}

#[test]
fn control_event_forwarder() {
    child_aborts(
        "control-events",
        "dmm-control-events",
        &hook("dmm-control-events"),
    );
}

#[test]
fn c_event_callback_thread() {
    child_aborts("c-events", "dmm-events", &hook("dmm-events"));
}

fn config(control: Option<&Path>) -> VmConfig {
    VmConfig {
        control_path: control.map(Path::to_path_buf),
        ..VmConfig::new("thread-panic", 4 * MIB)
    }
}

/// A sink whose fault handling panics.
struct PanicSink;

impl FaultSink for PanicSink {
    fn on_fault(&self, pfn: u64, _write: bool) -> dmm::Result<()> {
        panic!("fault sink panics on pfn {pfn}");
    }
    fn on_wp_fault(&self, pfn: u64) -> dmm::Result<()> {
        panic!("fault sink panics on a WP fault of pfn {pfn}");
    }
    fn on_remove(&self, _first: u64, _count: u64) {}
    fn on_ignored(&self) {}
    fn on_device_fault(&self, pfn: u64, _write: bool) -> dmm::Result<bool> {
        panic!("fault sink panics on a device fault of pfn {pfn}");
    }
}

/// Sends one request line and reads the answer line.
fn request(s: &mut UnixStream, line: &str) -> String {
    writeln!(s, "{line}").unwrap();
    let mut answer = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut answer)
        .unwrap();
    answer
}

/// The child: makes one thread panic; returning means it did not abort.
#[test]
#[ignore = "run by the other tests of this file in a child process"]
fn child() {
    let scenario = std::env::var(SCENARIO).expect("run by the tests of this file");
    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    let sock = dir.join("ctl.sock");
    // Kept alive until the abort.
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    match scenario.as_str() {
        "policy" => {
            dmm::thread::panic_on_start("dmm-policy");
            keep.push(Box::new(Vm::new_sim(config(None)).unwrap()));
        }
        "fault" => {
            let vm = Vm::new_linux(config(None)).unwrap();
            dmm::thread::panic_on_start("dmm-fault");
            keep.push(Box::new(common::Mapped::new(vm)));
        }
        "fault-sink" => {
            let mech = LinuxMech::new("thread-panic", 4 * MIB, PageSize::Small, false).unwrap();
            let fd = mech.memfd().unwrap();
            let len = 4 * MIB as usize;
            let p = common::map_shared(fd, len);
            unsafe { mech.attach(p.cast(), len as u64, Arc::new(PanicSink)) }.unwrap();
            // The toucher waits in the fault until the process aborts.
            let page = p as usize + 3 * 4096;
            std::thread::spawn(move || unsafe { (page as *mut u8).write_volatile(1) });
            keep.push(Box::new(mech));
        }
        "control" => {
            dmm::thread::panic_on_start("dmm-control");
            keep.push(Box::new(Vm::new_sim(config(Some(&sock))).unwrap()));
        }
        "control-conn" => {
            keep.push(Box::new(Vm::new_sim(config(Some(&sock))).unwrap()));
            dmm::thread::panic_on_start("dmm-control-conn");
            let mut s = UnixStream::connect(&sock).unwrap();
            request(&mut s, r#"{"cmd":"stats"}"#);
        }
        "control-events" => {
            keep.push(Box::new(Vm::new_sim(config(Some(&sock))).unwrap()));
            let mut s = UnixStream::connect(&sock).unwrap();
            dmm::thread::panic_on_start("dmm-control-events");
            request(&mut s, r#"{"cmd":"subscribe-events"}"#);
            keep.push(Box::new(s));
        }
        "c-events" => {
            use dmm::ffi::*;
            unsafe extern "C" fn cb(_: *mut std::ffi::c_void, _: *const dmm_event) {}
            let cfg = dmm_config {
                size: 4 * MIB,
                page_size: 0,
                pool_size: 0,
                control_path: std::ptr::null(),
                swap_path: std::ptr::null(),
                name: std::ptr::null(),
                policies: 0,
                swap_compress: 0,
                uffd_user_mode_only: 0,
            };
            let mut vm = std::ptr::null_mut();
            let r = unsafe {
                dmm_vm_new(
                    &cfg,
                    std::mem::size_of::<dmm_config>(),
                    &mut vm,
                    std::ptr::null_mut(),
                )
            };
            assert_eq!(r, dmm_result::DMM_OK);
            dmm::thread::panic_on_start("dmm-events");
            let r = unsafe { dmm_vm_set_event_callback(vm, Some(cb), std::ptr::null_mut()) };
            assert_eq!(r, dmm_result::DMM_OK);
        }
        other => panic!("unknown scenario {other}"),
    }
    std::thread::sleep(Duration::from_secs(20));
    panic!("scenario {scenario}: the process did not abort");
}
