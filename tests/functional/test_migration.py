# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Live migration of a DMM guest is refused cleanly (docs/operations.md, "Migration").

vhost-user-balloon has no migration support yet (its vmstate is
unmigratable): QMP `migrate` must fail with QEMU's own error naming the
device, and the guest must keep running with its data.
"""

from dmm_test import DmmTest, GuestError


class MigrationTest(DmmTest):
    """memory-backend-dmm + vhost-user-balloon-pci under QMP `migrate`."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()

    def test_migrate_is_refused_and_the_guest_runs_on(self) -> None:
        g = self.boot(mode="dmm", mem_mib=256, report=False)
        keep = g.fill(32, seed=51)
        with self.assertRaises(Exception) as refused:
            g.qmp("migrate", uri="exec:cat >/dev/null")
        self.record(f"migrate refused: {refused.exception}")
        self.assertNotIsInstance(refused.exception, GuestError, "QEMU died on migrate")
        self.assertRegex(str(refused.exception), r"vhost-user-balloon")
        self.assertIn("alive", g.run("echo alive"))
        self.assertEqual(g.check(), keep)
        self.assertNotEqual(g.qmp("query-migrate").get("status"), "completed")
