// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A client that disconnects before reading its answers must not kill the
//! host process with SIGPIPE: a C host may leave SIGPIPE at its default
//! action (Rust programs ignore it, so this test restores it). Today std's
//! socket writes pass `MSG_NOSIGNAL`; this guards the server's writes.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use dmm::control::Client;
use dmm::vm::{Vm, VmConfig};

#[test]
fn vanished_client_does_not_raise_sigpipe() {
    // SAFETY: restoring the default disposition of SIGPIPE; this test binary
    // has no other test that could race with it.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipe.sock");
    let vm = Vm::new_sim(VmConfig {
        control_path: Some(path.clone()),
        ..VmConfig::new("sigpipe", 16 << 20)
    })
    .unwrap();
    for _ in 0..20 {
        let mut s = UnixStream::connect(&path).unwrap();
        let burst = "{\"cmd\":\"page-states\",\"first_pfn\":0,\"count\":4096}\n".repeat(200);
        s.write_all(burst.as_bytes()).unwrap();
        drop(s); // gone before any answer is read
    }
    std::thread::sleep(Duration::from_millis(500));
    // Still alive, and the server still serves.
    assert_eq!(
        Client::connect(&path).unwrap().stats().unwrap().stats.size,
        16 << 20
    );
    vm.shutdown();
}
