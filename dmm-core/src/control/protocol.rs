// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Wire types of the control protocol (`docs/control-protocol.md`): requests,
//! answers, events, error codes, and the parser that names every bad value.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::vm::{GuestRange, ReleaseReason, Stats, Vm};
use crate::Error;

/// Longest request line the server reads, newline excluded.
pub const MAX_LINE: usize = 1 << 20;
/// Most pages one `page-states` request may ask for.
pub const MAX_PAGE_STATES: u64 = 1 << 20;

/// `set-pool` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPool {
    /// New pool size in bytes.
    pub bytes: u64,
}

/// `page-states` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageStates {
    /// First page frame number (units of the VM's page size).
    pub first_pfn: u64,
    /// Number of pages, at most [`MAX_PAGE_STATES`].
    pub count: u64,
}

/// `release` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Why the guest gave the ranges up.
    pub reason: ReleaseReason,
    /// `[gpa, len]` pairs in bytes.
    pub ranges: Vec<(u64, u64)>,
}

/// `reclaim-back` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ranges {
    /// `[gpa, len]` pairs in bytes.
    pub ranges: Vec<(u64, u64)>,
}

/// A balloon size in 4 KiB pages: `set-balloon-target` and `balloon-actual`
/// arguments, `subscribe-balloon` answer, `balloon-target` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumPages {
    /// Pages of 4 KiB.
    pub num_pages: u64,
}

/// A free page hint round: `free-page-hint` event, `hint-done` arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintRound {
    /// The round (2 and up: virtio reserves 0 and 1).
    pub round: u32,
    /// Pages of 4 KiB the guest hinted (`hint-done`; 0 in the event).
    #[serde(default)]
    pub pages: u64,
}

/// `guest-stats` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestValues {
    /// `VIRTIO_BALLOON_S_*` tag name -> value.
    pub values: BTreeMap<String, u64>,
}

/// Arguments of commands that take none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Statistics of the VM and of the guest.
    Stats,
    /// Set the pool size.
    SetPool(SetPool),
    /// One letter per page.
    PageStates(PageStates),
    /// The guest gave ranges up.
    Release(Release),
    /// The guest takes ranges back (balloon deflate).
    ReclaimBack(Ranges),
    /// Set the balloon target.
    SetBalloonTarget(NumPages),
    /// The balloon device reports `actual`.
    BalloonActual(NumPages),
    /// The balloon device reports guest statistics.
    GuestStats(GuestValues),
    /// Receive `balloon-target` and `free-page-hint` events on this connection.
    SubscribeBalloon,
    /// The balloon device ended a free page hint round.
    HintDone(HintRound),
    /// Exclude ranges from swap and zero reclaim (a device's vrings).
    Pin(Ranges),
    /// Remove pins.
    Unpin(Ranges),
    /// Set the swap store's capacity in bytes.
    SetSwapSize(SetPool),
    /// Set the balloon's deadline before swapping takes over (ms).
    SetBalloonDeadline(Millis),
    /// Receive VM events (`pool-size-changed`, `pool-reached`,
    /// `reclaim-behind`, `memory-error`) on this connection.
    SubscribeEvents,
    /// What DMM knows of one page: state, pin, swap slot.
    PageInfo(Gpa),
    /// Fault injection (`DMM_FAULT_INJECTION=1`): the next read of a
    /// swapped page's slot fails with EIO.
    InjectSwapReadError(Gpa),
}

/// A guest address (any byte of a page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpa {
    /// Offset in guest RAM.
    pub gpa: u64,
}

/// Answer of `page-info` and `inject-swap-read-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageAnswer {
    /// What DMM knows of the page.
    pub page: crate::vm::PageInfo,
}

/// `memory-error` event body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryErrorBody {
    /// Offset of the page in guest RAM.
    pub gpa: u64,
    /// Bytes (one page).
    pub len: u64,
    /// Why its content is lost.
    pub reason: crate::vm::MemoryErrorReason,
    /// How the guest was told.
    pub action: crate::vm::MemoryErrorAction,
    /// The faulting thread's id (0: unknown).
    pub thread_id: u32,
}

/// A duration in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Millis {
    /// Milliseconds.
    pub ms: u64,
}

/// `reclaim-behind` event body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Behind {
    /// Bytes resident beyond the pool.
    pub excess_bytes: u64,
    /// Pool size in bytes.
    pub pool_size: u64,
    /// How long resident has been above the pool.
    pub waited_ms: u64,
}

