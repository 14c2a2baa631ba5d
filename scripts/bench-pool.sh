#!/bin/bash
# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Pool benchmark, stock QEMU balloon vs DMM (one pool, every policy), side by
# side in one run (not a test):
#
#   scripts/bench-pool.sh [--runs N] [--mem MiB] [--live MiB] [--freed MiB] [--reuse MiB]
#                         [--target MiB] [--scenarios live,freed,cycle] [--sides stock,dmm]
#
# (i) live: the 2 GiB guest holds 1.2 GiB of checksummed data, the host asks
#     for 512 MiB; (ii) freed: the guest dirties and frees 1.5 GiB, seconds
#     until the host holds <= 512 MiB; (iii) cycle: freed, then grow back and
#     re-use 1400 MiB, timed, disk written, PASS/FAIL against issue 10's bar.
#     Stock has free page reporting on (its best). See scripts/bench_pool.py.
# Micro-benchmarks of swap and zero pages: cargo bench -p dmm-core --bench swap.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$DMM_ROOT"
case "${1:-}" in
    -h|--help) sed -n '5,17p' "$0" | sed 's/^# \{0,1\}//'; exec "$DMM_HOST_PY" "$ROOT/scripts/bench_pool.py" --help ;;
esac
# python3 runs the benchmark, QEMU reads its firmware from these two.
apt_install python3 qemu-system-data seabios
if [ -z "${DMM_GUEST:-}" ] && [ ! -f "$ROOT/build/guest/initrd.img" ]; then
    "$ROOT/scripts/make-guest.sh" >&2
fi
exec "$DMM_HOST_PY" "$ROOT/scripts/bench_pool.py" "$@"
