# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Fault injection on a real guest: a swap slot DMM cannot read back intact
is a memory error the guest sees for that page alone, never a changed page;
a full swap store misses the pool and loses nothing.

(a) Corrupt slot and store read error (TCG). The guest program dmm-memtest
writes seeded data to a tmpfs file and prints the guest-physical addresses
of some of its pages; the pool shrinks so those pages are swapped out. From
the host, the swap slots of some of exactly those pages are overwritten
(through /proc/<qemu>/fd, as a torn disk would leave them) and the read of
one more fails with EIO (fault injection, DMM_FAULT_INJECTION=1). The guest
then reads its file through mmap: the pages whose slots are bad raise a
machine check (QEMU queues it on the vCPU that read them), the guest kernel
offlines them and sends the reader SIGBUS (BUS_MCEERR_AR), which
dmm-memtest counts and goes on. Asserted: no page reads different data
(mismatches=0), memory errors exactly at the damaged pages, the guest still
answers, its dmesg shows the memory failure recovery, QMP shows
DMM_MEMORY_ERROR and MEMORY_FAILURE, libdmm counted them. A second read
gets the same errors from the guest kernel alone (the pages are offlined).

The guest CPU is qemu64 with vendor GenuineIntel: Linux recovers an
action-required machine check in user mode on Intel's MCA; on an AMD CPU
without the SUCCOR feature (TCG offers none) it panics.