/// `pool-size-changed` event body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolChanged {
    /// New pool size in bytes.
    pub pool_size: u64,
    /// Pool size before the change, in bytes.
    pub previous_pool_size: u64,
    /// Bytes resident when the pool changed.
    pub resident_bytes: u64,
}

/// `pool-reached` event body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReached {
    /// Pool size in bytes.
    pub pool_size: u64,
    /// Bytes resident now.
    pub resident_bytes: u64,
    /// Milliseconds since the pool change.
    pub took_ms: u64,
}

/// Command names, as on the wire.
pub const COMMANDS: &[&str] = &[
    "stats",
    "set-pool",
    "page-states",
    "release",
    "reclaim-back",
    "set-balloon-target",
    "balloon-actual",
    "guest-stats",
    "subscribe-balloon",
    "pin",
    "unpin",
    "set-swap-size",
    "set-balloon-deadline",
    "subscribe-events",
    "page-info",
    "inject-swap-read-error",
    "hint-done",
];

/// Error codes of failed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Not JSON, not an object, missing or mistyped field, line too long.
    Malformed,
    /// `cmd` names no command.
    UnknownCommand,
    /// A value is out of range.
    InvalidArgument,
    /// The host lacks a feature.
    Unsupported,
    /// A system call failed.
    Os,
    /// Bad state (shut down, not attached, illegal transition).
    State,
    /// The swap store is full.
    SwapFull,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownCommand => "unknown-command",
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Os => "os",
            ErrorCode::State => "state",
            ErrorCode::SwapFull => "swap-full",
        };
        f.write_str(s)
    }
}

/// A failed request: the `error` object of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Text naming the bad value.
    pub message: String,
}

impl ErrorBody {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for ErrorBody {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::Os { .. } | Error::SwapCorrupt { .. } | Error::MemoryError { .. } => {
                ErrorCode::Os
            }
            Error::State(_) | Error::IllegalTransition { .. } => ErrorCode::State,
            Error::SwapFull { .. } => ErrorCode::SwapFull,
        };
        ErrorBody::new(code, e.to_string())
    }
}

/// Answer of `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsAnswer {
    /// Every field of [`Stats`].
    pub stats: Stats,
    /// Last guest statistics the balloon device reported.
    pub guest: BTreeMap<String, u64>,
}

impl StatsAnswer {
    /// The current statistics of `vm`.
    pub fn of(vm: &Vm) -> Self {
        StatsAnswer {
            stats: vm.stats(),
            guest: vm.guest_stats().values,
        }
    }
}

/// Answer of `set-pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolAnswer {
    /// The new pool size in bytes.
    pub pool_size: u64,
}

/// Answer of `page-states`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatesAnswer {
    /// One letter per page (see `PageState::letter`).
    pub states: String,
}

/// Answer of commands without fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// A pushed line, told from answers by its `event` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The balloon target changed (and once right after subscribing).
    BalloonTarget(NumPages),
    /// Ask the guest for free page hints; answered by `hint-done`.
    FreePageHint(HintRound),
    /// Reclaim missed its deadline: resident is still above the pool.
    ReclaimBehind(Behind),
    /// The pool size changed (through any interface).
    PoolSizeChanged(PoolChanged),
    /// Resident came within the pool after a pool change.
    PoolReached(PoolReached),
    /// A page's content was lost and the guest was told.
    MemoryError(MemoryErrorBody),
}

#[derive(Serialize)]
struct Success<'a, T: Serialize> {
    ok: bool,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize)]
struct Failure<'a> {
    ok: bool,
    error: &'a ErrorBody,
}

/// The answer line (without newline) of a successful request.
pub fn encode_ok<T: Serialize>(body: &T) -> String {
    serde_json::to_string(&Success { ok: true, body }).unwrap_or_else(|e| {
        encode_err(&ErrorBody::new(
            ErrorCode::State,
            format!("answer does not serialise: {e}"),
        ))
    })
}

/// The answer line (without newline) of a failed request.
pub fn encode_err(err: &ErrorBody) -> String {
    serde_json::to_string(&Failure {
        ok: false,
        error: err,
    })
    .unwrap_or_else(|_| {
        r#"{"ok":false,"error":{"code":"malformed","message":"unencodable error"}}"#.to_owned()
    })
}

/// The line (without newline) of an event.
pub fn encode_event(ev: &Event) -> String {
    serde_json::to_string(ev).unwrap_or_default()
}

