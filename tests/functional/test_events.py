# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""QMP events of memory-backend-dmm (docs/qemu.md, "Events"), and its swap-compress.

DMM_POOL_SIZE_CHANGE when the pool changes, through qom-set or through the
DMM control socket (which QEMU learns of only by the event);
DMM_POOL_REACHED once the host holds no more than the shrunk pool (checked
against the memfd's real allocation); DMM_RECLAIM_BEHIND when nothing can
reach the pool in time (no balloon driver in the guest, no swap policy).
"""

from dmm_test import DmmTest, Guest, MiB

SIZE_MIB = 512
DATA_MIB = 320
POOL_MIB = 256
SLACK_MIB = 16


class QmpEventTest(DmmTest):
    """memory-backend-dmm's QMP events, seen by a QMP client of QEMU."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()

    def assert_is_mem0(self, ev: dict) -> dict:
        data = ev["data"]
        self.assertEqual(data["id"], "mem0", ev)
        self.assertEqual(data["qom-path"], "/objects/mem0", ev)
        return data

    def test_pool_change_and_reached(self) -> None:
        # The swap store compresses here (swap-compress=on): the test also
        # checks that the option reaches libdmm and loses nothing.
        g: Guest = self.boot(mode="dmm", mem_mib=SIZE_MIB, policies="balloon,swap,zero",
                             swap=True, swap_compress=True, balloon=False, report=False)
        self.assertIs(g.qmp("qom-get", path="/objects/mem0", property="swap-compress"), True)
        keep = g.fill(DATA_MIB, seed=41)
        g.control("set-balloon-deadline", ms=0)  # no balloon driver: swap at once

        g.set_pool(POOL_MIB * MiB)
        data = self.assert_is_mem0(g.event_wait("DMM_POOL_SIZE_CHANGE"))
        self.assertEqual(data["pool-size"], POOL_MIB * MiB, data)
        self.assertEqual(data["previous-pool-size"], SIZE_MIB * MiB, data)
        self.assertGreaterEqual(data["resident"], DATA_MIB * MiB, data)

        data = self.assert_is_mem0(g.event_wait("DMM_POOL_REACHED", timeout=120))
        self.assertEqual(data["pool-size"], POOL_MIB * MiB, data)
        self.assertLessEqual(data["resident"], POOL_MIB * MiB, data)
        held = g.host_allocated()
        self.record(f"DMM_POOL_REACHED after {data['elapsed-ms']} ms; memfd holds {held // MiB} MiB")
        self.assertLessEqual(held, (POOL_MIB + SLACK_MIB) * MiB,
                             f"DMM_POOL_REACHED but the memfd holds {held // MiB} MiB")

        stats = g.dmm_stats()
        self.record(f"swap: {stats['swap_slots_used']} slots, {stats['swap_compressed_slots']} "
                    f"compressed, {stats['swap_stored_bytes'] // MiB} MiB in slots, swap file "
                    f"{stats['swap_file_bytes'] // MiB} MiB")
        self.assertGreater(stats["swap_compressed_slots"], 0, stats)
        self.assertLess(stats["swap_stored_bytes"], stats["swap_slots_used"] * 4096, stats)

        # A change through the control socket reaches QMP too.
        g.control("set-pool", bytes=SIZE_MIB * MiB)
        data = self.assert_is_mem0(g.event_wait("DMM_POOL_SIZE_CHANGE"))
        self.assertEqual(data["pool-size"], SIZE_MIB * MiB, data)
        self.assertEqual(data["previous-pool-size"], POOL_MIB * MiB, data)
        self.assertEqual(g.qmp("qom-get", path="/objects/mem0", property="pool-size"),
                         SIZE_MIB * MiB)
        self.assertEqual(g.check(), keep)

    def test_reclaim_behind(self) -> None:
        g = self.boot(mode="dmm", mem_mib=SIZE_MIB, policies="balloon", balloon=False,
                      report=False)
        keep = g.fill(DATA_MIB, seed=42)
        g.control("set-balloon-deadline", ms=500)
        g.set_pool(POOL_MIB * MiB)
        data = self.assert_is_mem0(g.event_wait("DMM_RECLAIM_BEHIND", timeout=60))
        self.assertEqual(data["pool-size"], POOL_MIB * MiB, data)
        self.assertGreaterEqual(data["excess"], (DATA_MIB - POOL_MIB) * MiB, data)
        self.assertGreaterEqual(data["elapsed-ms"], 500, data)
        self.assertEqual(g.dmm_stats()["reclaim_behind"], 1)
        self.assertEqual(g.check(), keep)
