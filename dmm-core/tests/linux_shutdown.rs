// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Dropping a `Vm` cleans up: its threads are joined, the userfaultfd is
//! unregistered and closed, the memfd closed, and the caller's mapping keeps
//! working. One test in its own binary, so no other test's VM is counted.

#![allow(clippy::unwrap_used)]

use dmm::vm::{PolicySet, Vm, VmConfig};

const SIZE: u64 = 8 << 20;

fn threads(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == name)
        .count()
}

fn fds(kind: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains(kind))
        .count()
}

fn settles(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

#[test]
fn drop_joins_threads_and_closes_fds() {
    let vm = Vm::new_linux(VmConfig {
        policies: PolicySet::parse("balloon").unwrap(),
        ..VmConfig::new("shutdown", SIZE)
    })
    .unwrap();
    let fd = vm.memfd().unwrap();
    // SAFETY: a shared mapping of the memfd; it keeps the file alive after the Vm closes its fd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    }
    .cast::<u8>();
    assert_ne!(p.cast(), libc::MAP_FAILED);
    // SAFETY: mapped until the end of the test, after the Vm is gone.
    unsafe { vm.attach(p, SIZE) }.unwrap();
    // SAFETY: inside the mapping.
    unsafe { p.write_volatile(1) };
    assert_eq!(vm.stats().faults, 1);
    // A new thread names itself once it runs: give it a moment.
    assert!(settles(
        || threads("dmm-fault") == 1 && threads("dmm-policy") == 1
    ));
    assert_eq!(fds("userfaultfd"), 1);
    assert_eq!(fds("dmm:shutdown"), 1);

    drop(vm);
    // A joined thread can linger in /proc/self/task for a moment: the kernel
    // wakes the joiner before it reaps the task.
    assert!(settles(|| threads("dmm-fault") + threads("dmm-policy") == 0));
    assert_eq!(fds("userfaultfd"), 0);
    assert_eq!(fds("dmm:shutdown"), 0);
    // The mapping still works, now filled by the kernel, and kept its data.
    // SAFETY: inside the mapping.
    unsafe {
        assert_eq!(p.read_volatile(), 1);
        p.add(SIZE as usize - 1).write_volatile(2);
        assert_eq!(p.add(SIZE as usize - 1).read_volatile(), 2);
        libc::munmap(p.cast(), SIZE as usize);
    }
}
