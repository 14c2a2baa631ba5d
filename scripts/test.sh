#!/usr/bin/env bash
# Runs every test DMM has, from a fresh Debian machine: installs what it needs,
# builds libdmm, vhost-balloon, the patched QEMU and the guest, then runs the
# Rust tests (cargo test) and the functional tests that boot a Linux guest
# (pytest).
#
#   scripts/test.sh            everything
#   scripts/test.sh --rust     Rust tests only (no QEMU, no guest)
#   DMM_ACCEL=tcg|kvm          force the accelerator (default: TCG unless KVM can run the guest)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

rust_only=0
case "${1:-}" in
  --rust) rust_only=1 ;;
  -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unknown option '$1' (see --help)" ;;
esac

ensure_host_deps
# What the functional tests run besides QEMU and our binaries: systemd
# (systemd-analyze, systemd-tmpfiles: test_systemd), mount (test_systemd,
# test_libvirt), libvirtd and virsh (test_libvirt; libvirt-daemon-system
# creates the libvirt-qemu user that libvirtd's QEMU driver needs even when
# qemu.conf runs QEMU as root). test_docs runs gen-man.sh, which installs
# help2man itself.
[[ $rust_only == 1 ]] || apt_install systemd mount libvirt-daemon-system libvirt-clients
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test"
cargo test --workspace --locked 2>&1 | tee build/cargo-test.log
step "loom model check of the P2M (dmm-core/tests/loom_p2m.rs)"
RUSTFLAGS="--cfg loom" cargo test --locked -p dmm-core --test loom_p2m --target-dir target/loom
[[ $rust_only == 1 ]] && exit 0

step "build vhost-balloon and dmmctl (release)"
cargo build --release --locked -p vhost-balloon -p dmm-core
step "build QEMU with DMM"
scripts/build-qemu.sh
step "build the guest"
scripts/make-guest.sh
step "functional tests (boot a Linux guest)"
DMM_REQUIRE_FUNCTIONAL=1 DMM_REQUIRE_LIBVIRT=1 "$DMM_PY" -m pytest tests/functional -v -ra
