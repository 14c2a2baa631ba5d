# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Free page hinting, checked from the host: a shrink finds the memory the
guest has free before it swaps anything.

The guest (1 GiB, `policies=balloon,swap,zero,report`, a swap store on disk)
dirties 600 MiB and frees it, then keeps 64 MiB of checksummed data. Free
page reporting is off in the guest (`dmm.noreport=1`), so nothing else
finds the freed memory first. Right away the pool shrinks to 384 MiB.

- With hinting (vhost-balloon's default): one hint round, and its zero pages
  give back at least 300 MiB of the 600 (the balloon and the zero scanner
  take free pages meanwhile). The swap store takes at most 5% of the freed
  memory. The pool is reached. After the grow the data is intact.
- With `--free-page-hint off` the same shrink asks for a round, and the
  device ends it at once (the driver never acked the feature). Nothing
  comes back by hints; the balloon and, if it lags, swap do the shrink.
"""

from typing import Dict

from dmm_test import DmmTest, Guest, MiB
from dmm_test.host import wait_settled

SIZE_MIB = 1024
DIRTY_MIB = 600
KEEP_MIB = 64
POOL_MIB = 384
SLACK_MIB = 64
SHRINK_TIMEOUT = 120.0


class HintTest(DmmTest):
    """memory-backend-dmm + vhost-balloon, free page hinting on and off."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()

    def shrink_freed(self, name: str, vhost_args=None) -> Dict[str, int]:
        """Boots, dirties and frees, keeps data, shrinks; returns the stats once reached."""
        g: Guest = self.boot(mode="dmm", mem_mib=SIZE_MIB, report=False, swap=True, name=name,
                             policies="balloon,swap,zero,report", vhost_args=vhost_args)
        g.fill(DIRTY_MIB, seed=31)
        g.free()
        keep = g.fill(KEEP_MIB, seed=32)
        before = g.host_allocated()
        self.assertGreaterEqual(before, DIRTY_MIB * MiB, "the fill did not reach guest RAM")
        g.set_pool(POOL_MIB * MiB)
        limit = (POOL_MIB + SLACK_MIB) * MiB
        self.wait_for(f"host memfd allocation <= {POOL_MIB + SLACK_MIB} MiB",
                      lambda: True if g.host_allocated() <= limit else None,
                      SHRINK_TIMEOUT, interval=0.2)
        # The pool may be reached while the round is still going (the
        # balloon and the zero scanner help): let it end.
        wait_settled("hinted bytes", lambda: g.dmm_stats()["reclaimed_hint_bytes"], 60,
                     quiet=2.0)
        stats = g.dmm_stats()
        self.record(f"vhost-balloon {vhost_args or 'defaults'}: host {before // MiB} -> "
                    f"{g.host_allocated() // MiB} MiB; hint rounds {stats['hint_rounds']}, "
                    f"reclaimed hint {stats['reclaimed_hint_bytes'] // MiB} MiB "
                    f"({stats['hint_kept_pages']} hinted pages kept), swap "
                    f"{stats['reclaimed_swap_bytes'] // MiB} MiB, balloon "
                    f"{stats['reclaimed_balloon_bytes'] // MiB} MiB, zero "
                    f"{stats['reclaimed_zero_bytes'] // MiB} MiB")
        self.assertEqual(g.check(), keep, "data changed by the shrink")
        g.set_pool(g.size)
        self.wait_for("the balloon to deflate",
                      lambda: True if g.dmm_stats()["balloon_target_pages"] == 0 else None, 60)
        self.assertEqual(g.check(), keep, "data changed by the grow")
        self.assertEqual(stats["memory_errors"], 0)
        return stats

    def test_a_shrink_finds_freed_memory_by_hints_not_swap(self) -> None:
        on = self.shrink_freed("hint-on")
        self.assertEqual(on["hint_rounds"], 1, "one round per pool change")
        # Most of the freed memory: the balloon takes free pages meanwhile.
        self.assertGreaterEqual(on["reclaimed_hint_bytes"], 300 * MiB)
        self.assertLessEqual(on["reclaimed_swap_bytes"], DIRTY_MIB * MiB * 5 // 100,
                             "freed memory went to the swap store")
        # Not offered: the round is asked and the device ends it at once.
        off = self.shrink_freed("hint-off", vhost_args=["--free-page-hint", "off"])
        self.assertEqual(off["hint_rounds"], 1)
        self.assertEqual(off["reclaimed_hint_bytes"], 0)
