#!/bin/sh
# Regenerates include/dmm.h with the cbindgen crate pinned in Cargo.toml
# (0.29.4), through dmm-core's header test: its inputs are
# dmm-core/src/ffi/mod.rs and dmm-core/src/vm/stats.rs (the statistics),
# more than the cbindgen CLI takes, so the CLI is not used.
set -eu
cd "$(dirname "$0")/.."
DMM_UPDATE_HEADER=1 cargo test -q -p dmm-core --test ffi_header
echo "include/dmm.h regenerated"
