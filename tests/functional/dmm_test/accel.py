# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Which accelerator the guests run under.

DMM_ACCEL=tcg or DMM_ACCEL=kvm forces one. Otherwise (unset or `auto`) KVM
is used only when /dev/kvm exists, the host KVM is not the paravirtual
kvm_pvm (it creates VMs but hangs a stock guest right after the real-mode
stub), and a short probe boot of the test guest under KVM reaches the ready
marker; else TCG.
"""

import os
import subprocess
import time
from typing import List, Optional

from .paths import FIRMWARE_DIRS, Paths

PROBE_TIMEOUT = 30.0
_chosen: Optional[str] = None


class AccelError(Exception):
    """DMM_ACCEL has a value we do not know."""


def _probe_kvm(paths: Paths) -> bool:
    """Boots the guest under KVM with a serial on stdout; True if it gets ready in time."""
    args: List[str] = [paths.qemu, "-accel", "kvm", "-nodefaults", "-no-user-config",
                       "-display", "none", "-m", "256M", "-serial", "stdio", "-no-reboot",
                       "-kernel", paths.kernel, "-initrd", paths.initrd,
                       "-append", paths.cmdline + " dmm.noballoon=1"]
    for d in FIRMWARE_DIRS:
        args += ["-L", d]
    with subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as proc:
        try:
            os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
            seen = b""
            deadline = time.monotonic() + PROBE_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                chunk = proc.stdout.read()  # type: ignore[union-attr]
                if chunk:
                    seen += chunk
                    if b"DMM-GUEST-READY" in seen:
                        return True
                time.sleep(0.2)
            return False
        finally:
            proc.kill()
            proc.wait(timeout=10)


def choose(paths: Paths) -> str:
    """Returns "tcg" or "kvm" (decided once per process)."""
    global _chosen  # pylint: disable=global-statement
    if _chosen is not None:
        return _chosen
    want = os.environ.get("DMM_ACCEL", "auto") or "auto"
    if want in ("tcg", "kvm"):
        _chosen = want
    elif want == "auto":
        usable = os.path.exists("/dev/kvm") and not os.path.exists("/sys/module/kvm_pvm")
        _chosen = "kvm" if usable and _probe_kvm(paths) else "tcg"
    else:
        raise AccelError(f"DMM_ACCEL={want!r}: expected tcg, kvm or auto")
    return _chosen
