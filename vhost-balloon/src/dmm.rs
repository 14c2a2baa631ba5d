// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Client of libdmm's control socket (`docs/control-protocol.md`): one JSON
//! object per line each way. The device keeps two connections: one for
//! requests (release, reclaim-back, balloon-actual, guest-stats, stats) and
//! one subscribed to balloon-target events.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use vm_memory::GuestMemoryMmap;

use crate::balloon::GuestRange;
use crate::sink::{Reason, ReleaseSink, SinkError};

/// Longest line accepted from libdmm (the protocol's limit).
const MAX_LINE: usize = 1 << 20;
/// Ranges per release request (keeps a line far below 1 MiB).
pub const BATCH_RANGES: usize = 4096;
/// How long a request may wait for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors talking to libdmm.
#[derive(Debug, thiserror::Error)]
pub enum DmmError {
    /// The socket could not be reached.
    #[error("cannot connect to DMM control socket {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("DMM control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("DMM closed the control connection")]
    Closed,
    /// The answer is not what the protocol says.
    #[error("DMM protocol error: {0}")]
    Protocol(String),
    /// libdmm answered `ok: false`.
    #[error("DMM refused {cmd}: {code}: {message}")]
    Refused {
        /// Command sent.
        cmd: String,
        /// Error code.
        code: String,
        /// Error text.
        message: String,
    },
}

