# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""DMM functional tests: boot the test guest under QEMU and check real behaviour.

Modelled on QEMU's tests/functional (QemuSystemTest, wait_for_console_pattern,
exec_command_and_wait_for_pattern), as a small base of our own on top of
`qemu.machine.QEMUMachine` and `qemu.qmp` from the patched tree's python/.

Pieces missing (build/qemu, build/guest, vhost-balloon) skip the tests with
the reason, unless DMM_REQUIRE_FUNCTIONAL is set (CI): then they fail.
Logs (console, QEMU, vhost-balloon) go to build/test-logs/<test>/.
"""

import os
import re
import shutil
import subprocess
import unittest
from typing import Any, Callable, Optional, TypeVar

from . import paths as _paths
from .console import Console, ConsoleError
from .host import MiB, wait_until
from .vm import PAGE, Guest, GuestError

__all__ = ["DmmTest", "Guest", "Console", "ConsoleError", "GuestError", "MiB", "PAGE",
           "wait_until"]

T = TypeVar("T")
_backends_cache: dict = {}


def qemu_has(qemu: str, kind: str, name: str) -> bool:
    """True if `qemu -<kind> help` lists `name` (kind: object or device)."""
    key = (qemu, kind)
    if key not in _backends_cache:
        try:
            out = subprocess.run([qemu, f"-{kind}", "help"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        _backends_cache[key] = out
    return re.search(rf"\b{re.escape(name)}\b", _backends_cache[key]) is not None


class DmmTest(unittest.TestCase):
    """Base class: finds the pieces, gives each test a log dir, cleans up guests."""

    paths: _paths.Paths

    def unavailable(self, reason: str) -> None:
        """Skips the test, or fails it when DMM_REQUIRE_FUNCTIONAL is set."""
        if _paths.required():
            self.fail(f"DMM_REQUIRE_FUNCTIONAL is set but {reason}")
        self.skipTest(reason)

    def setUp(self) -> None:
        try:
            self.paths = _paths.find()
        except _paths.Missing as e:
            self.unavailable(str(e))
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.id().split(".", 1)[-1])
        self.log_dir = os.path.join(_paths.LOG_ROOT, safe)
        shutil.rmtree(self.log_dir, ignore_errors=True)
        os.makedirs(self.log_dir)

    def require_dmm(self) -> None:
        """The DMM parts must be there: memory-backend-dmm, vhost-user-balloon-pci, vhost-balloon."""
        qemu = self.paths.qemu
        if not qemu_has(qemu, "object", "memory-backend-dmm"):
            self.unavailable(f"{qemu} has no memory-backend-dmm")
        if not qemu_has(qemu, "device", "vhost-user-balloon-pci"):
            self.unavailable(f"{qemu} has no vhost-user-balloon-pci")
        if self.paths.vhost_balloon is None:
            self.unavailable("no target/{release,debug}/vhost-balloon "
                             "(cargo build --release -p vhost-balloon)")

    def boot(self, **kwargs: Any) -> Guest:
        """Boots a guest (see Guest for the options); it is shut down after the test."""
        kwargs.setdefault("name", "guest")
        guest = Guest(self.paths, self.log_dir, **kwargs)
        self.addCleanup(guest.shutdown)
        guest.launch()
        return guest

    def record(self, text: str) -> None:
        """Notes a figure in build/test-logs/<test>/results.txt (and on stdout: pytest -rP)."""
        print(text)
        with open(os.path.join(self.log_dir, "results.txt"), "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def wait_for(self, what: str, probe: Callable[[], Optional[T]], timeout: float,
                 interval: float = 0.5) -> T:
        """Polls `probe` until it returns non-None; fails the test after `timeout` s."""
        try:
            return wait_until(what, probe, timeout, interval)
        except TimeoutError as e:
            self.fail(str(e))
