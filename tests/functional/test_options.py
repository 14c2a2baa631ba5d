# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Bad memory-backend-dmm options stop QEMU before the guest starts, naming the value.

QEMU runs with -S: had it accepted the options it would sit paused until the
timeout, which fails the test; it must instead exit non-zero by itself.
"""

import os
import re
import shutil
import subprocess
import tempfile
from typing import List

from dmm_test import DmmTest
from dmm_test.paths import FIRMWARE_DIRS

TIMEOUT = 30.0


class BadOptionsTest(DmmTest):
    """Each case: one wrong value, QEMU's exit status and stderr."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()
        self.tmp = tempfile.mkdtemp(prefix="dmm-opt-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def qemu_args(self, backend: str) -> List[str]:
        """A paused (-S) 256 MiB machine whose RAM is `backend`."""
        args = [self.paths.qemu, "-nodefaults", "-no-user-config", "-display", "none",
                "-accel", "tcg", "-S", "-m", "256M",
                "-machine", "pc,memory-backend=mem0", "-object", backend]
        for d in FIRMWARE_DIRS:
            args += ["-L", d]
        return args

    def start_qemu(self, backend: str) -> subprocess.CompletedProcess:
        args = self.qemu_args(backend)
        try:
            proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            self.fail(f"QEMU accepted {backend!r}: still running after {TIMEOUT:.0f} s")
        with open(os.path.join(self.log_dir, "qemu-stderr.log"), "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(args)}\n{proc.stderr}\n")
        return proc

    def assert_rejected(self, backend: str, *patterns: str) -> None:
        proc = self.start_qemu(backend)
        self.assertNotEqual(proc.returncode, 0, f"QEMU exited 0 with {backend!r}")
        for pattern in patterns:
            self.assertRegex(proc.stderr, pattern,
                             f"stderr for {backend!r} does not name the bad value")
        self.assertNotIn("panicked", proc.stderr)

    def backend(self, **props: str) -> str:
        opts = {"id": "mem0", "size": "256M", "pool-size": "256M",
                "control-socket": os.path.join(self.tmp, "ctl"), "policies": "balloon"}
        opts.update(props)
        return "memory-backend-dmm," + ",".join(f"{k}={v}" for k, v in opts.items())

    def test_good_options_are_accepted(self) -> None:
        # The control case: the same command line with good values does not exit.
        with subprocess.Popen(self.qemu_args(self.backend()), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as proc:
            try:
                _, err = proc.communicate(timeout=5)
                self.fail(f"QEMU exited {proc.returncode} with good options: {err.strip()}")
            except subprocess.TimeoutExpired:
                self.assertTrue(os.path.exists(os.path.join(self.tmp, "ctl")),
                                "QEMU runs but created no control socket")
            finally:
                proc.kill()
                proc.communicate(timeout=10)

    def test_unknown_policy(self) -> None:
        self.assert_rejected(self.backend(policies="wibble"), r"wibble")

    def test_pool_larger_than_size(self) -> None:
        self.assert_rejected(self.backend(**{"pool-size": "512M"}),
                             r"(?i)pool", r"536870912|512 ?M")

    def test_missing_socket_directory(self) -> None:
        missing = os.path.join(self.tmp, "no-such-dir", "ctl")
        self.assert_rejected(self.backend(**{"control-socket": missing}), re.escape(
            os.path.dirname(missing)))
