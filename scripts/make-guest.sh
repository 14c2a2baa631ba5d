#!/bin/bash
# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Builds the test guest from Debian packages: a kernel (linux-image-amd64) and
# an initramfs with busybox-static, the virtio modules and a shell on ttyS0.
#
#   scripts/make-guest.sh [--force]
#
# Output: ${DMM_CACHE:-$HOME/.cache/dmm}/guest-<hash>/{vmlinuz,initrd.img,cmdline,guest.env}
# and build/guest -> that directory. <hash> covers this script and the exact
# package versions, so a new kernel or a changed script builds a new guest.
# The guest's packages are not installed on the host: they are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x`. What this script runs
# on the host comes from kmod (depmod), cpio, xz-utils, zstd and Essential
# packages; it installs them (apt-get) when they are missing.
#
# Guest contract (used by tests/functional and scripts/bench-balloon.sh):
#   - prints "DMM-GUEST-READY balloon=<yes|no>" on ttyS0 once modules are loaded;
#   - then reads commands from ttyS0 with a non-interactive shell (no prompt,
#     no echo), so the host sees only command output, with \r\n line ends;
#   - kernel cmdline `dmm.noballoon=1` skips loading virtio_balloon,
#     `dmm.noreport=1` turns the guest's free page reporting off;
#   - /bin/dmm-guest: fill MiB [SEED] | dirty MiB [SEED] | check | free | meminfo | help;
#   - /bin/dmm-memtest (scripts/guest/dmm-memtest.c, static): fill FILE MIB SEED |
#     gpa FILE INDEX... | check FILE SEED (memory errors caught, counted).

set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$DMM_ROOT"
CACHE="$DMM_CACHE"
FORCE=0
MEMTEST_SRC="$ROOT/scripts/guest/dmm-memtest.c"

die() { echo "make-guest: $*" >&2; exit 1; }

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '5,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (expected --force or --help)" ;;
    esac
done

command -v apt-get >/dev/null || die "apt-get not found (Debian host expected)"
# depmod (kmod); the guest test program is built here, statically (libc.a
# is in libc6-dev).
apt_install kmod cpio xz-utils zstd gcc libc6-dev

# Modules the guest loads, in order; dependencies from modules.dep come first.
BASE_MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk)
BALLOON_MODULES=(virtio_balloon)

# The real kernel package behind the linux-image-amd64 metapackage (with no
# package lists yet, as on a new machine, after an apt-get update).
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
kpkg="$(kernel_package)"
[ -n "$kpkg" ] || { apt_update; kpkg="$(kernel_package)"; }
[ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 (apt-get update found no such package)"
kver_pkg="$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')"
bb_ver="$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')"
if [ -z "$kver_pkg" ] || [ "$kver_pkg" = "(none)" ]; then die "no candidate for $kpkg"; fi
if [ -z "$bb_ver" ] || [ "$bb_ver" = "(none)" ]; then die "no candidate for busybox-static"; fi

hash="$( { cat "$0" "$MEMTEST_SRC"; echo "$kpkg=$kver_pkg busybox-static=$bb_ver"; } |
         sha256sum | cut -c1-16)"
out="$CACHE/guest-$hash"

link_guest() {
    mkdir -p "$ROOT/build"
    ln -sfn "$out" "$ROOT/build/guest"
    echo "guest: $ROOT/build/guest -> $out"
}

if [ "$FORCE" = 0 ] && [ -f "$out/initrd.img" ] && [ -f "$out/vmlinuz" ]; then
    link_guest
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/dmm-guest.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- fetch and unpack the packages ------------------------------------------
dl="$CACHE/downloads"
mkdir -p "$dl"
fetch_deb() { # name version -> path of the .deb in $dl
    local name="$1" ver="$2" f
    # apt names the file name_version_arch.deb with the epoch colon as %3a.
    f="$dl/${name}_${ver//:/%3a}_$(dpkg --print-architecture).deb"
    if [ ! -f "$f" ]; then
        mkdir -p "$work/dl"
        # apt-get download writes to the cwd (_apt cannot write to root's dirs: harmless warning).
        (cd "$work/dl" && apt-get download -q "$name=$ver" >&2) || die "apt-get download $name=$ver failed"
        mv "$work/dl/${name}_"*.deb "$f"
    fi
    echo "$f"
}
kdeb="$(fetch_deb "$kpkg" "$kver_pkg")"
bbdeb="$(fetch_deb busybox-static "$bb_ver")"
echo "make-guest: kernel $kpkg $kver_pkg, busybox-static $bb_ver" >&2

