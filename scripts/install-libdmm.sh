#!/usr/bin/env bash
# Builds libdmm (release) and installs it for C users such as QEMU's meson
# (`dependency('dmm')`):
#   PREFIX/lib/libdmm.a  PREFIX/include/dmm.h  PREFIX/lib/pkgconfig/dmm.pc
#   PREFIX/bin/dmmctl
#
#   scripts/install-libdmm.sh PREFIX
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

[[ $# -eq 1 && $1 != -* ]] || { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
prefix=$(mkdir -p "$1" && cd "$1" && pwd) || die "cannot create prefix '$1'"
apt_install python3

step "cargo build --release -p dmm-core"
cargo build --release -p dmm-core
# The native libraries a static libdmm needs, as rustc reports them.
native=$(cargo rustc --release -p dmm-core --lib --crate-type staticlib -- --print native-static-libs 2>&1 |
  sed -n 's/.*native-static-libs: //p' | tail -n1)
[[ -n $native ]] || die "rustc did not report native-static-libs"
target_dir=$(cargo metadata --format-version 1 --no-deps |
  "$DMM_HOST_PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
version=$(cargo pkgid -p dmm-core | sed 's/.*[#@]//')

step "install into $prefix"
install -d "$prefix/lib/pkgconfig" "$prefix/include" "$prefix/bin"
install -m 0644 "$target_dir/release/libdmm.a" "$prefix/lib/libdmm.a"
install -m 0644 include/dmm.h "$prefix/include/dmm.h"
install -m 0755 "$target_dir/release/dmmctl" "$prefix/bin/dmmctl"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" -e "s|@LIBS_PRIVATE@|$native|" \
  dmm-core/dmm.pc.in >"$prefix/lib/pkgconfig/dmm.pc"
echo "installed libdmm $version; use PKG_CONFIG_PATH=$prefix/lib/pkgconfig"
