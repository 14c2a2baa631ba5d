# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Where the pieces the tests boot live, and whether they are there."""

import os
import sys
from dataclasses import dataclass
from typing import List, Optional

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BUILD = os.path.join(ROOT, "build")
LOG_ROOT = os.path.join(BUILD, "test-logs")
FIRMWARE_DIRS = ("/usr/share/qemu", "/usr/share/seabios")


class Missing(Exception):
    """A piece the tests need is absent; the message says how to get it."""


@dataclass(frozen=True)
class Paths:
    """Resolved locations of everything a test boots."""

    qemu: str
    qemu_python: str
    kernel: str
    initrd: str
    cmdline: str
    vhost_balloon: Optional[str]
    storage_daemon: Optional[str]  # qemu-storage-daemon built beside QEMU


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value else default


def _vhost_balloon() -> Optional[str]:
    override = os.environ.get("DMM_VHOST_BALLOON", "")
    if override:
        return override
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "vhost-balloon")
        if os.access(path, os.X_OK):
            return path
    return None


def _storage_daemon(qemu: str) -> Optional[str]:
    path = _env("DMM_QSD_BIN", os.path.join(os.path.dirname(qemu), "qemu-storage-daemon"))
    return path if os.access(path, os.X_OK) else None


def find() -> Paths:
    """Returns the paths, or raises Missing naming what is absent and how to build it.

    Overrides (for development against another QEMU): DMM_QEMU_BIN,
    DMM_QEMU_PYTHON (a directory holding the `qemu` Python package),
    DMM_GUEST (a directory with vmlinuz, initrd.img, cmdline),
    DMM_VHOST_BALLOON, DMM_QSD_BIN (qemu-storage-daemon).
    """
    qemu = _env("DMM_QEMU_BIN", os.path.join(BUILD, "qemu", "bin", "qemu-system-x86_64"))
    qemu_python = _env("DMM_QEMU_PYTHON", os.path.join(BUILD, "qemu", "src", "python"))
    guest = _env("DMM_GUEST", os.path.join(BUILD, "guest"))
    problems: List[str] = []
    if not os.access(qemu, os.X_OK):
        problems.append(f"no QEMU binary at {qemu} (run scripts/build-qemu.sh)")
    if not os.path.isdir(os.path.join(qemu_python, "qemu", "machine")):
        problems.append(f"no qemu.machine package under {qemu_python} (run scripts/build-qemu.sh)")
    for name in ("vmlinuz", "initrd.img", "cmdline"):
        if not os.path.isfile(os.path.join(guest, name)):
            problems.append(f"no guest {name} in {guest} (run scripts/make-guest.sh)")
    for d in FIRMWARE_DIRS:
        if not os.path.isdir(d):
            problems.append(f"no firmware directory {d} (apt-get install qemu-system-data seabios)")
    if problems:
        raise Missing("; ".join(problems))
    with open(os.path.join(guest, "cmdline"), encoding="utf-8") as f:
        cmdline = f.read().strip()
    return Paths(
        qemu=qemu,
        qemu_python=qemu_python,
        kernel=os.path.join(guest, "vmlinuz"),
        initrd=os.path.join(guest, "initrd.img"),
        cmdline=cmdline,
        vhost_balloon=_vhost_balloon(),
        storage_daemon=_storage_daemon(qemu),
    )


def import_qemu_python(paths: Paths) -> None:
    """Puts the QEMU tree's python/ first on sys.path (qemu.machine, qemu.qmp)."""
    if paths.qemu_python not in sys.path:
        sys.path.insert(0, paths.qemu_python)


def required() -> bool:
    """True when a missing piece must fail the tests instead of skipping them (CI)."""
    return os.environ.get("DMM_REQUIRE_FUNCTIONAL", "") not in ("", "0")
