#!/usr/bin/env bash
# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Fuzzes vhost-balloon's queue and config handling for a bounded time:
#
#   scripts/fuzz-balloon.sh [SECONDS]     (default 300)
#
# Runs the cargo-fuzz target fuzz/fuzz_targets/balloon_queues.rs (libFuzzer,
# AddressSanitizer) with the nightly toolchain; installs cargo-fuzz if it is
# missing. Corpus in fuzz/corpus, crashes in fuzz/artifacts (both gitignored),
# the libFuzzer log in build/fuzz-balloon.log. Record executions and crashes
# in FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

secs="${1:-300}"
case "$secs" in
  -h|--help) sed -n '5,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  ''|*[!0-9]*) die "SECONDS must be a whole number, not '$secs'" ;;
esac
rustup toolchain list | grep -q '^nightly' || die "no nightly toolchain (rustup toolchain install nightly)"
apt_install build-essential   # cc and c++: libfuzzer-sys builds libFuzzer
command -v cargo-fuzz >/dev/null || { step "cargo install cargo-fuzz"; cargo install cargo-fuzz --locked; }

mkdir -p fuzz/corpus/balloon_queues build
step "fuzzing balloon_queues for ${secs}s"
cargo +nightly fuzz run balloon_queues fuzz/corpus/balloon_queues -- \
  -max_total_time="$secs" -max_len=4096 -timeout=10 -print_final_stats=1 2>&1 | tee build/fuzz-balloon.log
grep -E '^stat::number_of_executed_units|^Done|SUMMARY|crash-' build/fuzz-balloon.log || true
