#!/bin/bash
# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Balloon benchmark, stock QEMU vs DMM, side by side in one run (not a test):
#
#   scripts/bench-balloon.sh [--runs N] [--sides stock,dmm] [--mem MiB]
#                            [--dirty MiB] [--target MiB] [--smp N] [--dmm-trigger pool|balloon]
#
# A 2 GiB guest dirties and frees 1.5 GiB, then is shrunk to 384 MiB.
# stock: build/qemu/bin/qemu-system-x86_64 with memory-backend-memfd,share=on
#        + virtio-balloon-pci and QMP `balloon` (the patched binary is stock
#        QEMU 10.0.2 for stock devices: the patches only add new types).
# dmm:   the same binary with memory-backend-dmm + vhost-user-balloon-pci +
#        target/release/vhost-balloon --dmm, shrunk with qom-set pool-size.
# Prints per run and the medians: MiB the host got back (memfd st_blocks),
# seconds, MiB/s, and the ratio ours/stock. Builds the guest if needed.
# Environment: DMM_ACCEL=tcg|kvm, and the overrides of tests/functional
# (DMM_QEMU_BIN, DMM_QEMU_PYTHON, DMM_GUEST, DMM_VHOST_BALLOON).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$DMM_ROOT"
case "${1:-}" in
    -h|--help) sed -n '5,20p' "$0" | sed 's/^# \{0,1\}//'; exec "$DMM_HOST_PY" "$ROOT/scripts/bench_balloon.py" --help ;;
esac
# python3 runs the benchmark, QEMU reads its firmware from these two.
apt_install python3 qemu-system-data seabios
if [ -z "${DMM_GUEST:-}" ] && [ ! -f "$ROOT/build/guest/initrd.img" ]; then
    "$ROOT/scripts/make-guest.sh" >&2
fi
exec "$DMM_HOST_PY" "$ROOT/scripts/bench_balloon.py" "$@"
