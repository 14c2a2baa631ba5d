// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vhost-user virtio-balloon device. `main.rs` parses the command line into a
//! [`BalloonConfig`] and calls [`start_backend`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod balloon;
pub mod control;
pub mod dmm;
pub mod pins;
pub mod seccomp;
pub mod sink;
pub mod state;
pub mod vhu_balloon;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::dmm::{DmmClient, DmmError, DmmSink, Push, Subscription};
use crate::seccomp::SeccompMode;
use crate::sink::{PunchHole, ReleaseSink};
use crate::state::{Notice, Shared};
use crate::vhu_balloon::{VhuBalloon, STATS_TIMER_EVENT};

/// Validated configuration of the daemon.
#[derive(Debug, Clone)]
pub struct BalloonConfig {
    /// vhost-user socket to listen on.
    pub socket_path: PathBuf,
    /// libdmm control socket (`None`: punch holes ourselves).
    pub dmm: Option<PathBuf>,
    /// Our own control socket (only without `dmm`).
    pub control_socket: Option<PathBuf>,
    /// Stats polling period (zero: off).
    pub stats_interval: Duration,
    /// Stats polling period while the balloon holds pages (zero: `stats_interval`).
    pub stats_held_interval: Duration,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// Offer free page hinting (with `dmm` only).
    pub free_page_hint: bool,
    /// Seccomp mode after set-up.
    pub seccomp: SeccompMode,
}

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libdmm could not be reached or refused.
    #[error(transparent)]
    Dmm(#[from] DmmError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// Seccomp set-up failed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// Creating the backend failed.
    #[error("creating the balloon backend: {0}")]
    Backend(std::io::Error),
    /// The vhost-user socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// vhost-user error.
        source: vhost::vhost_user::Error,
    },
    /// The vhost-user daemon failed.
    #[error("vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
}

/// Connects to libdmm: restores target and actual, and starts the subscription
/// and notice threads. Returns the release sink.
fn start_dmm(path: &std::path::Path, shared: &Arc<Shared>) -> Result<Arc<dyn ReleaseSink>, Error> {
    let mut client = DmmClient::connect(path)?;
    match client.last_actual() {
        Ok(a) => shared.restore_actual(a),
        Err(e) => warn!("cannot read the last balloon actual back from DMM: {e}"),
    }
    let (mut sub, target) = Subscription::open(path)?;
    shared.set_target(target);

    let (s, p) = (shared.clone(), path.to_path_buf());
    thread::Builder::new()
        .name("balloon-dmm-sub".into())
        .spawn(move || loop {
            match sub.next_push() {
                Ok(Push::Target(n)) => s.set_target(n),
                Ok(Push::FreePageHint(round)) => s.ask_hints(round),
                Err(e) => {
                    warn!("DMM subscription lost: {e}; reconnecting");
                    loop {
                        thread::sleep(Duration::from_secs(1));
                        if let Ok((new, target)) = Subscription::open(&p) {
                            sub = new;
                            s.set_target(target);
                            break;
                        }
                    }
                }
            }
        })
        .map_err(Error::Thread)?;

    let (tx, rx) = mpsc::channel::<Notice>();
    shared.set_notices(tx);
    let mut notifier = DmmClient::connect(path)?;
    let s = shared.clone();
    thread::Builder::new()
        .name("balloon-dmm-notice".into())
        .spawn(move || {
            for n in rx {
                let r = match &n {
                    Notice::Actual(a) => notifier.balloon_actual(*a),
                    Notice::GuestStats(v) => notifier.guest_stats(v),
                    Notice::HintDone { round, pages } => {
                        s.hints_done();
                        notifier.hint_done(*round, *pages)
                    }
                };
                if let Err(e) = r {
                    warn!("cannot send {n:?} to DMM: {e}");
                }
            }
        })
        .map_err(Error::Thread)?;
    Ok(Arc::new(DmmSink::new(client)))
}