/// Shortens `s` for quoting in an error message.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// Deserialises a command's fields; the error names the field and value.
fn fields<T: DeserializeOwned>(cmd: &str, obj: Map<String, Value>) -> Result<T, ErrorBody> {
    serde_path_to_error::deserialize(Value::Object(obj)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path == "." {
            format!("{cmd}: {inner}")
        } else {
            format!("{cmd}: field `{path}`: {inner}")
        };
        ErrorBody::new(ErrorCode::Malformed, msg)
    })
}

impl Request {
    /// Parses one request line. Every error names the bad value.
    pub fn parse(line: &str) -> Result<Request, ErrorBody> {
        let value: Value = serde_json::from_str(line).map_err(|e| {
            ErrorBody::new(
                ErrorCode::Malformed,
                format!("not JSON ({e}): {}", excerpt(line)),
            )
        })?;
        let Value::Object(mut obj) = value else {
            return Err(ErrorBody::new(
                ErrorCode::Malformed,
                format!("request is not a JSON object: {}", excerpt(line)),
            ));
        };
        let cmd = match obj.remove("cmd") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(ErrorBody::new(
                    ErrorCode::Malformed,
                    format!(
                        "field `cmd` is {}, expected a string",
                        excerpt(&other.to_string())
                    ),
                ))
            }
            None => return Err(ErrorBody::new(ErrorCode::Malformed, "missing field `cmd`")),
        };
        let req = match cmd.as_str() {
            "stats" => fields::<NoFields>(&cmd, obj).map(|_| Request::Stats)?,
            "set-pool" => Request::SetPool(fields(&cmd, obj)?),
            "page-states" => Request::PageStates(fields(&cmd, obj)?),
            "release" => Request::Release(fields(&cmd, obj)?),
            "reclaim-back" => Request::ReclaimBack(fields(&cmd, obj)?),
            "set-balloon-target" => Request::SetBalloonTarget(fields(&cmd, obj)?),
            "balloon-actual" => Request::BalloonActual(fields(&cmd, obj)?),
            "guest-stats" => Request::GuestStats(fields(&cmd, obj)?),
            "pin" => Request::Pin(fields(&cmd, obj)?),
            "unpin" => Request::Unpin(fields(&cmd, obj)?),
            "set-swap-size" => Request::SetSwapSize(fields(&cmd, obj)?),
            "set-balloon-deadline" => Request::SetBalloonDeadline(fields(&cmd, obj)?),
            "page-info" => Request::PageInfo(fields(&cmd, obj)?),
            "inject-swap-read-error" => Request::InjectSwapReadError(fields(&cmd, obj)?),
            "hint-done" => Request::HintDone(fields(&cmd, obj)?),
            "subscribe-events" => {
                fields::<NoFields>(&cmd, obj).map(|_| Request::SubscribeEvents)?
            }
            "subscribe-balloon" => {
                fields::<NoFields>(&cmd, obj).map(|_| Request::SubscribeBalloon)?
            }
            other => {
                return Err(ErrorBody::new(
                    ErrorCode::UnknownCommand,
                    format!(
                        "unknown command '{}' (expected one of: {})",
                        excerpt(other),
                        COMMANDS.join(", ")
                    ),
                ))
            }
        };
        Ok(req)
    }

    /// The request as one line (without newline).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Converts wire ranges.
