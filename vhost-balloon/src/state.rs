// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device state shared by the vring thread, the vhost-user handler thread,
//! and the control threads (DMM subscription or `--control-socket`). It
//! outlives a QEMU connection: target, actual and counters survive a reconnect.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::{debug, info, warn};
use serde_json::{json, Value};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vmm_sys_util::timerfd::TimerFd;

use crate::balloon::{ConfigSpace, Counters};

/// How long after SET_BACKEND_REQ_FD a stale target is sent again.
const RESEND_DELAY: Duration = Duration::from_millis(500);

/// What the device tells libdmm asynchronously (never from the vhost-user
/// handler thread, which QEMU may be blocked on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The driver wrote `actual`.
    Actual(u32),
    /// New guest statistics.
    GuestStats(BTreeMap<String, u64>),
    /// A free page hint round ended (the guest sent all it had, or it was
    /// replaced, or the driver has no hinting): tell the guest DONE, then
    /// libdmm.
    HintDone {
        /// The round.
        round: u32,
        /// 4 KiB pages hinted in it.
        pages: u64,
    },
}

/// The free page hint round the device runs, if any.
#[derive(Debug, Default)]
pub struct HintState {
    /// The driver acked `VIRTIO_BALLOON_F_FREE_PAGE_HINT`.
    pub acked: bool,
    /// The round asked of the guest (its id is in the config space).
    pub round: Option<u32>,
    /// The driver started it (sent its id back on the queue).
    pub started: bool,
    /// 4 KiB pages hinted in it so far.
    pub pages: u64,
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
    /// Free page hinting.
    pub hint: HintState,
}

/// State shared by all threads of the device.
#[derive(Default)]
pub struct Shared {
    state: Mutex<DeviceState>,
    frontend: Mutex<Option<Backend>>,
    notices: Mutex<Option<Sender<Notice>>>,
    stats_timer: Mutex<Option<StatsTimer>>,
}

/// The stats polling timer and its periods: a new target fires it at once.
struct StatsTimer {
    timer: Arc<Mutex<TimerFd>>,
    /// While the balloon is empty.
    interval: Duration,
    /// While the balloon holds pages: libdmm gives them back when the
    /// guest's available memory runs low, so it must see it in time.
    held: Duration,
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

    /// Lets a new target ask the guest for fresh statistics at once (libdmm
    /// sizes the balloon by the guest's available memory).
    pub fn set_stats_timer(&self, timer: Arc<Mutex<TimerFd>>, interval: Duration) {
        *lock(&self.stats_timer) = Some(StatsTimer {
            timer,
            interval,
            held: interval,
        });
    }

    /// Polls every `held` while the balloon holds pages (zero: the interval).
    pub fn set_stats_held_interval(&self, held: Duration) {
        if let Some(t) = lock(&self.stats_timer).as_mut() {
            t.held = if held.is_zero() { t.interval } else { held };
        }
        self.arm_stats_timer();
    }

    /// The stats period now (`None`: polling is off).
    pub fn stats_period(&self) -> Option<Duration> {
        let held = self.state().config.actual > 0;
        lock(&self.stats_timer)
            .as_ref()
            .map(|t| if held { t.held } else { t.interval })
    }

    /// Arms the stats timer for the period that applies now (called when it
    /// changes: a new held interval, the balloon starting or stopping to
    /// hold pages).
    pub fn arm_stats_timer(&self) {
        if let Some(period) = self.stats_period() {
            self.reset_stats_timer(period, period);
        }
    }

    /// Fires the stats timer now (then every period again).
    fn request_stats(&self) {
        if let Some(period) = self.stats_period() {
            self.reset_stats_timer(Duration::from_millis(1), period);
        }
    }

    fn reset_stats_timer(&self, first: Duration, period: Duration) {
        if let Some(t) = lock(&self.stats_timer).as_ref() {
            if let Err(e) = lock(&t.timer).reset(first, Some(period)) {
                warn!("cannot arm the guest statistics timer: {e}");
            }
        }
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
        self.send_config_change();
        self.request_stats();
    }

    /// libdmm asks for free page hint round `round`. A round still under
    /// way ends first; a driver without hinting ends this one at once.
    pub fn ask_hints(&self, round: u32) {
        let ended = {
            let mut st = self.state();
            if !st.hint.acked {
                drop(st);
                self.notify(Notice::HintDone { round, pages: 0 });
                return;
            }
            let ended = st.hint.round.replace(round);
            let pages = std::mem::take(&mut st.hint.pages);
            st.hint.started = false;
            st.config.free_page_hint_cmd_id = round;
            ended.map(|r| (r, pages))
        };
        if let Some((round, pages)) = ended {
            self.notify(Notice::HintDone { round, pages });
        }
        info!("free page hint round {round} asked");
        self.send_config_change();
    }

    /// A hint round ended: the guest may use its hinted pages again (DONE).
    /// Not called from the vhost-user handler thread.
    pub fn hints_done(&self) {
        {
            let mut st = self.state();
            if st.hint.round.is_some() {
                // A newer round was asked meanwhile: it keeps its id.
                return;
            }
            st.config.free_page_hint_cmd_id = crate::balloon::HINT_CMD_ID_DONE;
        }
        self.send_config_change();
    }

    /// Sends a config-change message to the connected frontend, if any.
    /// No device lock is held: QEMU may call GET_CONFIG before it acks.
    fn send_config_change(&self) {
        let frontend = lock(&self.frontend).clone();
        let Some(frontend) = frontend else {
            debug!("no frontend connected: the driver reads the target at probe");
            return;
        };
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

    /// A frontend (re)connected. If the driver may hold a stale target (the
    /// target changed while the device was away), tell it again once QEMU has
    /// finished setting the device up. Called on the handler thread, so the
    /// message goes from a short-lived thread of its own.
    pub fn frontend_connected(self: &Arc<Self>, backend: Backend) {
        self.set_frontend(Some(backend));
        let stale = {
            let st = self.state();
            st.config.num_pages != st.config.actual
        };
        if !stale {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("balloon-resend".into())
            .spawn(move || {
                std::thread::sleep(RESEND_DELAY);
                me.send_config_change();
            });
        if let Err(e) = spawned {
            warn!("cannot start the config-change resend thread: {e}");
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
