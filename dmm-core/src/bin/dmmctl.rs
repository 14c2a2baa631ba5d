// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `dmmctl`: controls a VM's DMM memory through its control socket.
//!
//! Exit status: 0 success, 1 runtime error (connection, refused request),
//! 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use dmm::control::cli::{format_page, format_states, format_stats, mib, parse_range, parse_size};
use dmm::control::map::render_svg;
use dmm::control::protocol::{Event, MAX_PAGE_STATES};
use dmm::control::{Client, ClientError};
use dmm::vm::ReleaseReason;

/// Controls a VM's DMM memory (pool, balloon, page states) through the VM's
/// control socket.
#[derive(Debug, Parser)]
#[command(name = "dmmctl", version, about, long_about = None)]
struct Cli {
    /// The VM's control socket (the backend's `control-socket`).
    #[arg(short, long, env = "DMM_SOCKET", value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the VM's statistics (MiB and page counts; --json: raw).
    Stats {
        /// Print the protocol's JSON answer instead.
        #[arg(long)]
        json: bool,
    },
    /// Set the pool: the host memory the VM may hold resident (e.g. 512M, 2G).
    SetPool {
        /// Pool size: bytes or a number with a K, M, G or T suffix.
        #[arg(value_name = "SIZE", value_parser = parse_size)]
        size: u64,
    },
    /// Inflate or deflate the balloon so that the guest keeps SIZE (like QMP `balloon`).
    Balloon {
        /// RAM the guest keeps: bytes or a number with a K, M, G or T suffix.
        #[arg(value_name = "SIZE", value_parser = parse_size)]
        size: u64,
    },
    /// Show the state of COUNT pages from FIRST_PFN, one letter per page.
    States {
        /// First page frame number (units of the VM's page size).
        #[arg(value_name = "FIRST_PFN", value_parser = parse_size)]
        first_pfn: u64,
        /// Number of pages (at most 1048576).
        #[arg(value_name = "COUNT", value_parser = parse_size)]
        count: u64,
    },
    /// Release guest ranges to the host, as the balloon device would.
    Release {
        /// Why the guest gave the ranges up.
        #[arg(long, value_enum)]
        reason: Reason,
        /// Ranges as GPA:LEN, e.g. 0x100000:2M.
        #[arg(value_name = "GPA:LEN", required = true, value_parser = parse_range)]
        ranges: Vec<(u64, u64)>,
    },
    /// Subscribe to balloon targets and print each one.
    Watch,
    /// Pin guest ranges: never swapped out or zero-reclaimed (device vrings).
    Pin {
        /// Ranges as GPA:LEN, e.g. 0x100000:2M.
        #[arg(value_name = "GPA:LEN", required = true, value_parser = parse_range)]
        ranges: Vec<(u64, u64)>,
    },
    /// Remove pins from guest ranges.
    Unpin {
        /// Ranges as GPA:LEN, e.g. 0x100000:2M.
        #[arg(value_name = "GPA:LEN", required = true, value_parser = parse_range)]
        ranges: Vec<(u64, u64)>,
    },
    /// Set the swap store's capacity (e.g. 1G).
    SetSwapSize {
        /// Capacity: bytes or a number with a K, M, G or T suffix.
        #[arg(value_name = "SIZE", value_parser = parse_size)]
        size: u64,
    },
    /// Print VM events as JSON lines: pool-size-changed, pool-reached, reclaim-behind, memory-error.
    Events {
        /// Exit after this many events (default: never).
        #[arg(short = 'n', long, value_name = "N")]
        count: Option<u64>,
    },
    /// Show what DMM knows of the page at GPA: state, pin, swap slot (file offset, length).
    Page {
        /// Guest address (any byte of the page), e.g. 0x1234000.
        #[arg(value_name = "GPA", value_parser = parse_size)]
        gpa: u64,
        /// Print the protocol's JSON answer instead.
        #[arg(long)]
        json: bool,
    },
    /// Draw the P2M as a picture: one pixel per page, a colour per state.
    Map {
        /// Output file (SVG).
        #[arg(short, long, value_name = "FILE.svg", default_value = "dmm-map.svg")]
        output: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Reason {
    /// The balloon driver inflated over them.
    Balloon,
    /// Free page reporting.
    Report,
    /// Free page hinting (only zero pages are taken).
    Hint,
}

impl From<Reason> for ReleaseReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Balloon => ReleaseReason::Balloon,
            Reason::Report => ReleaseReason::Report,
            Reason::Hint => ReleaseReason::Hint,
        }
    }
}

