#!/usr/bin/env bash
# Builds QEMU 10.0.2 (Debian's +ds source) with qemu-patches/*.patch and
# libdmm linked in, caches it under $DMM_CACHE/qemu-<hash>/ and points
# build/qemu at it.
#
#   scripts/build-qemu.sh               build (or reuse the cached build)
#   scripts/build-qemu.sh --print-hash  print the cache key and exit
#   scripts/build-qemu.sh --help
#
# The key hashes the tarball checksum, qemu-patches/*, this script and
# libdmm's inputs (Cargo.lock, Cargo.toml, dmm-core/, include/dmm.h,
# scripts/install-libdmm.sh). The configured tree is kept per source key
# (all but libdmm's sources): a libdmm change only relinks. Layout:
#   bin/qemu-system-x86_64   the patched binary (libdmm linked statically)
#   bin/qemu-storage-daemon  from the same source: a vhost-user-blk backend
#                            the device-safety tests attach to a DMM guest
#   src/                     the patched source tree (python/qemu for tests)
# Environment: DMM_CACHE (default ~/.cache/dmm), DMM_QEMU_JOBS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

QEMU_VERSION=10.0.2
QEMU_TARBALL="qemu_${QEMU_VERSION}+ds.orig.tar.xz"
QEMU_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
SRC_SUITE=bookworm-backports
SRC_LIST=/etc/apt/sources.list.d/dmm-qemu-src.sources

log() { printf '[build-qemu] %s\n' "$*" >&2; }
fail() { printf '[build-qemu] error: %s\n' "$*" >&2; exit 1; }

# The inputs of the QEMU sources and their configuration, one
# "sha256  path" line each, in a stable order.
hash_tree_inputs() {
  printf 'tarball %s\n' "$QEMU_SHA256"
  {
    printf '%s\n' scripts/build-qemu.sh
    [[ -e include/dmm.h ]] && printf '%s\n' include/dmm.h
    find qemu-patches -type f
  } | LC_ALL=C sort | xargs -d '\n' sha256sum
}

# ... plus what goes into libdmm.a.
hash_inputs() {
  hash_tree_inputs
  {
    printf '%s\n' Cargo.toml Cargo.lock
    [[ -e scripts/install-libdmm.sh ]] && printf '%s\n' scripts/install-libdmm.sh
    find dmm-core -type f -not -path '*/target/*'
  } | LC_ALL=C sort | xargs -d '\n' sha256sum
}

tree_key() { hash_tree_inputs | sha256sum | cut -c1-16; }
cache_key() { hash_inputs | sha256sum | cut -c1-16; }

case "${1:-}" in
  --print-hash) cache_key; exit 0 ;;
  -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) fail "unknown option '$1' (see --help)" ;;
esac

KEY="$(cache_key)"
OUT="$DMM_CACHE/qemu-$KEY"
TREE="$DMM_CACHE/qemu-tree-$(tree_key)"
link_result() {
  ln -sfn "$OUT" "$DMM_ROOT/build/qemu"
  log "build/qemu -> $OUT"
  printf '%s\n' "$OUT/bin/qemu-system-x86_64"
}

cache_hit() { [[ -x "$OUT/bin/qemu-system-x86_64" && -e "$OUT/.complete" ]]; }
if cache_hit; then
  log "cache hit: $OUT"
  link_result
  exit 0
fi

# One build per source tree at a time; a second run waits, then takes the
# cache hit or relinks.
exec 9>"$TREE.lock"
if ! flock -n 9; then
  log "another build in $TREE is running; waiting for it"
  flock 9
fi
if cache_hit; then
  log "cache hit: $OUT"
  link_result
  exit 0
fi

start=$(date +%s)
log "cache miss: building QEMU $QEMU_VERSION into $OUT"

# --- host dependencies ------------------------------------------------------
command -v cargo >/dev/null || fail "cargo not found: install a Rust toolchain (Rust >= 1.80)"
log "checking build dependencies (apt)"
apt_install build-essential ninja-build pkg-config libglib2.0-dev libpixman-1-dev zlib1g-dev \
  libfdt-dev python3 python3-venv flex bison bzip2 patch dpkg-dev xz-utils

