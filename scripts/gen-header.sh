#!/bin/sh
# Regenerates include/dmm.h from dmm-core/src/ffi with cbindgen 0.29.4 (the
# version pinned in Cargo.toml). Uses the cbindgen CLI if that version is
# installed, else the cbindgen crate through dmm-core's header test.
set -eu
cd "$(dirname "$0")/.."
want=0.29.4
if command -v cbindgen >/dev/null 2>&1 && [ "$(cbindgen --version)" = "cbindgen $want" ]; then
    cbindgen --quiet --config dmm-core/cbindgen.toml --lang c -o include/dmm.h dmm-core/src/ffi/mod.rs
else
    DMM_UPDATE_HEADER=1 cargo test -q -p dmm-core --test ffi_header
fi
echo "include/dmm.h regenerated"
