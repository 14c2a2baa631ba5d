#!/usr/bin/env bash
# Generates the man pages docs/man/vhost-balloon.1 and docs/man/dmmctl.1 with
# help2man from the built binaries' --help, plus the hand-written sections in
# docs/man/<name>.h2m (FILES, EXAMPLES, SEE ALSO). Commit the result;
# tests/functional/test_docs.py fails when the pages drift from the binaries.
#
#   scripts/gen-man.sh [--check] [BIN_DIR]   BIN_DIR defaults to target/release
#   --check   write nothing; exit 1 and show a diff if a page is out of date
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

check=0
if [[ "${1:-}" == "--check" ]]; then check=1; shift; fi
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
bin_dir="${1:-target/release}"

apt_install help2man git   # git: the date of docs/man's last commit
# clap shows the value of env-backed options in --help: keep pages host-neutral.
unset DMM_SOCKET
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
[[ -n "$version" ]] || die "no workspace version in Cargo.toml"

# help2man puts the month in .TH; pin it so that regenerating is reproducible.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct -- docs/man 2>/dev/null || date +%s)}"
[[ -n "$SOURCE_DATE_EPOCH" ]] || SOURCE_DATE_EPOCH="$(date +%s)"

out_dir="docs/man"
[[ $check == 1 ]] && out_dir="$(mktemp -d)" && trap 'rm -rf "$out_dir"' EXIT

# Subcommands (clap's "Commands:" list) get one subsection each with their
# own --help, so that the page documents every argument.
commands_include() { # bin name -> path of an include file (maybe empty)
  local bin="$1" name="$2" f cmd
  f="$(mktemp)"
  local cmds
  cmds="$("$bin" --help | awk '/^Commands:/ {on=1; next} on && /^[^ ]/ {on=0} on && NF {print $1}' | grep -vx help || true)"
  if [[ -n "$cmds" ]]; then
    echo "[COMMANDS]" >"$f"
    for cmd in $cmds; do
      printf '.SS "%s %s"\n.nf\n' "$name" "$cmd" >>"$f"
      "$bin" "$cmd" --help | sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\([.']\)/\\\\\&\1/" >>"$f"
      printf '.fi\n' >>"$f"
    done
  fi
  echo "$f"
}

rc=0
for spec in "vhost-balloon:vhost-user virtio-balloon device backend for DMM virtual machines" \
            "dmmctl:control a DMM virtual machine's memory pool"; do
  name="${spec%%:*}" desc="${spec#*:}"
  bin="$bin_dir/$name"
  [[ -x "$bin" ]] || die "$bin not built (cargo build --release -p vhost-balloon -p dmm-core)"
  extra="$(commands_include "$bin" "$name")"
  extra_opt=(); [[ -s "$extra" ]] && extra_opt=(--include="$extra")
  help2man --no-info --no-discard-stderr --section=1 --source="DMM $version" \
    --manual="DMM manual" --version-string="$version" --name="$desc" \
    --include="docs/man/$name.h2m" "${extra_opt[@]}" --output="$out_dir/$name.1" "$bin"
  rm -f "$extra"
  if [[ $check == 1 ]]; then
    # .TH carries the date: compare everything else.
    if ! diff -u <(grep -v '^\.TH ' "docs/man/$name.1" 2>/dev/null) <(grep -v '^\.TH ' "$out_dir/$name.1"); then
      printf 'docs/man/%s.1 is out of date: run scripts/gen-man.sh\n' "$name" >&2
      rc=1
    fi
  fi
done
exit $rc
