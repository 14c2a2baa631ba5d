# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""vhost-balloon may die at any moment: QEMU and the guest carry on.

vhost-balloon is SIGKILLed in the middle of inflates and deflates (the
balloon part-way to DMM's target, the driver waiting for a chain the dead
device took, its statistics buffer held by the device), while idle, and
while the guest rebinds its balloon driver (which reads and writes the
config space and resets the device with no backend behind it), and is
started again each time. After every restart the balloon must reach DMM's
target, the guest-RAM memfd's allocation must come within the pool, the
guest's MemTotal must follow the balloon, the guest's statistics must keep
coming, and the data it wrote before must read back unchanged.

The moments are random (seeded: DMM_RESTART_SEED=<seed> repeats a run; the
seed is in results.txt). The policy is `balloon` alone and free page
reporting is off, so only the balloon device gives memory back.
"""

import os
import random
import time
from typing import Callable, Dict

from dmm_test import PAGE, DmmTest, Guest, MiB

SIZE_MIB = 1024
KEEP_MIB = 64
DIRTY_MIB = 512
POOL_MIB = 384
SLACK = 32 * MiB  # host allocation above the pool still counted as "within"
TIMEOUT = 120.0
TARGET = (SIZE_MIB - POOL_MIB) * MiB // PAGE  # balloon pages for POOL_MIB
BALLOON_DRIVER = "/sys/bus/virtio/drivers/virtio_balloon"


class VhostBalloonRestartTest(DmmTest):
    """Kill and restart vhost-balloon during shrinks and grows of the pool."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()
        seed = int(os.environ.get("DMM_RESTART_SEED", "0")) or random.randrange(1, 1 << 30)
        self.rng = random.Random(seed)
        self.record(f"seed {seed}")
        self.kills: Dict[str, int] = {}

    # --- steps ------------------------------------------------------------------

    def kill_when(self, g: Guest, moment: str,
                  probe: Callable[[Dict[str, int]], bool]) -> Dict[str, int]:
        """SIGKILLs vhost-balloon as soon as DMM's stats satisfy `probe`; returns them."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            s = g.dmm_stats()
            if probe(s):
                break
            g.raise_if_vhost_dead()
            if time.monotonic() > deadline:
                self.fail(f"no {moment} moment within {TIMEOUT:.0f} s; DMM stats {s}")
            time.sleep(0.01)
        g.raise_if_vhost_dead()
        g.kill_vhost_balloon()
        self.kills[moment] = self.kills.get(moment, 0) + 1
        return s

    def away_and_back(self, g: Guest) -> float:
        """QEMU and the guest carry on without the device; then it starts again.

        Returns when it was started (time.monotonic())."""
        self.assertIn("alive", g.run("echo alive", timeout=60))
        time.sleep(self.rng.uniform(0.2, 1.0))
        g.raise_if_dead()
        g.start_vhost_balloon()
        return time.monotonic()

    def shrink(self, g: Guest, total0: int) -> None:
        """Dirties guest RAM, shrinks the pool, kills the device mid-inflate."""
        g.run(f"dd if=/dev/zero of=/tmp/junk bs=1M count={DIRTY_MIB} 2>/dev/null; "
              "rm -f /tmp/junk", timeout=300)
        before = g.host_allocated()
        self.assertGreater(before, POOL_MIB * MiB + 128 * MiB,
                           f"set-up: the host holds only {before // MiB} MiB before the shrink")
        g.set_pool(POOL_MIB * MiB)
        at = int(TARGET * self.rng.uniform(0.05, 0.6))
        s = self.kill_when(g, "mid-inflate", lambda s: s["balloon_target_pages"] == TARGET
                           and at <= s["balloon_actual_pages"] < TARGET)
        started = self.away_and_back(g)

        def reached():
            if g.dmm_stats()["balloon_actual_pages"] != TARGET:
                return None
            a = g.host_allocated()
            return a if a <= POOL_MIB * MiB + SLACK else None
        alloc = self.wait_for(f"balloon at {TARGET} pages and the memfd within the "
                              f"{POOL_MIB} MiB pool", reached, TIMEOUT, interval=0.1)
        took = time.monotonic() - started
        total = g.meminfo()["MemTotal"]
        self.record(f"shrink: killed at {s['balloon_actual_pages']}/{TARGET} pages; pool "
                    f"reached {took:.1f} s after the restart; memfd {before // MiB} -> "
                    f"{alloc // MiB} MiB; MemTotal {total0 // MiB} -> {total // MiB} MiB")
        self.assertAlmostEqual(total0 - total, TARGET * PAGE, delta=4 * MiB,
                               msg="the guest's MemTotal does not follow the balloon")

    def grow(self, g: Guest, total0: int) -> None:
        """Grows the pool back to the RAM size, kills the device mid-deflate."""
        g.set_pool(g.size)
        at = int(TARGET * self.rng.uniform(0.4, 0.95))
        s = self.kill_when(g, "mid-deflate", lambda s: s["balloon_target_pages"] == 0
                           and 0 < s["balloon_actual_pages"] <= at)
        started = self.away_and_back(g)
        self.wait_for("the balloon to deflate",
                      lambda: True if g.dmm_stats()["balloon_actual_pages"] == 0 else None,
                      TIMEOUT, interval=0.1)
        self.wait_for("the guest's MemTotal back up",
                      lambda: True if g.meminfo()["MemTotal"] == total0 else None, 60)
        self.record(f"grow: killed at {s['balloon_actual_pages']}/{TARGET} pages; deflated "
                    f"{time.monotonic() - started:.1f} s after the restart")

    def rebind_driver_while_away(self, g: Guest) -> None:
        """Kills the idle device; the guest unbinds and binds its balloon driver meanwhile."""
        self.assertEqual(g.dmm_stats()["balloon_actual_pages"], 0, "the balloon must be empty")
        dev = g.run(f"ls {BALLOON_DRIVER} | grep '^virtio'", timeout=30).strip()
        self.assertRegex(dev, r"^virtio\d+$")
        g.raise_if_vhost_dead()
        g.kill_vhost_balloon()
        self.kills["driver rebind"] = self.kills.get("driver rebind", 0) + 1
        # remove writes `actual` and resets the device; probe reads the
        # config space and sets DRIVER_OK: all with no backend.
        g.run(f"echo {dev} > {BALLOON_DRIVER}/unbind && echo {dev} > {BALLOON_DRIVER}/bind",
              timeout=60)
        self.assertIn(dev, g.run(f"ls {BALLOON_DRIVER}", timeout=30))
        self.away_and_back(g)

    def assert_stats_keep_coming(self, g: Guest) -> None:
        """Kills the idle device (its stats buffer held); the new one gets it back."""
        g.raise_if_vhost_dead()
        g.kill_vhost_balloon()
        self.kills["idle"] = self.kills.get("idle", 0) + 1
        self.away_and_back(g)
        first = g.control("stats")["guest"].get("minor-faults")

        def fresh():
            g.run("true", timeout=30)  # some minor faults in the guest
            m = g.control("stats")["guest"].get("minor-faults")
            return True if m is not None and m != first else None
        self.wait_for("guest statistics from the restarted device", fresh, 30, interval=0.5)

    # --- the test -----------------------------------------------------------------

    def test_kill_and_restart_during_shrinks_and_grows(self) -> None:
        t0 = time.monotonic()
        g = self.boot(mode="dmm", mem_mib=SIZE_MIB, report=False,
                      vhost_args=["--stats-interval", "1"])
        total0 = g.meminfo()["MemTotal"]
        keep = g.fill(KEEP_MIB, seed=41)
        for cycle in range(3):
            if cycle == 2:
                self.rebind_driver_while_away(g)
            self.shrink(g, total0)
            self.assertEqual(g.check(), keep, f"kept data changed (cycle {cycle + 1})")
            self.grow(g, total0)
        self.assert_stats_keep_coming(g)
        self.assertEqual(g.check(), keep, "kept data changed")
        g.raise_if_dead()
        g.raise_if_vhost_dead()
        self.record(f"kills: {self.kills}; {time.monotonic() - t0:.0f} s in all")