/// One line-protocol connection.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    /// Connects to `path`.
    pub fn open(path: &Path, timeout: Option<Duration>) -> Result<Self, DmmError> {
        let stream = UnixStream::connect(path).map_err(|source| DmmError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        stream.set_read_timeout(timeout)?;
        let writer = stream.try_clone()?;
        Ok(Connection {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one JSON object as a line.
    pub fn send(&mut self, v: &Value) -> Result<(), DmmError> {
        let mut line = serde_json::to_vec(v).map_err(|e| DmmError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// Reads one JSON object line.
    pub fn recv(&mut self) -> Result<Value, DmmError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(DmmError::Closed);
        }
        if line.len() > MAX_LINE {
            return Err(DmmError::Protocol("line longer than 1 MiB".into()));
        }
        serde_json::from_slice(&line).map_err(|e| DmmError::Protocol(format!("bad JSON: {e}")))
    }

    /// Sends a request and returns its answer (events in between are skipped).
    pub fn request(&mut self, v: &Value) -> Result<Value, DmmError> {
        self.send(v)?;
        loop {
            let a = self.recv()?;
            if a.get("event").is_some() {
                continue;
            }
            return check_ok(v, a);
        }
    }
}

fn check_ok(req: &Value, a: Value) -> Result<Value, DmmError> {
    match a.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(a),
        Some(false) => {
            let err = a.get("error");
            let field = |k: &str| {
                err.and_then(|e| e.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            Err(DmmError::Refused {
                cmd: req
                    .get("cmd")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
                code: field("code"),
                message: field("message"),
            })
        }
        None => Err(DmmError::Protocol(format!("answer without \"ok\": {a}"))),
    }
}

/// Request connection to libdmm, reconnected once when it broke.
#[derive(Debug)]
pub struct DmmClient {
    path: PathBuf,
    conn: Option<Connection>,
}

impl DmmClient {
    /// Connects now (so a bad path is reported at start-up).
    pub fn connect(path: &Path) -> Result<Self, DmmError> {
        let conn = Connection::open(path, Some(REQUEST_TIMEOUT))?;
        Ok(DmmClient {
            path: path.to_path_buf(),
            conn: Some(conn),
        })
    }

    /// Sends `req`, reconnecting and retrying once if the connection broke.
    pub fn request(&mut self, req: &Value) -> Result<Value, DmmError> {
        for attempt in 0..2 {
            if self.conn.is_none() {
                self.conn = Some(Connection::open(&self.path, Some(REQUEST_TIMEOUT))?);
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            match conn.request(req) {
                Err(e @ (DmmError::Io(_) | DmmError::Closed | DmmError::Protocol(_))) => {
                    self.conn = None;
                    if attempt == 1 {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
        Err(DmmError::Closed)
    }

    /// Sends ranges with `cmd` in batches; returns the sum of `pages`.
    fn ranges_cmd(
        &mut self,
        cmd: &str,
        reason: Option<Reason>,
        ranges: &[GuestRange],
    ) -> Result<u64, DmmError> {
        let mut pages = 0;
        for batch in ranges.chunks(BATCH_RANGES) {
            let list: Vec<[u64; 2]> = batch.iter().map(|r| [r.gpa, r.len]).collect();
            let mut req = json!({ "cmd": cmd, "ranges": list });
            if let Some(reason) = reason {
                req["reason"] = json!(reason.as_str());
            }
            let a = self.request(&req)?;
            pages += a.get("pages").and_then(Value::as_u64).unwrap_or(0);
        }
        Ok(pages)
    }

    /// `release`.
    pub fn release(&mut self, reason: Reason, ranges: &[GuestRange]) -> Result<u64, DmmError> {
        self.ranges_cmd("release", Some(reason), ranges)
    }

    /// `reclaim-back`.
    pub fn reclaim_back(&mut self, ranges: &[GuestRange]) -> Result<u64, DmmError> {
        self.ranges_cmd("reclaim-back", None, ranges)
    }

    /// `pin`.
    pub fn pin(&mut self, ranges: &[GuestRange]) -> Result<u64, DmmError> {
        self.ranges_cmd("pin", None, ranges)
    }

    /// `unpin`.
    pub fn unpin(&mut self, ranges: &[GuestRange]) -> Result<u64, DmmError> {
        self.ranges_cmd("unpin", None, ranges)
    }

    /// `balloon-actual`.
    pub fn balloon_actual(&mut self, num_pages: u32) -> Result<(), DmmError> {
        self.request(&json!({ "cmd": "balloon-actual", "num_pages": num_pages }))
            .map(|_| ())
    }

    /// `guest-stats`.
    pub fn guest_stats(&mut self, values: &BTreeMap<String, u64>) -> Result<(), DmmError> {
        self.request(&json!({ "cmd": "guest-stats", "values": values }))
            .map(|_| ())
    }

    /// `hint-done`: free page hint round `round` ended after `pages` hinted.
    pub fn hint_done(&mut self, round: u32, pages: u64) -> Result<(), DmmError> {
        self.request(&json!({ "cmd": "hint-done", "round": round, "pages": pages }))
            .map(|_| ())
    }

    /// The balloon size last reported to DMM (`stats.balloon_actual_pages`).
    pub fn last_actual(&mut self) -> Result<u32, DmmError> {
        let a = self.request(&json!({ "cmd": "stats" }))?;
        let v = a
            .get("stats")
            .and_then(|s| s.get("balloon_actual_pages"))
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                DmmError::Protocol("stats answer without stats.balloon_actual_pages".into())
            })?;
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }
}

/// A connection subscribed to balloon-target events.
#[derive(Debug)]
pub struct Subscription {
    conn: Connection,
}

impl Subscription {
    /// Connects, subscribes, and returns the current target with the subscription.
    pub fn open(path: &Path) -> Result<(Self, u32), DmmError> {
        let mut conn = Connection::open(path, None)?;
        let a = conn.request(&json!({ "cmd": "subscribe-balloon" }))?;
        let target = num_pages(&a)?;
        Ok((Subscription { conn }, target))
    }

    /// Blocks until the next `balloon-target` or `free-page-hint` event.
    pub fn next_push(&mut self) -> Result<Push, DmmError> {
        loop {
            let v = self.conn.recv()?;
            match v.get("event").and_then(Value::as_str) {
                Some("balloon-target") => return num_pages(&v).map(Push::Target),
                Some("free-page-hint") => {
                    let round = v
                        .get("round")
                        .and_then(Value::as_u64)
                        .and_then(|r| u32::try_from(r).ok())
                        .ok_or_else(|| DmmError::Protocol(format!("no u32 round in {v}")))?;
                    return Ok(Push::FreePageHint(round));
                }
                _ => {}
            }
        }
    }
}

/// What libdmm pushes to the balloon device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// A new balloon target (4 KiB pages).
    Target(u32),
    /// Ask the guest for free page hint round `round`.
    FreePageHint(u32),
}

fn num_pages(v: &Value) -> Result<u32, DmmError> {
    let n = v
        .get("num_pages")
        .and_then(Value::as_u64)
        .ok_or_else(|| DmmError::Protocol(format!("no num_pages in {v}")))?;
    u32::try_from(n).map_err(|_| DmmError::Protocol(format!("num_pages {n} does not fit in u32")))
}

/// Release sink that forwards to libdmm.
#[derive(Debug)]
pub struct DmmSink {
    client: Mutex<DmmClient>,
}

impl DmmSink {
    /// Wraps a connected client.
    pub fn new(client: DmmClient) -> Self {
        DmmSink {
            client: Mutex::new(client),
        }
    }

    /// Runs `f` on the client.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut DmmClient) -> Result<T, DmmError>,
    ) -> Result<T, DmmError> {
        let mut guard = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

impl ReleaseSink for DmmSink {
    fn release(
        &self,
        _mem: &GuestMemoryMmap,
        reason: Reason,
        ranges: &[GuestRange],
    ) -> Result<u64, SinkError> {
        Ok(self.with(|c| c.release(reason, ranges))?)
    }

    fn reclaim_back(
        &self,
        _mem: &GuestMemoryMmap,
        ranges: &[GuestRange],
    ) -> Result<u64, SinkError> {
        Ok(self.with(|c| c.reclaim_back(ranges))?)
    }

    fn pin(&self, ranges: &[GuestRange]) -> Result<u64, SinkError> {
        Ok(self.with(|c| c.pin(ranges))?)
    }

    fn unpin(&self, ranges: &[GuestRange]) -> Result<u64, SinkError> {
        Ok(self.with(|c| c.unpin(ranges))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Serves `answers` (one list per connection), one line per request.
    fn fake(path: &Path, answers: Vec<Vec<&'static str>>) {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for script in answers {
                let (s, _) = l.accept().unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                for a in script {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap() == 0 {
                        break;
                    }
                    w.write_all(a.as_bytes()).unwrap();
                }
            }
        });
    }

    #[test]
    fn answers_events_refusals_and_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dmm.sock");
        fake(
            &path,
            vec![
                vec![
                    // An event before the answer is skipped.
                    "{\"event\":\"balloon-target\",\"num_pages\":3}\n{\"ok\":true,\"pages\":2,\"bytes\":8192,\"ignored\":0}\n",
                    "{\"ok\":false,\"error\":{\"code\":\"invalid-argument\",\"message\":\"range 0x0\"}}\n",
                ],
                // Second connection, after the first closed.
                vec!["{\"ok\":true,\"stats\":{\"balloon_actual_pages\":77}}\n"],
            ],
        );
        let mut c = DmmClient::connect(&path).unwrap();
        let r = [GuestRange { gpa: 0, len: 8192 }];
        assert_eq!(c.release(Reason::Balloon, &r).unwrap(), 2);
        match c.reclaim_back(&r) {
            Err(DmmError::Refused { cmd, code, .. }) => {
                assert_eq!(
                    (cmd.as_str(), code.as_str()),
                    ("reclaim-back", "invalid-argument")
                )
            }
            other => panic!("{other:?}"),
        }
        // The first connection is closed now: the client reconnects once.
        assert_eq!(c.last_actual().unwrap(), 77);
    }

    #[test]
    fn missing_socket_is_named() {
        let e = DmmClient::connect(Path::new("/nonexistent/dmm.sock")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dmm.sock"), "{e}");
    }
}