VENV="$DMM_CACHE/venv-qemu-build"
host_venv "$VENV"
if ! "$VENV/bin/python3" -c 'import mesonbuild, pycotap' 2>/dev/null; then
  log "installing meson into $VENV"
  "$VENV/bin/pip" install -q 'meson>=1.5' 'pycotap==1.3.1'
fi

# --- source tarball -----------------------------------------------------------
DL="$DMM_CACHE/downloads"
mkdir -p "$DL"
tarball_ok() { [[ -f "$DL/$QEMU_TARBALL" ]] && echo "$QEMU_SHA256  $DL/$QEMU_TARBALL" | sha256sum -c --status; }

fetch_tarball() {
  local sources=/etc/apt/sources.list.d/debian.sources uri
  [[ -r $sources ]] || fail "$sources not found: cannot derive a deb-src entry"
  uri="$(awk '/^URIs:/ { print $2; exit }' "$sources")"
  [[ -n $uri ]] || fail "no 'URIs:' line in $sources"
  if [[ ! -e $SRC_LIST ]]; then
    log "adding deb-src entry for $SRC_SUITE from $uri ($SRC_LIST)"
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
      "$uri" "$SRC_SUITE" /usr/share/keyrings/debian-archive-keyring.gpg >"$SRC_LIST"
  fi
  log "apt-get update (for the deb-src entry)"
  apt-get update -qq
  local ver
  ver="$(apt-cache showsrc qemu | awk -v v="$QEMU_VERSION+ds-" '
    /^Version:/ && index($2, v) && $2 ~ /bpo12/ { print $2; exit }')"
  [[ -n $ver ]] || fail "no qemu $QEMU_VERSION+ds source in $SRC_SUITE (apt-cache showsrc qemu)"
  log "downloading the orig tarball of qemu=$ver"
  local tmp
  tmp="$(mktemp -d "$DL/apt-source.XXXXXX")"
  # Only the orig tarball is needed; a missing .dsc/.debian.tar is tolerated.
  (cd "$tmp" && apt-get source --download-only "qemu=$ver" >apt-source.log 2>&1) || true
  [[ -f "$tmp/$QEMU_TARBALL" ]] || fail "apt-get source did not fetch $QEMU_TARBALL (see $tmp/apt-source.log)"
  mv "$tmp/$QEMU_TARBALL" "$DL/$QEMU_TARBALL"
  rm -rf "$tmp"
}

if ! tarball_ok; then
  rm -f "$DL/$QEMU_TARBALL"
  fetch_tarball
  if ! tarball_ok; then
    got="$(sha256sum "$DL/$QEMU_TARBALL" | cut -d' ' -f1)"
    rm -f "$DL/$QEMU_TARBALL"
    fail "checksum mismatch for $QEMU_TARBALL: expected $QEMU_SHA256, got $got"
  fi
fi
log "tarball ok: $DL/$QEMU_TARBALL"