pub fn guest_ranges(ranges: &[(u64, u64)]) -> Vec<GuestRange> {
    ranges
        .iter()
        .map(|&(gpa, len)| GuestRange { gpa, len })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> ErrorBody {
        match Request::parse(line) {
            Err(e) => e,
            Ok(r) => panic!("{line} parsed as {r:?}"),
        }
    }

    #[test]
    fn parses_every_command() {
        let cases = [
            (r#"{"cmd":"stats"}"#, Request::Stats),
            (
                r#"{"cmd":"set-pool","bytes":4096}"#,
                Request::SetPool(SetPool { bytes: 4096 }),
            ),
            (
                r#"{"cmd":"page-states","first_pfn":1,"count":2}"#,
                Request::PageStates(PageStates {
                    first_pfn: 1,
                    count: 2,
                }),
            ),
            (
                r#"{"cmd":"release","reason":"report","ranges":[[0,4096]]}"#,
                Request::Release(Release {
                    reason: ReleaseReason::Report,
                    ranges: vec![(0, 4096)],
                }),
            ),
            (
                r#"{"cmd":"reclaim-back","ranges":[]}"#,
                Request::ReclaimBack(Ranges { ranges: vec![] }),
            ),
            (
                r#"{"cmd":"set-balloon-target","num_pages":3}"#,
                Request::SetBalloonTarget(NumPages { num_pages: 3 }),
            ),
            (
                r#"{"cmd":"balloon-actual","num_pages":3}"#,
                Request::BalloonActual(NumPages { num_pages: 3 }),
            ),
            (
                r#"{"cmd":"guest-stats","values":{"swap-in":5}}"#,
                Request::GuestStats(GuestValues {
                    values: [("swap-in".to_owned(), 5)].into(),
                }),
            ),
            (r#"{"cmd":"subscribe-balloon"}"#, Request::SubscribeBalloon),
            (
                r#"{"cmd":"pin","ranges":[[4096,8192]]}"#,
                Request::Pin(Ranges {
                    ranges: vec![(4096, 8192)],
                }),
            ),
            (
                r#"{"cmd":"unpin","ranges":[]}"#,
                Request::Unpin(Ranges { ranges: vec![] }),
            ),
            (
                r#"{"cmd":"set-swap-size","bytes":4096}"#,
                Request::SetSwapSize(SetPool { bytes: 4096 }),
            ),
            (
                r#"{"cmd":"set-balloon-deadline","ms":10}"#,
                Request::SetBalloonDeadline(Millis { ms: 10 }),
            ),
            (r#"{"cmd":"subscribe-events"}"#, Request::SubscribeEvents),
            (
                r#"{"cmd":"page-info","gpa":8192}"#,
                Request::PageInfo(Gpa { gpa: 8192 }),
            ),
            (
                r#"{"cmd":"inject-swap-read-error","gpa":0}"#,
                Request::InjectSwapReadError(Gpa { gpa: 0 }),
            ),
        ];
        for (line, want) in cases {
            let got = Request::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(got, want, "{line}");
            // The client's encoding parses back to the same request.
            assert_eq!(Request::parse(&want.encode()).ok(), Some(want), "{line}");
        }
    }

    #[test]
    fn errors_name_the_bad_value() {
        let e = err("{not json");
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("{not json"), "{}", e.message);

        let e = err("[1,2]");
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("[1,2]"), "{}", e.message);

        let e = err(r#"{"bytes":1}"#);
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("cmd"), "{}", e.message);

        let e = err(r#"{"cmd":7}"#);
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains('7'), "{}", e.message);

        let e = err(r#"{"cmd":"frobnicate"}"#);
        assert_eq!(e.code, ErrorCode::UnknownCommand);
        assert!(e.message.contains("frobnicate"), "{}", e.message);

        let e = err(r#"{"cmd":"set-pool"}"#);
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("bytes"), "{}", e.message);

        let e = err(r#"{"cmd":"set-pool","bytes":"lots"}"#);
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(
            e.message.contains("bytes") && e.message.contains("lots"),
            "{}",
            e.message
        );

        let e = err(r#"{"cmd":"set-pool","bytes":-1}"#);
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("-1"), "{}", e.message);

        let e = err(r#"{"cmd":"release","reason":"whim","ranges":[]}"#);
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("whim"), "{}", e.message);

        let e = err(r#"{"cmd":"release","reason":"balloon","ranges":[[0,1,2]]}"#);
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("ranges[0]"), "{}", e.message);

        let e = err(r#"{"cmd":"stats","extra":1}"#);
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("extra"), "{}", e.message);
    }

    #[test]
    fn answers_have_the_documented_shape() {
        let ok: Value =
            serde_json::from_str(&encode_ok(&PoolAnswer { pool_size: 8192 })).unwrap_or_default();
        assert_eq!(ok, serde_json::json!({"ok": true, "pool_size": 8192}));
        let err: Value =
            serde_json::from_str(&encode_err(&ErrorBody::new(ErrorCode::SwapFull, "x")))
                .unwrap_or_default();
        assert_eq!(
            err,
            serde_json::json!({"ok": false, "error": {"code": "swap-full", "message": "x"}})
        );
        let ev: Value = serde_json::from_str(&encode_event(&Event::BalloonTarget(NumPages {
            num_pages: 9,
        })))
        .unwrap_or_default();
        assert_eq!(
            ev,
            serde_json::json!({"event": "balloon-target", "num_pages": 9})
        );
        let empty: Value = serde_json::from_str(&encode_ok(&Empty {})).unwrap_or_default();
        assert_eq!(empty, serde_json::json!({"ok": true}));
    }
}
