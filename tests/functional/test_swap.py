# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Swapping, checked from the host: one pool, every policy, nothing lost.

(a) The guest writes checksummed data over 80% of its RAM (tmpfs); the pool
shrinks to 40%. The balloon can only take what the guest has free, so DMM
must swap the rest (at once for what the balloon is not asked for, the rest
when the guest's pace falls short of the deadline). The host memfd's real
allocation (st_blocks) must reach the pool and stay within pool + slack
while the guest re-reads everything (faults swap pages in, the policy
thread swaps others out); every checksum matches; the pool grows back.

(b) A guest without a balloon driver (dmm.noballoon=1) is still shrunk, by
swapping, within the deadline: its silent balloon is judged after 1 s.

SLACK: between two policy-thread runs (50 ms apart while above the pool) the
guest's faults fill pages past the pool; with TCG's fault rate that is a few
MiB. 64 MiB leaves room for a slow host, and is documented here.
"""

import time

from dmm_test import DmmTest, Guest, MiB
from dmm_test.host import PeakSampler

SIZE_MIB = 640
DATA_MIB = SIZE_MIB * 80 // 100
POOL_MIB = SIZE_MIB * 40 // 100
SLACK_MIB = 64
DEADLINE_S = 5.0
SHRINK_TIMEOUT = 120.0


class SwapTest(DmmTest):
    """memory-backend-dmm with policies=balloon,swap,zero,report and a swap-path."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()

    def boot_swap(self, **kwargs) -> Guest:
        """A DMM guest swapping to a store in the guest's temp dir (on disk here)."""
        return self.boot(mode="dmm", mem_mib=SIZE_MIB, policies="balloon,swap,zero,report",
                         swap=True, **kwargs)

    def shrink_to_pool(self, g: Guest) -> float:
        """Sets the pool to POOL_MIB; returns seconds until the host holds <= pool + slack."""
        t0 = time.monotonic()
        g.set_pool(POOL_MIB * MiB)
        limit = (POOL_MIB + SLACK_MIB) * MiB
        self.wait_for(f"host memfd allocation <= {POOL_MIB + SLACK_MIB} MiB",
                      lambda: True if g.host_allocated() <= limit else None,
                      SHRINK_TIMEOUT, interval=0.2)
        took = time.monotonic() - t0
        stats = g.dmm_stats()
        self.record(f"pool {SIZE_MIB} -> {POOL_MIB} MiB in {took:.1f} s: host holds "
                    f"{g.host_allocated() // MiB} MiB; reclaimed balloon "
                    f"{stats['reclaimed_balloon_bytes'] // MiB} MiB, swap "
                    f"{stats['reclaimed_swap_bytes'] // MiB} MiB, zero "
                    f"{stats['reclaimed_zero_bytes'] // MiB} MiB, report "
                    f"{stats['reclaimed_report_bytes'] // MiB} MiB; swapped "
                    f"{stats['swapped_pages']} pages")
        self.assertGreater(stats["swapped_pages"], 0, "nothing was swapped out")
        return took

    def check_within_pool(self, g: Guest, keep: str) -> None:
        """Re-reads all data in the guest while sampling the host allocation."""
        before = g.dmm_stats()
        with PeakSampler(g.host_allocated) as held:
            got = g.check()
        after = g.dmm_stats()
        swap_ins = after["swap_ins"] - before["swap_ins"]
        self.record(f"re-read {DATA_MIB} MiB: checksum {'ok' if got == keep else 'BAD'}, "
                    f"{swap_ins} swap-ins, host peak {held.peak // MiB} MiB "
                    f"(pool {POOL_MIB} MiB + slack {SLACK_MIB} MiB)")
        self.assertEqual(got, keep, "data changed while swapped")
        self.assertGreater(swap_ins, 0, "the re-read swapped nothing in")
        self.assertLessEqual(held.peak, (POOL_MIB + SLACK_MIB) * MiB,
                             f"host held {held.peak // MiB} MiB with a {POOL_MIB} MiB pool")
        self.assertEqual(after["device_populated_conflicts"], 0)

    def test_nothing_lost_within_pool(self) -> None:
        g = self.boot_swap()
        keep = g.fill(DATA_MIB, seed=21)
        self.assertGreaterEqual(g.host_allocated(), DATA_MIB * MiB)
        self.shrink_to_pool(g)
        self.check_within_pool(g, keep)
        # The pool grows back: the balloon deflates, data still intact.
        g.set_pool(g.size)
        self.wait_for("the balloon to deflate",
                      lambda: True if g.dmm_stats()["balloon_target_pages"] == 0 else None, 60)
        self.assertEqual(g.check(), keep)

    def test_no_balloon_driver_still_shrinks(self) -> None:
        g = self.boot_swap(balloon=False)
        self.assertIs(g.balloon_driver, False)
        keep = g.fill(DATA_MIB, seed=22)
        took = self.shrink_to_pool(g)
        stats = g.dmm_stats()
        self.assertEqual(stats["reclaimed_balloon_bytes"], 0)
        # The balloon device is there (it subscribed) and was asked, but
        # nobody inflates: the silent balloon is judged after at most 1 s
        # (dmm-core vm/pace.rs SILENCE; by its pace if free page reports
        # arrive), not at the deadline.
        self.assertGreater(stats["balloon_target_pages"], 0, "the balloon was not asked")
        self.assertLess(took, DEADLINE_S, "swap waited for the whole deadline")
        self.assertEqual(g.check(), keep)