dpkg-deb -x "$kdeb" "$work/kernel"
dpkg-deb -x "$bbdeb" "$work/busybox"

kdir="$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)/"
kver="$(basename "$kdir")"
vmlinuz="$work/kernel/boot/vmlinuz-$kver"
[ -f "$vmlinuz" ] || die "no vmlinuz-$kver in $kdeb"
bb="$work/busybox/bin/busybox"
[ -x "$bb" ] || die "no bin/busybox in $bbdeb"

# The .deb ships no modules.dep (postinst runs depmod): generate it.
depmod -b "$work/kernel" "$kver"
moddep="$kdir/modules.dep"
[ -s "$moddep" ] || die "depmod produced no $moddep"

# Resolves one module name to its path and its dependencies' paths (deps first).
declare -A seen=()
ordered=()
resolve() {
    local name="$1" line path dep
    line="$(grep -E "(^|/)${name}\.ko(\.[a-z]+)?:" "$moddep" | head -n1 || true)"
    if [ -z "$line" ]; then
        grep -qE "(^|/)${name}\.ko" "$kdir/modules.builtin" 2>/dev/null && return 0
        die "module '$name' is neither in modules.dep nor built in ($kver)"
    fi
    path="${line%%:*}"
    [ -n "${seen[$path]:-}" ] && return 0
    # modules.dep lists direct and indirect deps, nearest first: load them last-first.
    local deps i
    read -r -a deps <<< "${line#*:}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
        dep="${deps[$i]}"
        resolve "$(basename "${dep%%.ko*}")"
    done
    seen[$path]=1
    ordered+=("$path")
}

# --- initramfs tree ---------------------------------------------------------
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,sbin,etc/dmm,proc,sys,dev,tmp,root,lib/modules}
cp "$bb" "$rootfs/bin/busybox"
mknod -m 600 "$rootfs/dev/console" c 5 1
for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done

install_modules() { # list-file module...
    local list="$1" p dst
    shift
    ordered=()
    for m in "$@"; do resolve "$m"; done
    : > "$list"
    for p in "${ordered[@]}"; do
        dst="$rootfs/lib/modules/$(basename "${p%%.ko*}").ko"
        case "$p" in
            *.ko) cp "$kdir/$p" "$dst" ;;
            *.ko.xz) xz -dc "$kdir/$p" > "$dst" ;;
            *.ko.zst) zstd -qdc "$kdir/$p" > "$dst" ;;
            *.ko.gz) gzip -dc "$kdir/$p" > "$dst" ;;
            *) die "unknown module format: $p" ;;
        esac
        basename "$dst" >> "$list"
    done
}
install_modules "$rootfs/etc/dmm/modules-base" "${BASE_MODULES[@]}"
install_modules "$rootfs/etc/dmm/modules-balloon" "${BALLOON_MODULES[@]}"

cat > "$rootfs/init" <<'EOF'
#!/bin/sh
# DMM test guest init (generated by scripts/make-guest.sh).
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs -o size=95%,mode=1777 tmp /tmp
load() {
    for m in $(cat "$1"); do
        insmod "/lib/modules/$m" || echo "DMM-GUEST-ERROR insmod $m"
    done
}
load /etc/dmm/modules-base
balloon=yes
if grep -qw 'dmm.noballoon=1' /proc/cmdline; then
    balloon=no
else
    load /etc/dmm/modules-balloon
fi
# dmm.noreport=1: no free page reporting (reports only blocks of order >= 11,
# above the largest buddy order), so freed memory stays with the host until
# something else (the balloon) takes it.
if grep -qw 'dmm.noreport=1' /proc/cmdline; then
    echo 11 > /sys/module/page_reporting/parameters/page_reporting_order ||
        echo "DMM-GUEST-ERROR cannot turn free page reporting off"
fi
# Keep kernel messages off the console the host parses (dmesg keeps them).
dmesg -n 1
stty -echo
echo "DMM-GUEST-READY balloon=$balloon"
# The shell reads the console as a script file: non-interactive, so no prompt
# and no line editing; with -echo the host sees only command output. If it
# exits (syntax error, `exit`), start another one.
while :; do
    setsid cttyhack sh -c 'stty -echo; exec sh "$(tty)"'
    echo "DMM-GUEST-SHELL-RESTART"