# --- unpack and patch ---------------------------------------------------------
unpack_and_patch() {
  log "unpacking into $SRC"
  rm -rf "$TREE"
  mkdir -p "$TREE"
  tar -xf "$DL/$QEMU_TARBALL" -C "$TREE" --no-same-owner
  mv "$TREE/qemu-$QEMU_VERSION" "$SRC"

  # The +ds tarball drops the edk2 firmware: empty stand-ins satisfy meson.
  edk2="$(sed -n "s/^ *'\(edk2-[a-z0-9_-]*\.fd\)',$/\1/p" "$SRC/pc-bios/meson.build")"
  [[ -n $edk2 ]] || fail "could not find the edk2 blob list in pc-bios/meson.build"
  for f in $edk2; do
    [[ -e "$SRC/pc-bios/$f.bz2" ]] || bzip2 -c </dev/null >"$SRC/pc-bios/$f.bz2"
  done

  shopt -s nullglob
  patches=(qemu-patches/*.patch)
  shopt -u nullglob
  for p in "${patches[@]}"; do
    log "applying $p"
    patch -d "$SRC" -p1 --quiet --forward <"$p" || fail "patch $p does not apply"
  done
}

# --- libdmm -------------------------------------------------------------------
install_libdmm() {
  [[ -x scripts/install-libdmm.sh ]] || fail "scripts/install-libdmm.sh not found"
  log "installing libdmm into $LIBDMM (scripts/install-libdmm.sh)"
  scripts/install-libdmm.sh "$LIBDMM" >&2
  pcdir="$(dirname "$(find "$LIBDMM" -name dmm.pc -print -quit)")"
  [[ -f "$pcdir/dmm.pc" ]] || fail "libdmm install did not produce dmm.pc under $LIBDMM"
  # Link the static archive so the cached binary does not depend on $LIBDMM.
  find "$LIBDMM" -name 'libdmm.so*' -delete
}

# --- configure and build --------------------------------------------------------
configure_tree() {
  mkdir -p "$BUILD"
  log "configuring (log: $BUILD/configure.log)"
  (
    cd "$BUILD"
    PKG_CONFIG_PATH="$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" "$SRC/configure" \
      --python="$VENV/bin/python3" \
      --target-list=x86_64-softmmu --without-default-features \
      --enable-kvm --enable-tcg --enable-vhost-user --enable-pixman --enable-fdt=system --enable-dmm \
      --enable-tools --enable-vhost-user-blk-server \
      --disable-docs --disable-install-blobs --disable-werror >configure.log 2>&1
  ) || { tail -30 "$BUILD/configure.log" >&2; fail "configure failed (see $BUILD/configure.log)"; }
}

# Keeps the cache bounded: the two newest configured trees (about 400 MB
# each) and the three newest results (about 80 MB each) besides this one.
prune_cache() {
  local d
  # shellcheck disable=SC2012 # the names are ours: qemu-<hex>, qemu-tree-<hex>
  for d in $(ls -1dt "$DMM_CACHE"/qemu-tree-*/ 2>/dev/null | tail -n +3) \
           $(ls -1dt "$DMM_CACHE"/qemu-[0-9a-f]*/ 2>/dev/null | tail -n +4); do
    d=${d%/}
    [[ $d == "$TREE" || $d == "$OUT" || $d == *.partial ]] && continue
    if [[ $d == */qemu-tree-* ]]; then
      # A tree another build (another checkout) is using stays.
      exec 8>"$d.lock"
      flock -n 8 || { exec 8>&-; continue; }
      log "pruning $d"
      rm -rf "$d" "$d.lock"
      exec 8>&-
      continue
    fi
    log "pruning $d"
    rm -rf "$d"
  done
}

SRC="$TREE/src"
BUILD="$TREE/build"
LIBDMM="$TREE/libdmm"
if [[ -e "$TREE/.configured" ]]; then
  log "reusing the configured tree $TREE (relinking with the new libdmm)"
  install_libdmm
else
  unpack_and_patch
  install_libdmm
  configure_tree
  touch "$TREE/.configured"
fi
# libdmm.a is not a file ninja tracks: remove the binary so it relinks.
rm -f "$BUILD/qemu-system-x86_64"

jobs="${DMM_QEMU_JOBS:-$(nproc)}"
log "building qemu-system-x86_64 and qemu-storage-daemon with ninja -j$jobs (log: $BUILD/ninja.log)"
ninja -C "$BUILD" -j"$jobs" qemu-system-x86_64 storage-daemon/qemu-storage-daemon \
  >"$BUILD/ninja.log" 2>&1 ||
  { tail -40 "$BUILD/ninja.log" >&2; fail "build failed (see $BUILD/ninja.log)"; }

WORK="$OUT.partial"
rm -rf "$WORK"
mkdir -p "$WORK/bin"
cp "$BUILD/qemu-system-x86_64" "$BUILD/storage-daemon/qemu-storage-daemon" "$WORK/bin/"
ln -s "$SRC" "$WORK/src"
"$WORK/bin/qemu-system-x86_64" -object help | grep -q memory-backend-dmm ||
  fail "the built binary has no memory-backend-dmm"
touch "$WORK/.complete"
rm -rf "$OUT"
mv "$WORK" "$OUT"
log "built in $(($(date +%s) - start)) s"
prune_cache
link_result
