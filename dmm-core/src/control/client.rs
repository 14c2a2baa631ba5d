// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A blocking client of the control socket (used by `dmmctl` and tests).

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::protocol::{
    Empty, ErrorBody, Event, Gpa, GuestValues, HintRound, Millis, NumPages, PageAnswer, PageStates,
    PoolAnswer, Ranges, Release, Request, SetPool, StatesAnswer, StatsAnswer,
};
use crate::vm::{BatchOutcome, PageInfo, ReleaseReason};

/// Longest answer line the client accepts (a 1 Mi-page `page-states` answer
/// is just over 1 MiB).
const MAX_ANSWER: usize = 16 << 20;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect to control socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing failed.
    #[error("control socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent something that is not a valid answer.
    #[error("bad answer from the server: {0}")]
    Protocol(String),
    /// The server refused the request.
    #[error("{0}")]
    Remote(ErrorBody),
}

/// One connection to a control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Partial line kept across read timeouts.
    partial: Vec<u8>,
    /// Events read while waiting for an answer.
    events: VecDeque<Event>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            partial: Vec::new(),
            events: VecDeque::new(),
        })
    }

    /// Reads the next line as JSON; `Ok(None)` on read timeout.
    fn read_value(&mut self) -> Result<Option<Value>, ClientError> {
        loop {
            let limit = (MAX_ANSWER + 1 - self.partial.len().min(MAX_ANSWER)) as u64;
            match io::Read::take(&mut self.reader, limit).read_until(b'\n', &mut self.partial) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) if self.partial.last() == Some(&b'\n') => {
                    let line = std::mem::take(&mut self.partial);
                    return serde_json::from_slice(&line).map(Some).map_err(|e| {
                        ClientError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&line)))
                    });
                }
                Ok(_) if self.partial.len() > MAX_ANSWER => {
                    return Err(ClientError::Protocol(format!(
                        "answer longer than {MAX_ANSWER} bytes"
                    )))
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends one raw line and returns the answer object as received (events
    /// that arrive first are queued). For tests and debugging.
    pub fn call_raw(&mut self, line: &str) -> Result<Value, ClientError> {
        self.writer.set_read_timeout(None)?;
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        self.writer.write_all(buf.as_bytes())?;
        loop {
            let Some(v) = self.read_value()? else {
                continue;
            };
            if v.get("event").is_some() {
                let ev = serde_json::from_value(v.clone())
                    .map_err(|e| ClientError::Protocol(format!("bad event {v}: {e}")))?;
                self.events.push_back(ev);
                continue;
            }
            return Ok(v);
        }
    }

    /// Sends `req` and decodes a successful answer as `T`; a failure is
    /// [`ClientError::Remote`].
    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        let mut v = self.call_raw(&req.encode())?;
        let ok = v.as_object_mut().and_then(|o| o.remove("ok"));
        match ok {
            Some(Value::Bool(true)) => serde_json::from_value(v.clone())
                .map_err(|e| ClientError::Protocol(format!("{e}: {v}"))),
            Some(Value::Bool(false)) => {
                let err = v.get("error").cloned().unwrap_or(Value::Null);
                let body: ErrorBody = serde_json::from_value(err)
                    .map_err(|e| ClientError::Protocol(format!("{e}: {v}")))?;
                Err(ClientError::Remote(body))
            }
            _ => Err(ClientError::Protocol(format!("answer without `ok`: {v}"))),
        }
    }

    /// `stats`.
    pub fn stats(&mut self) -> Result<StatsAnswer, ClientError> {
        self.call(&Request::Stats)
    }

    /// `set-pool`; returns the new pool size.
    pub fn set_pool(&mut self, bytes: u64) -> Result<u64, ClientError> {
        self.call::<PoolAnswer>(&Request::SetPool(SetPool { bytes }))
            .map(|a| a.pool_size)
    }

    /// `page-states`; one letter per page.
    pub fn page_states(&mut self, first_pfn: u64, count: u64) -> Result<String, ClientError> {
        self.call::<StatesAnswer>(&Request::PageStates(PageStates { first_pfn, count }))
            .map(|a| a.states)
    }

    /// `release` of `(gpa, len)` ranges.
    pub fn release(
        &mut self,
        reason: ReleaseReason,
        ranges: Vec<(u64, u64)>,
    ) -> Result<BatchOutcome, ClientError> {
        self.call(&Request::Release(Release { reason, ranges }))
    }

    /// `pin` of `(gpa, len)` ranges: never swapped or zero-reclaimed.
    pub fn pin(&mut self, ranges: Vec<(u64, u64)>) -> Result<BatchOutcome, ClientError> {
        self.call(&Request::Pin(Ranges { ranges }))
    }

    /// `unpin` of `(gpa, len)` ranges.
    pub fn unpin(&mut self, ranges: Vec<(u64, u64)>) -> Result<BatchOutcome, ClientError> {
        self.call(&Request::Unpin(Ranges { ranges }))
    }

    /// `set-swap-size` in bytes.
    pub fn set_swap_size(&mut self, bytes: u64) -> Result<(), ClientError> {
        self.call::<Empty>(&Request::SetSwapSize(SetPool { bytes }))
            .map(drop)
    }

    /// `page-info`: state, pin and swap slot of the page at `gpa`.
    pub fn page_info(&mut self, gpa: u64) -> Result<PageInfo, ClientError> {
        self.call::<PageAnswer>(&Request::PageInfo(Gpa { gpa }))
            .map(|a| a.page)
    }

    /// `set-balloon-deadline` in milliseconds.
    pub fn set_balloon_deadline(&mut self, ms: u64) -> Result<(), ClientError> {
        self.call::<Millis>(&Request::SetBalloonDeadline(Millis { ms }))
            .map(drop)
    }

    /// `subscribe-events`: VM events (`reclaim-behind`) follow, read them
    /// with [`Client::next_event`].
    pub fn subscribe_events(&mut self) -> Result<(), ClientError> {
        self.call::<Empty>(&Request::SubscribeEvents).map(drop)
    }

    /// `reclaim-back` of `(gpa, len)` ranges.
    pub fn reclaim_back(&mut self, ranges: Vec<(u64, u64)>) -> Result<BatchOutcome, ClientError> {
        self.call(&Request::ReclaimBack(Ranges { ranges }))
    }

    /// `set-balloon-target` in 4 KiB pages.
    pub fn set_balloon_target(&mut self, num_pages: u64) -> Result<(), ClientError> {
        self.call::<NumPages>(&Request::SetBalloonTarget(NumPages { num_pages }))
            .map(drop)
    }

    /// `balloon-actual` in 4 KiB pages.
    pub fn balloon_actual(&mut self, num_pages: u64) -> Result<(), ClientError> {
        self.call::<Empty>(&Request::BalloonActual(NumPages { num_pages }))
            .map(drop)
    }

    /// `guest-stats`.
    pub fn guest_stats(&mut self, values: BTreeMap<String, u64>) -> Result<(), ClientError> {
        self.call::<Empty>(&Request::GuestStats(GuestValues { values }))
            .map(drop)
    }

    /// `hint-done`: free page hint round `round` ended after `pages` hinted.
    pub fn hint_done(&mut self, round: u32, pages: u64) -> Result<(), ClientError> {
        self.call::<Empty>(&Request::HintDone(HintRound { round, pages }))
            .map(drop)
    }

    /// `subscribe-balloon`; returns the current target. Events follow, read
    /// them with [`Client::next_event`].
    pub fn subscribe_balloon(&mut self) -> Result<u64, ClientError> {
        self.call::<NumPages>(&Request::SubscribeBalloon)
            .map(|a| a.num_pages)
    }

    /// The next pushed event; waits at most `timeout` (`None`: forever).
    /// `Ok(None)` when the timeout passed.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(Some(ev));
        }
        self.writer.set_read_timeout(timeout)?;
        let v = self.read_value();
        self.writer.set_read_timeout(None)?;
        let Some(v) = v? else { return Ok(None) };
        if v.get("event").is_none() {
            return Err(ClientError::Protocol(format!(
                "answer without a request: {v}"
            )));
        }
        serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| ClientError::Protocol(format!("bad event {v}: {e}")))
    }
}
