// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `include/dmm.h` must be what cbindgen generates from `src/ffi` and
//! `src/vm/stats.rs` (the statistics, `dmm_stats`) now.
//! `DMM_UPDATE_HEADER=1` rewrites it instead (used by `scripts/gen-header.sh`).

use std::path::Path;

#[test]
fn header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed_path = crate_dir.join("../include/dmm.h");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .unwrap_or_else(|e| panic!("dmm-core/cbindgen.toml: {e}"));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_language(cbindgen::Language::C)
        .with_src(crate_dir.join("src/ffi/mod.rs"))
        .with_src(crate_dir.join("src/vm/stats.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen failed on src/ffi: {e}"));

    if std::env::var_os("DMM_UPDATE_HEADER").is_some() {
        bindings.write_to_file(&committed_path);
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let fresh_path = tmp.path().join("dmm.h");
    bindings.write_to_file(&fresh_path);
    let fresh = std::fs::read_to_string(&fresh_path)
        .unwrap_or_else(|e| panic!("{}: {e}", fresh_path.display()));
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if fresh != committed {
        let line = fresh
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || {
                    format!(
                        "lengths differ: {} vs {} lines",
                        fresh.lines().count(),
                        committed.lines().count()
                    )
                },
                |i| format!("first difference at line {}", i + 1),
            );
        panic!("include/dmm.h is stale: run scripts/gen-header.sh ({line})");
    }
}
