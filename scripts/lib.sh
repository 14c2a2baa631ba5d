# Shared helpers for scripts/*.sh (sourced, not run).
# shellcheck shell=bash

DMM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DMM_CACHE="${DMM_CACHE:-$HOME/.cache/dmm}"
export DMM_ROOT DMM_CACHE
mkdir -p "$DMM_ROOT/build" "$DMM_CACHE"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian's python3 (apt_install python3), not whatever python3 is first in
# PATH (pyenv's shims on some machines).
DMM_HOST_PY=/usr/bin/python3

# Every command a script runs comes from a Debian package that script installs
# with apt_install, named by package (docs/testing.md, "What the scripts
# install"); only Essential packages (coreutils, dpkg, grep, sed, tar, gzip,
# findutils, util-linux, bash, ...) and apt itself are taken as given.

# 'apt-get update' at most once per run (scripts called by scripts included).
apt_update() {
  [[ -n "${DMM_APT_UPDATED:-}" ]] && return 0
  as_root apt-get update -qq
  export DMM_APT_UPDATED=1
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; return; fi
  command -v sudo >/dev/null || die "not root and no sudo: cannot run $*"
  sudo "$@"
}

# apt-get install the packages that are not installed (checked by package).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "need the Debian packages ${missing[*]} and apt-get is not here"
  apt_update
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What demo.sh and test.sh need besides what build-qemu.sh and make-guest.sh
# install for themselves: a C compiler for the C ABI test (cargo test),
# python3 and its venv module for the venv below, QEMU's firmware (-L).
ensure_host_deps() {
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup, Rust >= 1.80)"
  apt_install build-essential pkg-config python3 python3-venv qemu-system-data seabios
  ensure_venv
}

# A venv at DIR on Debian's python3, made (again, if another python3 made
# it: older versions of these scripts used the first one in PATH) unless there.
host_venv() {
  local dir="$1"
  [[ -x "$dir/bin/python" ]] && grep -qx "home = ${DMM_HOST_PY%/*}" "$dir/pyvenv.cfg" 2>/dev/null && return 0
  rm -rf "$dir"
  "$DMM_HOST_PY" -m venv "$dir" || die "$DMM_HOST_PY -m venv $dir failed (apt-get install python3-venv)"
}

# A venv of our own for the Python tools (pytest, qemu.qmp), so a Debian
# python3 with PEP 668 is never touched. Sets DMM_PY.
ensure_venv() {
  DMM_VENV="$DMM_CACHE/venv"
  host_venv "$DMM_VENV"
  DMM_PY="$DMM_VENV/bin/python"
  "$DMM_PY" -c 'import pytest, qemu.qmp' 2>/dev/null ||
    "$DMM_PY" -m pip install -q 'pytest>=7' 'qemu.qmp>=0.0.3'
  export DMM_VENV DMM_PY
}
