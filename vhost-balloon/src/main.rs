// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vhost-balloon`: parses and checks the command line, then runs the device.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vhost_balloon::seccomp::SeccompMode;
use vhost_balloon::{start_backend, BalloonConfig};

/// vhost-user virtio-balloon device (inflate, deflate, stats, free page reporting).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// vhost-user socket to listen on (QEMU connects to it).
    #[arg(long, value_name = "PATH")]
    socket_path: PathBuf,
    /// libdmm control socket: releases go to DMM, targets come from it.
    #[arg(long, value_name = "SOCKET", conflicts_with = "control_socket")]
    dmm: Option<PathBuf>,
    /// Without --dmm: serve set-balloon-target and stats on this socket.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Seconds between guest statistics requests (0: off).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    stats_interval: u64,
    /// Milliseconds between guest statistics requests while the balloon
    /// holds pages: DMM gives them back when the guest runs short (0: as
    /// --stats-interval).
    #[arg(long, value_name = "MS", default_value_t = 250)]
    stats_held_interval_ms: u64,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM (the guest then keeps MemTotal).
    #[arg(long)]
    deflate_on_oom: bool,
    /// With --dmm: offer VIRTIO_BALLOON_F_FREE_PAGE_HINT, so a shrink finds
    /// the guest's free memory before swapping (needs QEMU's
    /// vhost-user-balloon with config-size of at least 12).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    free_page_hint: bool,
    /// What a system call outside the allow-list does.
    #[arg(long, value_enum, value_name = "MODE", default_value = "kill")]
    seccomp: SeccompMode,
    /// Log level: error, warn, info, debug, trace (overrides -v/-q).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<log::LevelFilter>,
    /// More logging (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less logging (repeat for less).
    #[arg(short, long, action = clap::ArgAction::Count)]
    quiet: u8,
}

/// Parses `on` or `off`.
fn on_off(v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("'{other}': expected on or off")),
    }
}

/// Checks that the directory a socket goes into exists.
fn socket_dir_exists(flag: &str, path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "{flag} {}: directory {} does not exist",
            path.display(),
            dir.display()
        ))
    }
}

impl Cli {
    fn into_config(self) -> Result<(BalloonConfig, log::LevelFilter), String> {
        socket_dir_exists("--socket-path", &self.socket_path)?;
        if let Some(p) = &self.control_socket {
            socket_dir_exists("--control-socket", p)?;
            if p == &self.socket_path {
                return Err(format!(
                    "--control-socket {} is the same path as --socket-path",
                    p.display()
                ));
            }
        }
        if let Some(p) = &self.dmm {
            if !p.exists() {
                return Err(format!("--dmm {}: no such socket", p.display()));
            }
        }
        if self.stats_interval > 24 * 3600 {
            return Err(format!(
                "--stats-interval {}: at most 86400 seconds",
                self.stats_interval
            ));
        }
        if self.stats_held_interval_ms > 24 * 3600 * 1000 {
            return Err(format!(
                "--stats-held-interval-ms {}: at most 86400000 milliseconds",
                self.stats_held_interval_ms
            ));
        }
        let level = self.log_level.unwrap_or({
            let base = 2i32 + i32::from(self.verbose) - i32::from(self.quiet); // 2 = warn
            match base {
                i32::MIN..=0 => log::LevelFilter::Off,
                1 => log::LevelFilter::Error,
                2 => log::LevelFilter::Warn,
                3 => log::LevelFilter::Info,
                4 => log::LevelFilter::Debug,
                _ => log::LevelFilter::Trace,
            }
        });
        let cfg = BalloonConfig {
            socket_path: self.socket_path,
            dmm: self.dmm,
            control_socket: self.control_socket,
            stats_interval: Duration::from_secs(self.stats_interval),
            stats_held_interval: Duration::from_millis(self.stats_held_interval_ms),
            deflate_on_oom: self.deflate_on_oom,
            free_page_hint: self.free_page_hint,
            seccomp: self.seccomp,
        };
        Ok((cfg, level))
    }
}

fn main() -> ExitCode {
    let (cfg, level) = match Cli::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-balloon: {e}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .init();
    match start_backend(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-balloon: {e}");
            ExitCode::FAILURE
        }
    }
}
