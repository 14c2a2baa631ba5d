// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Builds `tests/c/dmm_c_test.c` with `cc -Wall -Wextra -Werror` against the
//! `libdmm.a` of this build and runs it: the C ABI as QEMU uses it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/`, where cargo put `libdmm.a` next to this test's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// `cargo test` builds the library as an rlib for the tests, not always the
/// staticlib: build it (a no-op when it is fresh) with the cargo running us.
fn build_staticlib() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "dmm-core", "--lib"]);
    if profile_dir().file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(status.success(), "{cargo} build -p dmm-core --lib failed");
}

#[test]
fn c_program_runs_against_libdmm() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib = profile_dir().join("libdmm.a");
    build_staticlib();
    assert!(
        lib.exists(),
        "{} missing: cargo builds the staticlib with the tests",
        lib.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("dmm_c_test");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g"])
        .arg("-I")
        .arg(root.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("tests/c/dmm_c_test.c"))
        .arg(&lib)
        // What rustc reports as native-static-libs (see tests/c/Makefile).
        .args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        out.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let socket = tmp.path().join("ctl.sock");
    let run = Command::new(&exe)
        .arg(&socket)
        .env("DMM_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(0),
        "dmm_c_test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("dmm_c_test: ok ("), "{stdout}");
    assert!(!stderr.contains("FAIL"), "{stderr}");
    // DMM_LOG=info: libdmm's own log reaches the host's stderr.
    assert!(
        stderr.contains("libdmm: INFO dmm::mech::linux::uffd: userfaultfd: offered features"),
        "{stderr}"
    );
    assert!(!socket.exists(), "control socket left behind");
}
