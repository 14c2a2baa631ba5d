// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libdmm's log inside a C host (QEMU): lines on stderr, prefixed
//! `libdmm:`, at the level of `DMM_LOG` (`error`, `warn` (default), `info`,
//! `debug`, `trace`, or env_logger's `target=level` syntax).

use std::io::Write;
use std::sync::Once;

/// Environment variable with the log filter.
const ENV: &str = "DMM_LOG";

static INIT: Once = Once::new();

/// Installs the logger once per process; a host that installed its own
/// `log` logger keeps it.
pub(super) fn init() {
    INIT.call_once(|| {
        let filter = std::env::var(ENV).unwrap_or_else(|_| "warn".to_owned());
        let _ = env_logger::Builder::new()
            .parse_filters(&filter)
            .format(|buf, record| {
                writeln!(
                    buf,
                    "libdmm: {} {}: {}",
                    record.level(),
                    record.target(),
                    record.args()
                )
            })
            .target(env_logger::Target::Stderr)
            .try_init();
    });
}
