# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""A guest shrunk while idle whose working set then grows past its pool.

The pool is DMM's promise and swap keeps it; the balloon only borrows memory
the guest is not using. The guest (1 GiB, every policy, swap on) keeps 64 MiB
of checksummed data; its pool is set to 384 MiB while it is idle, so the
balloon takes 640 MiB of free memory. Then the guest writes a 512 MiB working
set to tmpfs: more than its pool, and more than the 384 MiB the balloon left
it. The balloon must give memory back before the guest's own reclaim gets
desperate, and swap must hold the pool meanwhile:

- no OOM kill, no panic (the guest's dmesg and console; `panic=1` with
  QEMU's `-no-reboot` turns a panic into a QEMU exit, not a hang);
- both data sets intact (md5sum in the guest);
- the host holds at most pool + SLACK at the end (memfd `st_blocks`);
- the working-set write is timed against the same guest without a pool.

The second test leaves the guest's statistics slow (every 5 s) and offers
deflate-on-oom: the driver's OOM notifier deflates 1 MiB per OOM and DMM
takes the smaller balloon as the target (dmm-core vm/need.rs).

Measured on main before the fix (issue 9): three 1536 MiB guests shrunk to
600 MiB while idle; the first one writing 800 MiB OOM-killed `dd` and
panicked ("System is deadlocked on memory").
"""

import time
from typing import Optional, Tuple

from dmm_test import DmmTest, Guest, MiB

SIZE_MIB = 1024
KEEP_MIB = 64
POOL_MIB = 384
WORK_MIB = 512
# Resident may pass the pool by what the guest faults in between two policy
# runs (50 ms apart while above the pool; see test_swap.py).
SLACK_MIB = 64
SETTLE_TIMEOUT = 120.0
FILL_TIMEOUT = 600.0
WORK_DIR = "/tmp/dmm-work"
# A copy of the guest helper writing to another directory (the helper keeps
# one data set; the kept data must stay while the working set is written).
WORK_HELPER = (f"sed 's#^DIR=/tmp/dmm-fill$#DIR={WORK_DIR}#' /bin/dmm-guest "
               "> /tmp/dmm-work.sh")
OOM_PATTERN = "out of memory|oom-kill|oom_reaper|invoked oom-killer|kernel panic|deadlocked"


class GrowTest(DmmTest):
    """memory-backend-dmm, policies=all, swap on: a shrunk guest that grows."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()

    def boot_guest(self, name: str, vhost_args=None) -> Guest:
        return self.boot(mode="dmm", mem_mib=SIZE_MIB, policies="all", swap=True,
                         extra_cmdline="panic=1", vhost_args=vhost_args, name=name)

    def write_work(self, g: Guest, seed: int) -> Tuple[str, float]:
        """Writes the WORK_MIB working set; returns its checksum and the seconds it took."""
        g.run(WORK_HELPER, timeout=30)
        t0 = time.monotonic()
        try:
            out = g.run(f"sh /tmp/dmm-work.sh fill {WORK_MIB} {seed}", timeout=FILL_TIMEOUT)
        except Exception:
            self.record_guest_failure(g)
            raise
        took = time.monotonic() - t0
        parts = out.split()
        self.assertEqual(parts[:2], ["fill", str(WORK_MIB)], f"unexpected fill output {out!r}")
        return parts[2], took

    def record_guest_failure(self, g: Guest) -> None:
        """Notes what the console showed when the working-set write failed."""
        text = g.console.text() if g.console else ""
        for line in text.splitlines():
            low = line.lower()
            if any(w in low for w in ("panic", "out of memory", "oom", "deadlocked")):
                self.record(f"console: {line.strip()}")
        stats = g.dmm_stats() if g.vm.is_running() else {}
        if stats:
            self.record(f"at failure: balloon target {stats['balloon_target_pages']} "
                        f"actual {stats['balloon_actual_pages']} pages")

    def assert_no_oom(self, g: Guest) -> None:
        """Neither the guest's dmesg nor its console shows an OOM kill or a panic."""
        hits = g.run(f"dmesg | grep -iE '{OOM_PATTERN}' || true", timeout=60).strip()
        self.assertEqual(hits, "", f"guest dmesg: {hits}")
        console = g.console.text().lower() if g.console else ""
        for word in ("kernel panic", "out of memory"):
            self.assertNotIn(word, console, f"guest console shows {word!r}")

    def check_work(self, g: Guest, keep: str, work: str) -> None:
        """Both data sets read back right."""
        self.assertEqual(g.check(), keep, "kept data changed")
        got = g.run("sh /tmp/dmm-work.sh check", timeout=FILL_TIMEOUT).split()[-1]
        self.assertEqual(got, work, "working set changed")

    def test_shrunk_idle_guest_grows_past_its_pool(self) -> None:
        # The same guest without a pool: how long the working-set write takes.
        base = self.boot_guest("nopool")
        keep = base.fill(KEEP_MIB, seed=41)
        work, took = self.write_work(base, seed=42)
        self.check_work(base, keep, work)
        self.assert_no_oom(base)
        base.shutdown()
        self.shrink_then_grow(self.boot_guest("guest"), (keep, work, took))

    def test_deflate_on_oom_with_slow_statistics(self) -> None:
        # The guest's OOM notifier as the backstop (statistics every 5 s):
        # it deflates 1 MiB per OOM, DMM takes its smaller balloon as the target.
        self.shrink_then_grow(self.boot_guest("guest", vhost_args=[
            "--deflate-on-oom", "--stats-held-interval-ms", "0"]), None)

    def shrink_then_grow(self, g: Guest, base: Optional[Tuple[str, str, float]]) -> None:
        """Shrinks the idle guest to POOL_MIB, writes the working set, checks everything.

        `base`: checksums and write time of the same guest without a pool.
        """
        keep = g.fill(KEEP_MIB, seed=41)
        if base is not None:
            self.assertEqual(keep, base[0])
        # Shrunk while idle: the balloon takes the guest's free memory.
        g.set_pool(POOL_MIB * MiB)
        want = (SIZE_MIB - POOL_MIB) * MiB // 4096

        def inflated():
            s = g.dmm_stats()
            return s if s["balloon_actual_pages"] >= want * 9 // 10 else None
        idle = self.wait_for("the balloon to take the idle guest's free memory", inflated,
                             SETTLE_TIMEOUT)
        total = g.meminfo()
        self.record(f"idle, pool {POOL_MIB} MiB: balloon {idle['balloon_actual_pages'] * 4 // 1024}"
                    f" MiB, guest MemTotal {total['MemTotal'] // MiB} MiB, MemAvailable "
                    f"{total['MemAvailable'] // MiB} MiB, host {g.host_allocated() // MiB} MiB")

        # The working set grows past the pool and past what the balloon left.
        work, took = self.write_work(g, seed=42)
        if base is not None:
            self.assertEqual(work, base[1])
        after = g.dmm_stats()
        without = f"{base[2]:.1f} s without a pool" if base is not None else "no baseline"
        self.record(f"working set {WORK_MIB} MiB written in {took:.1f} s with a {POOL_MIB} MiB "
                    f"pool ({without}); balloon "
                    f"{idle['balloon_actual_pages'] * 4 // 1024} -> "
                    f"{after['balloon_actual_pages'] * 4 // 1024} MiB, swapped "
                    f"{after['swapped_pages'] * 4 // 1024} MiB")
        self.assert_no_oom(g)
        self.check_work(g, keep, work)
        self.assert_no_oom(g)

        # Swap held the pool: the host holds at most pool + slack.
        limit = (POOL_MIB + SLACK_MIB) * MiB
        self.wait_for(f"host memfd allocation <= {POOL_MIB + SLACK_MIB} MiB",
                      lambda: True if g.host_allocated() <= limit else None,
                      SETTLE_TIMEOUT, interval=0.2)
        end = g.dmm_stats()
        self.record(f"end: host {g.host_allocated() // MiB} MiB (pool {POOL_MIB} MiB), swapped "
                    f"{end['swapped_pages'] * 4 // 1024} MiB, balloon "
                    f"{end['balloon_actual_pages'] * 4 // 1024} MiB")
        self.assertGreater(end["swapped_pages"], 0, "nothing was swapped: the test is too weak")
        self.assertEqual(end["pool_size"], POOL_MIB * MiB, "the pool moved")
