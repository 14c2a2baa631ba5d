# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""The harness itself, on stock parts: console framing, host memfd truth, dmm.noballoon."""

import time

from dmm_test import DmmTest, MiB
from dmm_test.console import SHELL_RESTART


class HarnessTest(DmmTest):
    """One stock guest without a balloon driver."""

    def test_console_memfd_and_noballoon(self) -> None:
        g = self.boot(mode="stock", mem_mib=512, balloon=False)
        self.assertIs(g.balloon_driver, False)
        # Exit status and stderr come back; output is framed exactly.
        rc, out = g.console.run("echo one; echo two >&2; false")
        self.assertEqual((rc, out), (1, "one\ntwo\n"))
        self.assertNotIn("virtio_balloon", g.run("cat /proc/modules"))
        self.assertIn("virtio_pci", g.run("cat /proc/modules"))
        # The host sees the guest's writes in the memfd (part of the fill may
        # land on pages the guest had already touched, e.g. the unpacked initramfs).
        a0 = g.host_allocated()
        g.fill(256, seed=3)
        a1 = g.host_allocated()
        self.assertGreaterEqual(a1, 256 * MiB, f"memfd {a0 // MiB} -> {a1 // MiB} MiB")
        self.assertGreaterEqual(a1 - a0, 128 * MiB, f"memfd {a0 // MiB} -> {a1 // MiB} MiB")
        # Without a driver the balloon request changes nothing.
        g.balloon(256 * MiB)
        time.sleep(5)
        self.assertEqual(g.balloon_actual(), 512 * MiB)
        self.assertGreaterEqual(g.host_allocated(), a1 - MiB)
        self.assertIn("check ok", g.run("dmm-guest check"))
        # A syntax error kills the guest shell; a new one answers the next command.
        g.console.send("if then fi\n")
        g.console.wait_for(SHELL_RESTART, 30)
        self.assertEqual(g.console.run("echo ok", timeout=30), (0, "ok\n"))

    def test_vhost_balloon_dying_at_start_fails_the_launch(self) -> None:
        # QEMU waits for its vhost-user backend for ever (reconnect-ms); the
        # harness must not (it once waited 6 min on a bad vhost-balloon option).
        self.require_dmm()
        t0 = time.monotonic()
        # QEMUMachine wraps the harness's GuestError in its VMLaunchFailure.
        with self.assertRaises(Exception) as e:
            self.boot(mode="dmm", mem_mib=256, vhost_args=["--no-such-option"])
        self.assertIn("vhost-balloon exited with status", str(e.exception))
        self.assertLess(time.monotonic() - t0, 60.0)