/// Runs the device until a fatal error; serves QEMU again after each disconnect.
pub fn start_backend(cfg: BalloonConfig) -> Result<(), Error> {
    let shared = Arc::new(Shared::default());
    let sink: Arc<dyn ReleaseSink> = match &cfg.dmm {
        Some(path) => start_dmm(path, &shared)?,
        None => {
            if let Some(path) = &cfg.control_socket {
                control::serve(path, shared.clone())?;
            }
            Arc::new(PunchHole)
        }
    };
    let backend = Arc::new(
        VhuBalloon::new(shared.clone(), sink, cfg.deflate_on_oom, cfg.stats_interval)
            .map_err(Error::Backend)?
            .with_free_page_hint(cfg.free_page_hint && cfg.dmm.is_some()),
    );
    shared.set_stats_held_interval(cfg.stats_held_interval);
    // One listener for every connection: a frontend reconnecting (QEMU's
    // reconnect-ms) never finds the socket missing.
    let mut listener = Listener::new(&cfg.socket_path, true).map_err(|source| Error::Listen {
        path: cfg.socket_path.clone(),
        source,
    })?;
    seccomp::apply(cfg.seccomp)?;
    loop {
        let mut daemon = VhostUserDaemon::new(
            "vhost-balloon".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(Error::Daemon)?;
        if let Some(h) = daemon.get_epoll_handlers().first() {
            h.register_listener(
                backend.timer_fd(),
                EventSet::IN,
                u64::from(STATS_TIMER_EVENT),
            )
            .map_err(Error::Backend)?;
        }
        info!("waiting for the frontend on {}", cfg.socket_path.display());
        daemon.start(&mut listener).map_err(Error::Daemon)?;
        info!("frontend connected");
        let res = daemon.wait();
        // The vring threads of this connection stop; the next one gets new ones.
        for h in daemon.get_epoll_handlers() {
            h.send_exit_event();
        }
        shared.set_frontend(None);
        connection_ended(res)?;
    }
}

/// Logs why a frontend connection ended; a fatal error of the daemon
/// itself (its thread panicked) is returned.
fn connection_ended(res: Result<(), vhost_user_backend::Error>) -> Result<(), Error> {
    use vhost::vhost_user::Error as VuError;
    use vhost_user_backend::Error as DaemonError;
    match res {
        // wait() folds a broken socket (ECONNRESET, EPIPE) into Ok.
        Ok(()) => warn!("frontend connection broken (socket error); serving again"),
        Err(DaemonError::HandleRequest(VuError::Disconnected)) => {
            info!("frontend closed the connection (EOF); serving again")
        }
        Err(DaemonError::HandleRequest(VuError::PartialMessage)) => {
            warn!("frontend closed the connection in the middle of a message; serving again")
        }
        // A request we could not serve ends this connection, not the device.
        Err(DaemonError::HandleRequest(e)) => {
            warn!("vhost-user request failed: {e}; connection dropped, serving again")
        }
        Err(e) => return Err(Error::Daemon(e)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost::vhost_user::Error as VuError;
    use vhost_user_backend::Error as DaemonError;

    #[test]
    fn only_a_dead_daemon_thread_ends_the_device() {
        let ended = [
            Ok(()),
            Err(DaemonError::HandleRequest(VuError::Disconnected)),
            Err(DaemonError::HandleRequest(VuError::PartialMessage)),
            Err(DaemonError::HandleRequest(VuError::InvalidMessage)),
            Err(DaemonError::HandleRequest(VuError::ReqHandlerError(
                std::io::Error::other("bad ring address"),
            ))),
        ];
        for res in ended {
            let what = format!("{res:?}");
            assert!(connection_ended(res).is_ok(), "{what}");
        }
        let panicked = DaemonError::WaitDaemon(Box::new("panic"));
        assert!(matches!(
            connection_ended(Err(panicked)),
            Err(Error::Daemon(_))
        ));
    }
}
