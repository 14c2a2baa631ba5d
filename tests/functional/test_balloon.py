# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Ballooning, checked from the host: the memfd's real allocation must drop.

Each guest (1 GiB) first dirties 60% of its RAM and frees it, so the host
holds those pages while the guest has them free, then keeps 64 MiB of
checksummed data through the whole test. The balloon tests turn the guest's
free page reporting off (`dmm.noreport=1`) so that only the balloon gives
memory back; DmmReportTest covers reporting.

Which free pages the guest's balloon driver picks is up to the guest's
allocator, so not every ballooned page was backed on the host. A ballooned
page was certainly backed unless it was one of the pages the host never
allocated; the host must give back at least 90% of those certain ones (and,
for DMM, at least 90% of what DMM says it reclaimed).
"""

import time

from dmm_test import PAGE, DmmTest, Guest, MiB
from dmm_test.host import wait_settled

SIZE_MIB = 1024
DIRTY_MIB = SIZE_MIB * 60 // 100
KEEP_MIB = 64
SHRUNK_MIB = 384
BALLOON_TIMEOUT = 240.0


class BalloonTestBase(DmmTest):
    """Shared steps: dirty and free, keep data, check the host gave memory back."""

    def dirty_and_keep(self, g: Guest) -> str:
        """Dirties DIRTY_MIB and frees it, then keeps KEEP_MIB; returns the kept data's checksum."""
        g.fill(DIRTY_MIB, seed=11)
        g.free()
        keep = g.fill(KEEP_MIB, seed=12)
        allocated = g.host_allocated()
        self.assertGreaterEqual(allocated, DIRTY_MIB * MiB * 95 // 100,
                                f"host holds only {allocated // MiB} MiB after the guest "
                                f"dirtied {DIRTY_MIB} MiB: the fill did not reach guest RAM")
        return keep

    def settled_allocation(self, g: Guest) -> int:
        """Host allocation once it stops dropping."""
        return wait_settled("host memfd allocation", g.host_allocated, timeout=BALLOON_TIMEOUT)

    def assert_gave_back(self, g: Guest, before: int, after: int, ballooned: int) -> None:
        """The host got back >= 90% of the ballooned pages that were surely backed."""
        never_backed = g.size - before
        surely_backed = max(0, ballooned - never_backed)
        given_back = before - after
        msg = (f"host allocation {before // MiB} -> {after // MiB} MiB (gave back "
               f"{given_back // MiB} MiB); guest ballooned {ballooned // MiB} MiB, of which "
               f"at least {surely_backed // MiB} MiB were backed")
        self.record(msg)
        self.assertGreater(surely_backed, 64 * MiB, "test set-up too weak: " + msg)
        self.assertGreaterEqual(given_back, surely_backed * 9 // 10, msg)

    def assert_memtotal_dropped(self, total0: int, total1: int, ballooned: int) -> None:
        """Without deflate-on-oom the driver takes ballooned pages out of MemTotal."""
        drop = total0 - total1
        self.assertAlmostEqual(drop, ballooned, delta=max(ballooned // 50, 4 * MiB),
                               msg=f"MemTotal {total0 // 1024} -> {total1 // 1024} kB, "
                                   f"balloon holds {ballooned // 1024} kB")


class StockBalloonTest(BalloonTestBase):
    """The harness on stock parts only: memory-backend-memfd + virtio-balloon-pci."""

    def test_stock_balloon_gives_memory_back(self) -> None:
        g = self.boot(mode="stock", mem_mib=SIZE_MIB, report=False)
        total0 = g.meminfo()["MemTotal"]
        keep = self.dirty_and_keep(g)
        before = g.host_allocated()

        g.balloon(SHRUNK_MIB * MiB)
        self.wait_for("query-balloon actual to reach the target",
                      lambda: True if g.balloon_actual() <= (SHRUNK_MIB + 1) * MiB else None,
                      BALLOON_TIMEOUT)
        after = self.settled_allocation(g)
        ballooned = g.size - g.balloon_actual()
        self.assert_memtotal_dropped(total0, g.meminfo()["MemTotal"], ballooned)
        self.assert_gave_back(g, before, after, ballooned)
        self.assertEqual(g.check(), keep, "kept data changed while ballooning")

        g.balloon(g.size)
        self.wait_for("query-balloon actual back to the full size",
                      lambda: True if g.balloon_actual() == g.size else None, BALLOON_TIMEOUT)
        self.wait_for("guest MemTotal back up",
                      lambda: True if g.meminfo()["MemTotal"] == total0 else None, 60)
        self.assertEqual(g.check(), keep)


class DmmBalloonTest(BalloonTestBase):
    """memory-backend-dmm + vhost-user-balloon-pci + vhost-balloon --dmm."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()

    def wait_balloon_done(self, g: Guest) -> dict:
        """Waits until the device reports the balloon at DMM's target; returns the stats."""
        def done():
            s = g.dmm_stats()
            return s if s["balloon_actual_pages"] == s["balloon_target_pages"] else None
        return self.wait_for("balloon_actual_pages to reach balloon_target_pages", done,
                             BALLOON_TIMEOUT)

    def shrink(self, g: Guest, total0: int, keep: str) -> dict:
        """Shrinks the pool to SHRUNK_MIB and checks guest, host and data; returns the stats."""
        before = g.host_allocated()
        stats0 = g.dmm_stats()
        g.set_pool(SHRUNK_MIB * MiB)
        self.assertEqual(g.qmp("qom-get", path="/objects/mem0", property="pool-size"),
                         SHRUNK_MIB * MiB)
        self.wait_for("DMM to set a balloon target",
                      lambda: True if g.dmm_stats()["balloon_target_pages"] > 0 else None, 60)
        stats = self.wait_balloon_done(g)
        after = self.settled_allocation(g)
        stats = g.dmm_stats()
        ballooned = stats["balloon_actual_pages"] * PAGE
        self.assert_memtotal_dropped(total0, g.meminfo()["MemTotal"], ballooned)
        self.assert_gave_back(g, before, after, ballooned)
        # DMM counts ballooned pages that were resident when released. Some
        # were filled meanwhile (the guest zeroes pages it allocates for the
        # balloon with init_on_alloc): the host's net drop plus those fills
        # must cover what DMM claims.
        claimed = stats["reclaimed_balloon_bytes"] - stats0["reclaimed_balloon_bytes"]
        filled = (stats["demand_fills"] - stats0["demand_fills"]) * PAGE
        self.record(f"DMM: reclaimed {claimed // MiB} MiB by the balloon, demand-filled "
                    f"{filled // MiB} MiB meanwhile, its host_allocated_bytes "
                    f"{stats['host_allocated_bytes'] // MiB} MiB")
        self.assertGreaterEqual(before - after + filled, claimed * 9 // 10,
                                f"DMM claims {claimed // MiB} MiB reclaimed by the balloon, "
                                f"the host got back {(before - after) // MiB} MiB and "
                                f"{filled // MiB} MiB were filled meanwhile")
        self.assertAlmostEqual(stats["host_allocated_bytes"], g.host_allocated(), delta=4 * MiB,
                               msg="DMM's host_allocated_bytes is not the memfd's st_blocks")
        self.assertLessEqual(after, (SHRUNK_MIB + 32) * MiB,
                             f"host still holds {after // MiB} MiB with a {SHRUNK_MIB} MiB pool")
        self.assertEqual(g.check(), keep, "kept data changed while ballooning")
        return stats

    def grow(self, g: Guest, total0: int, keep: str) -> None:
        """Grows the pool back to the full size: the balloon deflates, MemTotal comes back."""
        g.set_pool(g.size)
        self.wait_for("the balloon to deflate",
                      lambda: True if g.dmm_stats()["balloon_actual_pages"] == 0 else None,
                      BALLOON_TIMEOUT)
        self.wait_for("guest MemTotal back up",
                      lambda: True if g.meminfo()["MemTotal"] == total0 else None, 60)
        self.assertEqual(g.check(), keep)

    def test_shrink_pool_then_grow(self) -> None:
        g = self.boot(mode="dmm", mem_mib=SIZE_MIB, report=False)
        total0 = g.meminfo()["MemTotal"]
        keep = self.dirty_and_keep(g)
        self.shrink(g, total0, keep)
        self.grow(g, total0, keep)

    def test_vhost_balloon_restart(self) -> None:
        g = self.boot(mode="dmm", mem_mib=SIZE_MIB, report=False)
        total0 = g.meminfo()["MemTotal"]
        keep = self.dirty_and_keep(g)

        g.kill_vhost_balloon()
        # The guest keeps running without its balloon device's backend.
        self.assertIn("alive", g.run("echo alive", timeout=60))
        self.assertEqual(g.check(), keep)
        g.start_vhost_balloon()
        # QEMU reconnects (reconnect-ms=1000); the balloon works again.
        self.shrink(g, total0, keep)
        self.grow(g, total0, keep)
        self.assertIsNone(g.vhost.poll() if g.vhost else None, "vhost-balloon exited")


    def test_guest_without_balloon_driver(self) -> None:
        # A guest that does not cooperate (no virtio_balloon loaded) must not
        # be able to hurt QEMU: shrinking the pool asks in vain, nothing breaks.
        g = self.boot(mode="dmm", mem_mib=SIZE_MIB, report=False, balloon=False)
        self.assertIs(g.balloon_driver, False)
        keep = g.fill(KEEP_MIB, seed=31)
        g.set_pool(SHRUNK_MIB * MiB)
        time.sleep(10)
        self.assertIn("alive", g.run("echo alive", timeout=60))
        stats = g.dmm_stats()
        self.assertEqual(stats["balloon_actual_pages"], 0)
        self.assertEqual(stats["pool_size"], SHRUNK_MIB * MiB)
        self.assertEqual(g.check(), keep)
        g.set_pool(g.size)
        self.assertIn("alive", g.run("echo alive", timeout=60))
        self.assertEqual(g.check(), keep)


class DmmReportTest(BalloonTestBase):
    """Free page reporting through vhost-balloon, with and without the `report` policy."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()

    def dirty_free_settle(self, g: Guest) -> tuple:
        """Dirties and frees DIRTY_MIB; returns (allocation when dirty, once settled after)."""
        g.fill(DIRTY_MIB, seed=21)
        dirty = g.host_allocated()
        g.free()
        time.sleep(5)  # the driver reports after a 2 s delay
        return dirty, self.settled_allocation(g)

    def test_report_policy_gives_freed_memory_back(self) -> None:
        g = self.boot(mode="dmm", mem_mib=SIZE_MIB, policies="balloon,report")
        keep = g.fill(KEEP_MIB, seed=22)
        stats0 = g.dmm_stats()
        dirty, after = self.dirty_free_settle(g)
        given = dirty - after
        claimed = g.dmm_stats()["reclaimed_report_bytes"] - stats0["reclaimed_report_bytes"]
        self.record(f"report: host {dirty // MiB} -> {after // MiB} MiB after freeing "
                    f"{DIRTY_MIB} MiB; DMM reclaimed {claimed // MiB} MiB by reports")
        self.assertGreaterEqual(given, DIRTY_MIB * MiB * 9 // 10,
                                f"host {dirty // MiB} -> {after // MiB} MiB after the guest "
                                f"freed {DIRTY_MIB} MiB")
        self.assertGreaterEqual(given, claimed * 9 // 10)
        # The same data written again, now over reported (punched) pages, reads back right.
        self.assertEqual(g.fill(KEEP_MIB, seed=22), keep)
        self.assertEqual(g.check(), keep)

    def test_reports_ignored_without_report_policy(self) -> None:
        # policies=balloon: reported pages stay with the guest (the host keeps them).
        g = self.boot(mode="dmm", mem_mib=SIZE_MIB, policies="balloon")
        dirty, after = self.dirty_free_settle(g)
        stats = g.dmm_stats()
        self.assertGreaterEqual(after, dirty * 95 // 100,
                                f"host {dirty // MiB} -> {after // MiB} MiB after the guest freed "
                                f"{DIRTY_MIB} MiB with policies=balloon (DMM reclaimed "
                                f"{stats['reclaimed_report_bytes'] // MiB} MiB by reports)")
        self.assertEqual(stats["reclaimed_report_bytes"], 0)
