// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A host that refuses kernel-mode userfaultfd faults (no access to
//! `/dev/userfaultfd`, `vm.unprivileged_userfaultfd=0`, no CAP_SYS_PTRACE)
//! is an error at attach naming the fix, unless user-mode-only faults are
//! asked for. Checked in a child run of this test as user `nobody`.

#![allow(clippy::unwrap_used)]

#[path = "common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use dmm::vm::{PolicySet, Vm, VmConfig};

const CHILD: &str = "DMM_UFFD_EPERM_CHILD";

// capset(2)'s ABI (linux/capability.h); libc has the syscall number only.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_DAC_READ_SEARCH: u32 = 2;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn new_vm(user_mode_only: bool) -> std::sync::Arc<Vm> {
    Vm::new_linux(VmConfig {
        uffd_user_mode_only: user_mode_only,
        policies: PolicySet::parse("none").unwrap(),
        ..VmConfig::new("uffd-eperm", 1 << 20)
    })
    .unwrap()
}

/// What the child (user `nobody`) checks.
fn as_nobody() {
    // The capability that let this binary be reached would also let it
    // read `/dev/userfaultfd`: drop every capability before the check.
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let none = [CapData::default(), CapData::default()];
    // SAFETY: capset(2) reads the header and two data structs that live on
    // this stack frame; prctl takes integers only.
    unsafe {
        assert_eq!(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0
            ),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_capset, &mut hdr, none.as_ptr()), 0);
    }
    let vm = new_vm(false);
    let fd = vm.memfd().unwrap();
    // SAFETY: a fresh shared mapping of the VM's 1 MiB memfd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: the mapping outlives the VM (never unmapped here).
    let msg = match unsafe { vm.attach(p.cast(), 1 << 20) } {
        Ok(()) => panic!("attach succeeded without kernel-mode userfaultfd"),
        Err(e) => e.to_string(),
    };
    println!("attach as nobody: {msg}");
    // Asked for explicitly: runs, with user-mode faults only.
    let map = common::Mapped::new(new_vm(true));
    // SAFETY: inside the mapping.
    unsafe { map.page_ptr(3, 4096).write_volatile(5) };
    assert_eq!(map.vm.stats().faults, 1);
    drop(map);
}

#[test]
fn kernel_mode_userfaultfd_refused_is_an_error_naming_the_fix() {
    if std::env::var_os(CHILD).is_some() {
        as_nobody();
        return;
    }
    let sysctl =
        std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap_or_default();
    // SAFETY: getuid has no arguments.
    if sysctl.trim() != "0" || unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root and vm.unprivileged_userfaultfd=0 (is {sysctl:?})");
        return;
    }
    // `nobody` may not reach the build tree (a checkout under /root is
    // 0700) nor, in a chroot made from `mktemp -d`, even `/` (0700): run a
    // copy of this test binary from a 0755 directory, and keep only
    // CAP_DAC_READ_SEARCH across the exec (ambient) so the path walk to it
    // and to the dynamic loader succeeds; the child drops it before it
    // checks anything.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("linux_uffd_eperm");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    for p in [dir.path(), exe.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = Command::new(&exe);
    cmd.current_dir(dir.path());
    cmd.args([
        "--exact",
        "kernel_mode_userfaultfd_refused_is_an_error_naming_the_fix",
        "--nocapture",
    ])
    .env(CHILD, "1");
    // SAFETY: between fork and exec only async-signal-safe calls (prctl,
    // setgroups, setres[ug]id, capset), on memory of this stack frame.
    unsafe {
        cmd.pre_exec(|| {
            let cap = 1u32 << CAP_DAC_READ_SEARCH;
            let mut hdr = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let data = [
                CapData {
                    effective: cap,
                    permitted: cap,
                    inheritable: cap,
                },
                CapData::default(),
            ];
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0
                || libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) != 0
                || libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    libc::c_ulong::from(CAP_DAC_READ_SEARCH),
                    0,
                    0,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {} as nobody: {e}", exe.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child as nobody failed:\n{text}");
    assert!(text.contains("1 passed"), "{text}");
    println!("{text}");
}
