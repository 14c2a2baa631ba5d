// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device state shared by the vring thread, the vhost-user handler thread,
//! and the control threads (DMM subscription or `--control-socket`). It
//! outlives a QEMU connection: target, actual and counters survive a reconnect.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Mutex, MutexGuard, PoisonError};

use log::{debug, info, warn};
use serde_json::{json, Value};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

use crate::balloon::{ConfigSpace, Counters};

/// What the device tells libdmm asynchronously (never from the vhost-user
/// handler thread, which QEMU may be blocked on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The driver wrote `actual`.
    Actual(u32),
    /// New guest statistics.
    GuestStats(BTreeMap<String, u64>),
}

/// Mutable device state.
#[derive(Debug, Default)]
pub struct DeviceState {
    /// Config space (target and actual).
    pub config: ConfigSpace,
    /// Counters.
    pub counters: Counters,
    /// Last guest statistics.
    pub guest_stats: BTreeMap<String, u64>,
}

/// State shared by all threads of the device.
#[derive(Default)]
pub struct Shared {
    state: Mutex<DeviceState>,
    frontend: Mutex<Option<Backend>>,
    notices: Mutex<Option<Sender<Notice>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Locks the device state.
    pub fn state(&self) -> MutexGuard<'_, DeviceState> {
        lock(&self.state)
    }

    /// Routes notices to `tx` (the DMM worker).
    pub fn set_notices(&self, tx: Sender<Notice>) {
        *lock(&self.notices) = Some(tx);
    }

    /// Queues a notice for libdmm, if connected to one.
    pub fn notify(&self, n: Notice) {
        if let Some(tx) = lock(&self.notices).as_ref() {
            let _ = tx.send(n);
        }
    }

    /// Keeps the backend request channel of the current QEMU connection.
    pub fn set_frontend(&self, backend: Option<Backend>) {
        *lock(&self.frontend) = backend;
    }

    /// Sets a new target (`num_pages`) and, if it changed, tells the
    /// frontend with a config-change message. Must not be called from the
    /// vhost-user handler thread.
    pub fn set_target(&self, num_pages: u32) {
        {
            let mut st = self.state();
            if st.config.num_pages == num_pages {
                return;
            }
            info!(
                "balloon target {} -> {} pages",
                st.config.num_pages, num_pages
            );
            st.config.num_pages = num_pages;
        }
        let frontend = lock(&self.frontend).clone();
        let Some(frontend) = frontend else {
            debug!("no frontend connected: the driver reads the target at probe");
            return;
        };
        // No device lock is held here: QEMU may call GET_CONFIG before it acks.
        let sent = frontend.handle_config_change();
        let mut st = self.state();
        match sent {
            Ok(_) => st.counters.config_changes += 1,
            Err(e) => {
                st.counters.config_change_errors += 1;
                warn!("cannot send config-change to the frontend: {e}");
            }
        }
    }

    /// Sets `actual` as read back from libdmm after a restart.
    pub fn restore_actual(&self, actual: u32) {
        self.state().config.actual = actual;
    }

    /// The `stats` answer of the control socket.
    pub fn stats_json(&self) -> Value {
        let st = self.state();
        let mut counters = serde_json::to_value(st.counters).unwrap_or_else(|_| json!({}));
        counters["num_pages"] = json!(st.config.num_pages);
        counters["actual"] = json!(st.config.actual);
        json!({ "ok": true, "stats": counters, "guest": st.guest_stats })
    }
}
