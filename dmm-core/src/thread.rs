// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every thread libdmm starts goes through [`spawn`]: a panic in it ends
//! the process (SIGABRT) with `libdmm: thread <name> panicked: <message>;
//! aborting` on stderr. A fault or policy thread that died quietly would
//! leave vCPUs waiting on their faults for ever: a stuck guest is worse than
//! a dead one.

use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::thread::{Builder, JoinHandle};

/// Names of threads that panic as soon as they start ([`panic_on_start`]).
static PANIC_ON_START: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Starts a thread called `name` running `f`. A panic in `f` is reported
/// and aborts the process; it never reaches the `JoinHandle`.
pub(crate) fn spawn<F, T>(name: &str, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let owned = name.to_owned();
    Builder::new().name(owned.clone()).spawn(move || {
        let run = || {
            if armed(&owned) {
                panic!("test hook: panic_on_start({owned})");
            }
            f()
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(v) => v,
            Err(payload) => {
                abort_after_panic(&owned, &panic_message(payload.as_ref()));
            }
        }
    })
}

/// Writes the report to stderr, whatever logger the host has, and aborts.
fn abort_after_panic(name: &str, message: &str) -> ! {
    let line = format!("libdmm: thread {name} panicked: {message}; aborting\n");
    // One write of the whole line; stderr is unbuffered. Nothing to do if
    // it fails: the abort still says the process died.
    let _ = io::stderr().lock().write_all(line.as_bytes());
    std::process::abort()
}

/// Text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

fn armed(name: &str) -> bool {
    let mut names = PANIC_ON_START
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match names.iter().position(|n| n == name) {
        Some(i) => {
            names.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Test hook: the next thread libdmm starts with this name (`dmm-policy`,
/// `dmm-fault`, `dmm-control`, `dmm-control-conn`, `dmm-control-events`,
/// `dmm-events`) panics at once, which aborts the process. Only for tests
/// that run it in a child process (`tests/thread_panic.rs`).
#[doc(hidden)]
pub fn panic_on_start(name: &str) {
    PANIC_ON_START
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(name.to_owned());
}