done
EOF
chmod 755 "$rootfs/init"

cat > "$rootfs/bin/dmm-guest" <<'EOF'
#!/bin/sh
# Guest-side helper for the DMM functional tests (busybox only).
#   fill MiB [SEED]  write MiB MiB of pseudo-random data to tmpfs; prints "fill MiB md5"
#   dirty MiB [SEED] the same without the checksum (faster); prints "dirty MiB"
#   check            recompute the checksum; prints "check ok md5" or "check FAILED ..."
#   free             delete the data and drop caches; prints "free ok"
#   meminfo          MemTotal/MemFree/MemAvailable in kB, one "key value" per line
DIR=/tmp/dmm-fill
usage() { sed -n '3,7p' "$0" | sed 's/^# *//'; }
case "${1:-}" in
fill|dirty)
    cmd="$1"; mib="${2:-}"; seed="${3:-1}"
    case "$mib" in ''|*[!0-9]*) echo "$cmd: bad MiB '$mib'"; exit 2 ;; esac
    case "$seed" in ''|*[!0-9]*) echo "$cmd: bad SEED '$seed'"; exit 2 ;; esac
    rm -rf "$DIR"; mkdir -p "$DIR" || exit 1
    # 64 KiB pattern from SEED, then 1 MiB = 16 stamped copies, then MiB copies.
    awk -v s="$seed" 'BEGIN { srand(s); for (i = 0; i < 4096; i++) {
        l = ""; for (j = 0; j < 15; j++) l = l sprintf("%c", 33 + int(rand() * 94));
        print l } }' > "$DIR/pattern" || exit 1
    i=0
    while [ $i -lt 16 ]; do printf '%08d' $i; cat "$DIR/pattern"; i=$((i + 1)); done |
        head -c 1048576 > "$DIR/block"
    i=0
    while [ $i -lt "$mib" ]; do cat "$DIR/block"; i=$((i + 1)); done > "$DIR/data" || {
        echo "$cmd: write failed after $i MiB"; exit 1; }
    [ "$cmd" = dirty ] && { rm -f "$DIR/sum"; echo "dirty $mib"; exit 0; }
    sum="$(md5sum < "$DIR/data" | cut -d' ' -f1)"
    echo "$sum" > "$DIR/sum"
    echo "fill $mib $sum"
    ;;
check)
    [ -f "$DIR/sum" ] || { echo "check FAILED no data"; exit 1; }
    want="$(cat "$DIR/sum")"
    got="$(md5sum < "$DIR/data" | cut -d' ' -f1)"
    if [ "$got" = "$want" ]; then echo "check ok $got"; else echo "check FAILED $got != $want"; exit 1; fi
    ;;
free)
    rm -rf "$DIR"; sync; echo 3 > /proc/sys/vm/drop_caches
    echo "free ok"
    ;;
meminfo)
    grep -E '^(MemTotal|MemFree|MemAvailable):' /proc/meminfo | tr -d ':' | awk '{print $1, $2}'
    ;;
*) usage; [ "${1:-}" = help ]; exit $? ;;
esac
EOF
chmod 755 "$rootfs/bin/dmm-guest"

gcc -static -O2 -Wall -Werror -o "$rootfs/bin/dmm-memtest" "$MEMTEST_SRC" ||
    die "cannot build $MEMTEST_SRC"

(cd "$rootfs" && find . -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --quiet --owner=0:0) | gzip -9n > "$work/initrd.img"

tmp_out="$out.tmp.$$"
rm -rf "$tmp_out"
mkdir -p "$tmp_out"
cp "$vmlinuz" "$tmp_out/vmlinuz"
cp "$work/initrd.img" "$tmp_out/initrd.img"
echo "console=ttyS0 quiet" > "$tmp_out/cmdline"
cat > "$tmp_out/guest.env" <<EOF
KERNEL_PACKAGE=$kpkg
KERNEL_PACKAGE_VERSION=$kver_pkg
KERNEL_RELEASE=$kver
BUSYBOX_STATIC_VERSION=$bb_ver
MODULES="$(tr '\n' ' ' < "$rootfs/etc/dmm/modules-base")$(tr '\n' ' ' < "$rootfs/etc/dmm/modules-balloon")"
EOF
rm -rf "$out"
mv "$tmp_out" "$out"
link_guest
