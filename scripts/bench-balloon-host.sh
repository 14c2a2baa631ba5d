#!/usr/bin/env bash
# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Host-side release throughput of vhost-balloon without DMM (no guest):
#
#   scripts/bench-balloon-host.sh [RUNS]     (default 5)
#
# Pages released per second from a 256 MiB memfd in inflate batches of 256
# PFNs, coalesced ranges vs one fallocate(PUNCH_HOLE) per page, for ascending
# and shuffled PFNs; medians of RUNS runs. Not a test: record the figures with
# machine and date in BENCHMARKS.md under "## vhost-balloon".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

runs="${1:-5}"
case "$runs" in
  -h|--help) sed -n '5,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  ''|*[!0-9]*|0) die "RUNS must be a positive whole number, not '$runs'" ;;
esac
printf 'machine: %s, %s CPUs, kernel %s; date: %s\n' \
  "$(uname -m)" "$(nproc)" "$(uname -r)" "$(date -u +%Y-%m-%dT%H:%MZ)"
cargo bench -p vhost-balloon --bench release -- "$runs"