(b) Store full (ENOSPC): the swap file sits on a 16 MiB tmpfs. Shrinking
the pool below what the guest holds fills it; swapping stops (swap_full),
the pool is missed with DMM_RECLAIM_BEHIND, and every page reads back
intact.
"""

import os
import re
import subprocess
import tempfile
import time
from typing import Dict, List

from dmm_test import DmmTest, Guest, MiB

SIZE_MIB = 384
FILE_MIB = 96
POOL_MIB = 64
SLACK_MIB = 32
CPU = ["-cpu", "qemu64,vendor=GenuineIntel"]
FILE = "/tmp/dmm-memtest"
SEED = 7
CANDIDATES = [100, 2000, 5000, 8000, 11000, 14000, 17000, 20000, 23000, 24000]
CORRUPT = 4  # pages whose slots are overwritten; one more gets EIO
BUS_MCEERR_AR = 4
CHECK_RE = re.compile(r"check pages=(\d+) ok=(\d+) memory_errors=(\d+) mismatches=(\d+)")


class MemoryErrorTest(DmmTest):
    """memory-backend-dmm with policies=swap under TCG, damaged swap slots."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()

    def boot_swapping(self, **kwargs) -> Guest:
        return self.boot(mode="dmm", mem_mib=SIZE_MIB, policies="swap", swap=True,
                         balloon=False, extra_args=CPU, **kwargs)

    def shrink(self, g: Guest) -> None:
        g.set_pool(POOL_MIB * MiB)
        limit = (POOL_MIB + SLACK_MIB) * MiB
        self.wait_for(f"host memfd allocation <= {POOL_MIB + SLACK_MIB} MiB",
                      lambda: True if g.host_allocated() <= limit else None, 120, interval=0.2)

    def swap_fd(self, g: Guest) -> str:
        """/proc/<qemu>/fd/N of the (unlinked) swap file."""
        want = f"{g.swap_path} (deleted)"
        fd_dir = f"/proc/{g.pid}/fd"
        for name in os.listdir(fd_dir):
            path = os.path.join(fd_dir, name)
            try:
                if os.readlink(path) == want:
                    return path
            except OSError:
                continue
        self.fail(f"QEMU holds no fd of {want}")

    def gpas(self, g: Guest, pages: List[int]) -> Dict[int, int]:
        out = g.run(f"dmm-memtest gpa {FILE} {' '.join(map(str, pages))}", timeout=60)
        found = {int(i): int(a, 16) for i, a in re.findall(r"gpa (\d+) (0x[0-9a-f]+)", out)}
        self.assertEqual(sorted(found), sorted(pages), out)
        return found

    def check(self, g: Guest, timeout: float = 600) -> tuple:
        """Runs dmm-memtest check; returns (pages, ok, memory_errors, mismatches, error pages, codes)."""
        out = g.run(f"dmm-memtest check {FILE} {SEED}", timeout=timeout)
        m = CHECK_RE.search(out)
        self.assertIsNotNone(m, out)
        errors = [(int(p), int(c)) for p, c in re.findall(r"memory_error page=(\d+) addr=\S+ code=(\d+)", out)]
        pages, ok, merr, mism = (int(x) for x in m.groups())
        return pages, ok, merr, mism, sorted(p for p, _ in errors), {c for _, c in errors}

    def test_bad_slot_is_a_memory_error_never_other_data(self) -> None:
        os.environ["DMM_FAULT_INJECTION"] = "1"
        self.addCleanup(os.environ.pop, "DMM_FAULT_INJECTION", None)
        g = self.boot_swapping()
        out = g.run(f"dmm-memtest fill {FILE} {FILE_MIB} {SEED}", timeout=300)
        self.assertIn(f"fill pages={FILE_MIB * MiB // 4096}", out)
        where = self.gpas(g, CANDIDATES)
        self.shrink(g)
        swapped = [i for i in CANDIDATES
                   if g.control("page-info", gpa=where[i])["page"]["state"] == "swapped"]
        self.assertGreaterEqual(len(swapped), CORRUPT + 1,
                                f"only pages {swapped} of {CANDIDATES} are swapped out")
        bad, eio = swapped[:CORRUPT], swapped[CORRUPT]
        fd = self.swap_fd(g)
        with open(fd, "r+b", buffering=0) as f:
            for i in bad:
                slot = g.control("page-info", gpa=where[i])["page"]["slot"]
                f.seek(slot["offset"])
                f.write(os.urandom(slot["len"]))
        g.control("inject-swap-read-error", gpa=where[eio])
        lost = sorted(bad + [eio])
        self.record(f"guest pages {lost} at {[hex(where[i]) for i in lost]}: slots of {bad} "
                    f"overwritten, {eio} fails with EIO")

        pages, ok, merr, mism, at, codes = self.check(g)
        self.record(f"check: pages={pages} ok={ok} memory_errors={merr} mismatches={mism} "
                    f"errors at {at} si_code {codes}")
        self.assertEqual(mism, 0, "a page read back different data")
        self.assertEqual(at, lost, "memory errors elsewhere than at the damaged pages")
        self.assertEqual((merr, ok), (len(lost), pages - len(lost)))
        self.assertEqual(codes, {BUS_MCEERR_AR})
        # The guest runs on, and says what happened.
        self.assertEqual(g.run("echo alive").strip(), "alive")
        dmesg = g.run("dmesg | grep -i -E 'memory failure|hardware memory error|mce:'")
        self.record("guest dmesg:\n" + dmesg.strip())
        for i in lost:
            self.assertRegex(dmesg, rf"Memory failure: {hex(where[i] >> 12)}\b")
        self.assertNotIn("panic", g.run("dmesg | grep -i panic || true"))
        # QMP: one DMM_MEMORY_ERROR per page, and QEMU's MEMORY_FAILURE.
        seen = {}
        for _ in lost:
            ev = g.event_wait("DMM_MEMORY_ERROR", timeout=30)["data"]
            seen[ev["offset"]] = (ev["reason"], ev["action"], ev["length"])
        want = {where[i]: ("slot-corrupt", "injected", 4096) for i in bad}
        want[where[eio]] = ("store-read-error", "injected", 4096)
        self.assertEqual(seen, want)
        mf = g.event_wait("MEMORY_FAILURE", timeout=30)["data"]
        self.assertEqual((mf["recipient"], mf["action"], mf["flags"]["action-required"]),
                         ("guest", "inject", True))
        stats = g.dmm_stats()
        self.assertEqual((stats["memory_errors"], stats["poisoned_pages"], stats["swap_corrupt"]),
                         (len(lost), len(lost), len(bad)), stats)
        for i in lost:
            self.assertEqual(g.control("page-info", gpa=where[i])["page"]["state"], "poisoned")

        # Read again: the guest kernel has offlined the pages itself.
        pages2, ok2, merr2, mism2, at2, _ = self.check(g)
        self.assertEqual((ok2, merr2, mism2, at2), (ok, merr, 0, lost))
        self.assertEqual(g.dmm_stats()["memory_errors"], len(lost), "DMM was asked again")

    def test_store_full_misses_the_pool_and_loses_nothing(self) -> None:
        mnt = tempfile.mkdtemp(prefix="dmm-swapfs-", dir="/tmp")
        self.addCleanup(os.rmdir, mnt)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", mnt],
                       check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", mnt], check=False)
        g = self.boot_swapping(swap_dir=mnt)
        out = g.run(f"dmm-memtest fill {FILE} {FILE_MIB} {SEED}", timeout=300)
        self.assertIn("fill pages=", out)
        t0 = time.monotonic()
        g.set_pool(POOL_MIB * MiB)
        ev = g.event_wait("DMM_RECLAIM_BEHIND", timeout=60)["data"]
        stats = g.dmm_stats()
        self.record(f"store on a 16 MiB tmpfs: DMM_RECLAIM_BEHIND after {time.monotonic() - t0:.1f} s, "
                    f"excess {ev['excess'] // MiB} MiB; swap_full {stats['swap_full']}, "
                    f"swap file {stats['swap_file_bytes'] // MiB} MiB, "
                    f"{stats['swapped_pages']} pages swapped")
        self.assertGreater(stats["swap_full"], 0, stats)
        self.assertGreater(ev["excess"], 0)
        self.assertLessEqual(stats["swap_file_bytes"], 16 * MiB)
        pages, ok, merr, mism, _, _ = self.check(g)
        self.assertEqual((ok, merr, mism), (pages, 0, 0))
        self.assertEqual(g.dmm_stats()["memory_errors"], 0)
