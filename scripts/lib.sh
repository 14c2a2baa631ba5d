# Shared helpers for scripts/*.sh (sourced, not run).
# shellcheck shell=bash

DMM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DMM_CACHE="${DMM_CACHE:-$HOME/.cache/dmm}"
export DMM_ROOT DMM_CACHE
mkdir -p "$DMM_ROOT/build" "$DMM_CACHE"

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# apt-get install what is missing; 'apt-get update' at most once per run.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "need the Debian packages ${missing[*]} and apt-get is not here"
  local sudo=(); [[ $(id -u) -ne 0 ]] && sudo=(sudo)
  if [[ -z "${DMM_APT_UPDATED:-}" ]]; then "${sudo[@]}" apt-get update -qq; export DMM_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What every part needs on the host: a C compiler for the ABI test, Python +
# pytest for the functional tests, firmware for QEMU.
ensure_host_deps() {
  command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup, Rust >= 1.80)"
  apt_install build-essential pkg-config python3 python3-pip python3-venv qemu-system-data seabios \
    cpio xz-utils zstd
  ensure_venv
}

# A venv of our own for the Python tools (pytest, qemu.qmp), so a Debian
# python3 with PEP 668 is never touched. Sets DMM_PY.
ensure_venv() {
  DMM_VENV="$DMM_CACHE/venv"
  if [[ ! -x "$DMM_VENV/bin/python" ]]; then
    python3 -m venv "$DMM_VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
  fi
  DMM_PY="$DMM_VENV/bin/python"
  "$DMM_PY" -c 'import pytest, qemu.qmp' 2>/dev/null ||
    "$DMM_PY" -m pip install -q 'pytest>=7' 'qemu.qmp>=0.0.3'
  export DMM_VENV DMM_PY
}
