#!/usr/bin/env bash
# The main job, from a fresh Debian machine: installs what it needs, builds
# libdmm, vhost-balloon, QEMU 10.0.2 with our patches and a test guest, then
# boots the guest with memory-backend-dmm + vhost-user-balloon-pci, shrinks
# the pool, grows it, and prints what the host got back and how fast.
#
#   scripts/demo.sh [--mem MiB] [--dirty MiB] [--pool MiB]
#   DMM_ACCEL=tcg|kvm   force the accelerator
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
case "${1:-}" in
  -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
ensure_host_deps
step "build vhost-balloon and dmmctl (release)"
cargo build --release --locked -p vhost-balloon -p dmm-core
step "build QEMU with DMM"
scripts/build-qemu.sh
step "build the guest"
scripts/make-guest.sh
step "demo"
exec "$DMM_PY" scripts/demo.py "$@"
