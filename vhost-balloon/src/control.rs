// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `--control-socket` (used without libdmm): the same line protocol as
//! libdmm's, restricted to `set-balloon-target` and `stats`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use log::{debug, warn};
use serde_json::{json, Value};

use crate::state::Shared;

const MAX_LINE: usize = 1 << 20;

/// Errors setting the control socket up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Something that is not a socket is in the way.
    #[error("control socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// bind/chmod/spawn failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// Binds `path` (replacing a stale socket), mode 0600, and serves it on a thread.
pub fn serve(path: &Path, shared: Arc<Shared>) -> Result<(), ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    thread::Builder::new()
        .name("balloon-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        let shared = shared.clone();
                        if let Err(e) = thread::Builder::new()
                            .name("balloon-control-conn".into())
                            .spawn(move || serve_conn(c, &shared))
                        {
                            warn!("control socket: cannot spawn a connection thread: {e}");
                        }
                    }
                    Err(e) => warn!("control socket accept: {e}"),
                }
            }
        })
        .map_err(io)?;
    Ok(())
}

fn serve_conn(stream: UnixStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let answer = if line.len() > MAX_LINE {
            error("malformed", "line longer than 1 MiB")
        } else {
            handle_line(&line, shared)
        };
        let mut out = answer.to_string().into_bytes();
        out.push(b'\n');
        if writer.write_all(&out).is_err() {
            return;
        }
        if line.len() > MAX_LINE {
            return; // cannot resynchronise inside an over-long line
        }
    }
}

fn error(code: &str, message: &str) -> Value {
    json!({ "ok": false, "error": { "code": code, "message": message } })
}

/// Answers one request line.
pub fn handle_line(line: &[u8], shared: &Shared) -> Value {
    let req: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return error("malformed", &format!("not JSON: {e}")),
    };
    let Some(cmd) = req.get("cmd").and_then(Value::as_str) else {
        return error("malformed", "missing string field \"cmd\"");
    };
    debug!("control: {cmd}");
    match cmd {
        "stats" => shared.stats_json(),
        "set-balloon-target" => {
            let Some(n) = req.get("num_pages").and_then(Value::as_u64) else {
                return error(
                    "malformed",
                    "set-balloon-target needs an unsigned integer \"num_pages\"",
                );
            };
            let Ok(n32) = u32::try_from(n) else {
                return error(
                    "invalid-argument",
                    &format!("num_pages {n} is larger than {}", u32::MAX),
                );
            };
            shared.set_target(n32);
            json!({ "ok": true, "num_pages": n32 })
        }
        other => error(
            "unknown-command",
            &format!("unknown command '{other}' (expected stats, set-balloon-target)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_errors() {
        let s = Shared::default();
        let a = handle_line(br#"{"cmd":"set-balloon-target","num_pages":42}"#, &s);
        assert_eq!(a, json!({"ok": true, "num_pages": 42}));
        assert_eq!(s.state().config.num_pages, 42);
        let a = handle_line(br#"{"cmd":"stats"}"#, &s);
        assert_eq!(a["stats"]["num_pages"], 42);
        for (line, code) in [
            (&br#"nope"#[..], "malformed"),
            (br#"{"x":1}"#, "malformed"),
            (br#"{"cmd":"set-balloon-target"}"#, "malformed"),
            (
                br#"{"cmd":"set-balloon-target","num_pages":-1}"#,
                "malformed",
            ),
            (
                br#"{"cmd":"set-balloon-target","num_pages":4294967296}"#,
                "invalid-argument",
            ),
            (br#"{"cmd":"fly"}"#, "unknown-command"),
        ] {
            let a = handle_line(line, &s);
            assert_eq!(a["ok"], false, "{a}");
            assert_eq!(a["error"]["code"], code, "{a}");
        }
        assert_eq!(s.state().config.num_pages, 42);
    }
}