/// A runtime failure: the message is printed and the exit status is 1.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Value(String),
    #[error("cannot print JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn run(cli: Cli) -> Result<(), CtlError> {
    let mut client = Client::connect(&cli.socket)?;
    match cli.command {
        Command::Stats { json: true } => {
            println!("{}", serde_json::to_string_pretty(&client.stats()?)?)
        }
        Command::Stats { json: false } => print!("{}", format_stats(&client.stats()?)),
        Command::SetPool { size } => {
            let pool = client.set_pool(size)?;
            println!("pool set to {} ({pool} bytes)", mib(pool));
        }
        Command::Balloon { size } => {
            let vm_size = client.stats()?.stats.size;
            if size == 0 || size > vm_size {
                return Err(CtlError::Value(format!(
                    "balloon size {size} is out of range: the guest keeps 1..={vm_size} bytes"
                )));
            }
            let pages = (vm_size - size) / 4096;
            client.set_balloon_target(pages)?;
            println!(
                "balloon target {pages} pages: the guest keeps {}",
                mib(vm_size - pages * 4096)
            );
        }
        Command::States { first_pfn, count } => {
            print!(
                "{}",
                format_states(first_pfn, &client.page_states(first_pfn, count)?)
            );
        }
        Command::Release { reason, ranges } => {
            let out = client.release(reason.into(), ranges)?;
            println!(
                "released {} pages ({} given back to the host), ignored {}",
                out.pages,
                mib(out.bytes),
                out.ignored
            );
        }
        Command::Watch => {
            // The server pushes the current target right after the answer.
            client.subscribe_balloon()?;
            loop {
                match client.next_event(None)? {
                    Some(Event::BalloonTarget(t)) => {
                        println!(
                            "balloon target {} pages ({})",
                            t.num_pages,
                            mib(t.num_pages * 4096)
                        );
                    }
                    Some(Event::FreePageHint(h)) => {
                        println!("free page hint round {} asked", h.round);
                    }
                    Some(other) => println!("{other:?}"),
                    None => {}
                }
            }
        }
        Command::Pin { ranges } => {
            let out = client.pin(ranges)?;
            println!("pinned {} pages, ignored {}", out.pages, out.ignored);
        }
        Command::Unpin { ranges } => {
            let out = client.unpin(ranges)?;
            println!("unpinned {} pages, ignored {}", out.pages, out.ignored);
        }
        Command::SetSwapSize { size } => {
            client.set_swap_size(size)?;
            println!("swap store capacity set to {}", mib(size));
        }
        Command::Events { count } => {
            client.subscribe_events()?;
            let mut seen = 0;
            while count.map_or(true, |n| seen < n) {
                if let Some(ev) = client.next_event(None)? {
                    println!("{}", serde_json::to_string(&ev)?);
                    seen += 1;
                }
            }
        }
        Command::Page { gpa, json } => {
            let p = client.page_info(gpa)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!("{}", format_page(&p));
            }
        }
        Command::Map { output } => {
            if output.extension().and_then(|e| e.to_str()) != Some("svg") {
                return Err(CtlError::Value(format!(
                    "map output {}: only .svg is supported",
                    output.display()
                )));
            }
            let s = client.stats()?.stats;
            let pages = s.size / s.page_size.max(1);
            let mut states = String::with_capacity(pages as usize);
            let mut first = 0;
            while first < pages {
                let count = (pages - first).min(MAX_PAGE_STATES);
                states.push_str(&client.page_states(first, count)?);
                first += count;
            }
            std::fs::write(&output, render_svg(&states, s.page_size))
                .map_err(|e| CtlError::Value(format!("cannot write {}: {e}", output.display())))?;
            println!("wrote {} ({pages} pages)", output.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmmctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}
