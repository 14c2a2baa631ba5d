# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Device processes that map guest RAM: they fault through DMM, or are refused.

A vhost-user backend maps the guest's memfd itself. One that can hand over a
userfaultfd (VHOST_USER_PROTOCOL_F_PAGEFAULT) does so when a
memory-backend-dmm has the swap or zero policy (qemu-patches/0010): its
accesses to swapped-out and never-filled pages fault through DMM, and DMM's
evictions take each page's content at the punch, so a write it makes
meanwhile is kept (docs/architecture.md, "Swapping and device processes").
One that cannot is refused at start and at hotplug, naming itself, the
backend, the policy and what is missing, unless the backend's
unsafe-devices lists it (then DMM_DEVICE_UNSAFE says so).

The device is a real third-party backend: qemu-storage-daemon, built from the
same QEMU source, exporting a raw image as vhost-user-blk. As root it offers
PAGEFAULT; without CAP_SYS_PTRACE (vm.unprivileged_userfaultfd 0) it cannot
open a userfaultfd and does not.

(a) start: the cooperating daemon's disk starts under policies=all; the
    unprivileged one is refused under swap and under zero; unsafe-devices
    accepts it with a warning.
(b) hotplug: the unprivileged daemon's disk is refused, then accepted after
    qom-set unsafe-devices, with the event.
(c) swap under the device: policies=all, the guest holds 256 MiB of live
    data and a pool of 192 MiB is set (well below its working set), then 60 s
    of mixed I/O through the cooperating disk: every chunk's checksum
    matches in the guest and in the image read on the host, the live data
    is intact, DMM swapped and counted the device's faults, and the host
    holds no more than the pool.
(d) what hung before (issue 11): the guest's dirty page cache of the
    vhost-user disk is swapped out, then `sync` makes the device read it: the
    device faults it back in, sync returns, the image matches.
(e) QEMU's own device models go through DMM's userfaultfd too: a built-in
    virtio-blk disk writes back page cache that DMM swapped out.
"""

import os
import random
import shutil
import subprocess
import tempfile
import time
from typing import List

from dmm_test import DmmTest, Guest, MiB
from dmm_test.host import PeakSampler
from dmm_test.paths import FIRMWARE_DIRS
from dmm_test.storage import StorageDaemon, image_md5s, userfaultfd_needs_privilege

START_TIMEOUT = 30.0
GUEST_MIB = 768
POOL_MIB = 192
LIVE_MIB = 256
SLACK_MIB = 64  # as test_swap: fault fills between two policy-thread runs
DISK_MIB = 384
CHUNK_MIB = 8
IO_SECONDS = 60.0


class DeviceSafetyTest(DmmTest):
    """memory-backend-dmm with a vhost-user-blk disk served by qemu-storage-daemon."""

    def setUp(self) -> None:
        super().setUp()
        self.require_dmm()
        if self.paths.storage_daemon is None:
            self.unavailable("no qemu-storage-daemon beside QEMU (run scripts/build-qemu.sh)")
        self.tmp = tempfile.mkdtemp(prefix="dmm-dev-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def storage(self, name: str = "disk", unprivileged: bool = False) -> StorageDaemon:
        """A running qemu-storage-daemon with a new DISK_MIB image; stopped after the test.
        `unprivileged`: without CAP_SYS_PTRACE, so it cannot hand over a userfaultfd."""
        if unprivileged and not userfaultfd_needs_privilege():
            # The host, not the build: no backend here lacks a userfaultfd.
            self.skipTest("vm.unprivileged_userfaultfd is 1: every backend can open a "
                          "userfaultfd, none to refuse")
        qsd = StorageDaemon(self.paths.storage_daemon, os.path.join(self.tmp, f"{name}.img"),
                            os.path.join(self.tmp, f"{name}.sock"),
                            os.path.join(self.log_dir, f"{name}-qsd.log"), DISK_MIB,
                            unprivileged=unprivileged)
        self.addCleanup(qsd.stop)
        qsd.start()
        return qsd

    @staticmethod
    def disk_args(qsd: StorageDaemon, dev_id: str = "disk1") -> List[str]:
        return ["-chardev", f"socket,id=chr-{dev_id},path={qsd.socket_path}",
                "-device", f"vhost-user-blk-pci,id={dev_id},chardev=chr-{dev_id},num-queues=1"]

    def paused_qemu(self, backend: str, qsd: StorageDaemon, tag: str) -> subprocess.Popen:
        """QEMU paused (-S) on `backend` with the disk; stderr to <log_dir>/<tag>.log."""
        args = [self.paths.qemu, "-nodefaults", "-no-user-config", "-display", "none",
                "-accel", "tcg", "-S", "-m", "256M", "-machine", "pc,memory-backend=mem0",
                "-object", backend, *self.disk_args(qsd)]
        for d in FIRMWARE_DIRS:
            args += ["-L", d]
        log = os.path.join(self.log_dir, f"{tag}.log")
        with open(log, "w", encoding="utf-8") as f:
            f.write(f"$ {' '.join(args)}\n")
            f.flush()
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                                    stdout=f, stderr=f)
        self.addCleanup(lambda: (proc.kill(), proc.wait(timeout=30)) if proc.poll() is None
                        else None)
        proc.log = log  # type: ignore[attr-defined]
        return proc

    def backend(self, policies: str, extra: str = "") -> str:
        return (f"memory-backend-dmm,id=mem0,size=256M,policies={policies.replace(',', ',,')},"
                f"swap-path={os.path.join(self.tmp, 'swap')}{extra}")

    def test_start_cooperates_or_is_refused(self) -> None:
        # A daemon that hands over its userfaultfd starts under every policy.
        ok = self.storage("ok")
        proc = self.paused_qemu(self.backend("all"), ok, "cooperating")
        time.sleep(3.0)
        with open(proc.log, encoding="utf-8") as f:  # type: ignore[attr-defined]
            err = f.read()
        self.assertIsNone(proc.poll(), f"QEMU refused a cooperating vhost-user disk: {err}")
        self.record("policies=all with a cooperating qemu-storage-daemon: QEMU started")
        proc.kill()
        proc.wait(timeout=30)

        qsd = self.storage(unprivileged=True)
        for policies, policy in (("balloon,swap,zero,report", "swap"), ("zero", "zero")):
            proc = self.paused_qemu(self.backend(policies), qsd, f"refused-{policy}")
            try:
                proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.fail(f"QEMU started a vhost-user disk with policies={policies}")
            with open(proc.log, encoding="utf-8") as f:  # type: ignore[attr-defined]
                err = f.read()
            self.record(f"policies={policies}: QEMU exited {proc.returncode}: "
                        f"{err.splitlines()[-2:]}")
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn("memory-backend-dmm 'mem0'", err)
            self.assertIn(f"'{policy}' policy", err)
            self.assertIn("device 'disk1'", err)
            self.assertIn("VHOST_USER_PROTOCOL_F_PAGEFAULT", err)
            self.assertIn("unsafe-devices=disk1", err)
            self.assertNotIn("panicked", err)
            self.assertTrue(qsd.alive(), "qemu-storage-daemon died")

        # Accepted by name: QEMU starts, warns, and stays up (paused).
        proc = self.paused_qemu(self.backend("all", ",unsafe-devices=other:disk1"), qsd,
                                "accepted")

        def warned():
            if proc.poll() is not None:
                self.fail(f"QEMU exited {proc.returncode} with unsafe-devices=other:disk1")
            with open(proc.log, encoding="utf-8") as f:  # type: ignore[attr-defined]
                return True if "accepted by unsafe-devices" in f.read() else None
        self.wait_for("QEMU's warning for the accepted disk", warned, START_TIMEOUT)
        time.sleep(1.0)
        self.assertIsNone(proc.poll(), "QEMU exited after accepting the disk")

    def test_hotplug_is_refused_until_accepted(self) -> None:
        qsd = self.storage(unprivileged=True)
        g = self.boot(mode="dmm", mem_mib=512, policies="balloon,swap,zero,report", swap=True)
        chardev = {"type": "socket",
                   "data": {"addr": {"type": "unix", "data": {"path": qsd.socket_path}},
                            "server": False}}
        g.qmp("chardev-add", id="chr-disk2", backend=chardev)
        with self.assertRaises(Exception) as refused:
            g.qmp("device_add", driver="vhost-user-blk-pci", id="disk2", chardev="chr-disk2")
        msg = str(refused.exception)
        self.record(f"device_add refused: {msg}")
        self.assertIn("device 'disk2'", msg)
        self.assertIn("'swap' policy", msg)
        g.raise_if_dead()

        # The refused device's connection goes with its chardev; a new one is accepted.
        g.qmp("chardev-remove", id="chr-disk2")
        g.qmp("chardev-add", id="chr-disk2", backend=chardev)
        g.qmp("qom-set", path="/objects/mem0", property="unsafe-devices", value="disk2")
        g.qmp("device_add", driver="vhost-user-blk-pci", id="disk2", chardev="chr-disk2")
        ev = g.event_wait("DMM_DEVICE_UNSAFE", timeout=30)
        self.record(f"accepted: {ev['data']}")
        self.assertEqual(ev["data"]["device"], "disk2")
        self.assertEqual(ev["data"]["policy"], "swap")
        self.assertEqual(ev["data"]["id"], "mem0")

    def test_disk_data_is_intact_while_dmm_swaps_under_the_device(self) -> None:
        qsd = self.storage()
        g = self.boot(mode="dmm", mem_mib=GUEST_MIB, policies="balloon,swap,zero,report",
                      swap=True, extra_args=self.disk_args(qsd))
        self.assertEqual(g.run("test -b /dev/vda && echo disk").strip(), "disk")
        # Live data the guest keeps: with it the working set is well above
        # the pool, so DMM swaps (page cache, I/O buffers, this) and does
        # not get by with the balloon alone.
        live = g.run(f"mkdir -p /live && mount -t tmpfs -o size={LIVE_MIB}m tmpfs /live && "
                     f"dd if=/dev/urandom of=/live/data bs=1M count={LIVE_MIB} 2>/dev/null && "
                     "md5sum < /live/data", timeout=120).split()[0]
        g.set_pool(POOL_MIB * MiB)
        limit = (POOL_MIB + SLACK_MIB) * MiB
        self.wait_for(f"host memfd allocation <= {POOL_MIB + SLACK_MIB} MiB",
                      lambda: True if g.host_allocated() <= limit else None, 120, interval=0.2)

        chunks = DISK_MIB // CHUNK_MIB
        want: List[str] = [""] * chunks
        rng = random.Random(11)
        rounds = 0
        t0 = time.monotonic()
        with PeakSampler(g.host_allocated) as held:
            # Each round writes a new random chunk through the page cache and
            # reads back an earlier one; every 8th round drops the caches
            # first, so reads come from the device and writes go through it.
            while time.monotonic() - t0 < IO_SECONDS or rounds < chunks:
                n = rounds % chunks
                back = rng.randrange(chunks) if rounds >= chunks else n
                drop = "sync; echo 3 > /proc/sys/vm/drop_caches; " if rounds % 8 == 7 else ""
                out = g.run(f"{drop}dd if=/dev/urandom of=/tmp/c bs=1M count={CHUNK_MIB} "
                            f"2>/dev/null && md5sum < /tmp/c && dd if=/tmp/c of=/dev/vda bs=1M "
                            f"seek={n * CHUNK_MIB} 2>/dev/null && dd if=/dev/vda bs=1M "
                            f"skip={back * CHUNK_MIB} count={CHUNK_MIB} 2>/dev/null | md5sum",
                            timeout=120).split()
                self.assertEqual(len(out), 4, f"round {rounds}: unexpected output {out!r}")
                want[n] = out[0]
                self.assertEqual(out[2], want[back], f"round {rounds}: chunk {back} read back "
                                                     "changed")
                rounds += 1
        took = time.monotonic() - t0

        g.run("sync; echo 3 > /proc/sys/vm/drop_caches", timeout=120)
        got = g.run(f"i=0; while [ $i -lt {chunks} ]; do dd if=/dev/vda bs=1M "
                    f"skip=$((i * {CHUNK_MIB})) count={CHUNK_MIB} 2>/dev/null | md5sum; "
                    "i=$((i + 1)); done", timeout=300).split()[0::2]
        host = image_md5s(qsd.image, CHUNK_MIB, chunks)
        live_after = g.run("md5sum < /live/data", timeout=300).split()[0]
        stats = g.dmm_stats()
        self.record(f"{rounds} rounds in {took:.0f} s ({rounds * CHUNK_MIB} MiB written, "
                    f"{rounds} chunks read back) under a {POOL_MIB} MiB pool of {GUEST_MIB} MiB: "
                    f"host peak {held.peak // MiB} MiB; balloon "
                    f"{stats['reclaimed_balloon_bytes'] // MiB} MiB, swap-outs "
                    f"{stats['swap_outs']}, swap-ins {stats['swap_ins']}; the device: "
                    f"{stats['device_faults']} faults, {stats['device_write_races']} writes "
                    f"caught between copy and punch, {stats['device_populated_conflicts']} "
                    "pages populated behind DMM")
        self.assertEqual(stats["devices"], 1, "the disk's backend does not fault through DMM")
        self.assertGreater(stats["swap_outs"], 0, "nothing was swapped")
        self.assertGreater(stats["device_faults"], 0, "the device raised no fault through DMM")
        self.assertEqual(stats["device_populated_conflicts"], 0,
                         "the device populated guest pages behind DMM")
        self.assertEqual(got, want, "the guest reads back other data than it wrote")
        self.assertEqual(host, want, "the image on the host holds other data than the guest "
                                     "wrote")
        self.assertEqual(live_after, live, "the guest's live data changed")
        self.assertLessEqual(held.peak, limit,
                             f"host held {held.peak // MiB} MiB with a {POOL_MIB} MiB pool")
        self.assertTrue(qsd.alive(), "qemu-storage-daemon died")

    def test_vhost_user_disk_writes_back_swapped_page_cache(self) -> None:
        qsd = self.storage()
        self.write_back_swapped_page_cache(qsd.image, self.disk_args(qsd), "vhost-user-blk",
                                           device=True)

    def test_qemu_device_models_fault_through_dmm(self) -> None:
        image = os.path.join(self.tmp, "builtin.img")
        with open(image, "wb") as f:
            f.truncate(DISK_MIB * MiB)
        self.write_back_swapped_page_cache(
            image, ["-drive", f"file={image},if=none,id=d0,format=raw",
                    "-device", "virtio-blk-pci,drive=d0,id=disk0"], "built-in virtio-blk",
            device=False)

    def write_back_swapped_page_cache(self, image: str, disk: List[str], kind: str,
                                      device: bool) -> None:
        """200 MiB of dirty page cache of the disk, swapped out under a 160 MiB pool,
        then `sync`: the disk's I/O reads the swapped pages (faults: QEMU's I/O threads
        for a built-in disk, the backend process for a vhost-user one)."""
        g = self.boot(mode="dmm", mem_mib=512, policies="balloon,swap,zero,report", swap=True,
                      extra_args=disk)
        # Dirty page cache stays in guest RAM until `sync`: DMM swaps it first.
        # The shell holds the disk open (fd 3): the last close of a block
        # device writes its page cache back.
        # Limits in bytes: ratios shrink with the guest's free memory as the
        # balloon takes it, and writeback would start before `sync`.
        g.run("echo 419430400 > /proc/sys/vm/dirty_bytes; "
              "echo 335544320 > /proc/sys/vm/dirty_background_bytes; "
              "echo 360000 > /proc/sys/vm/dirty_expire_centisecs; exec 3</dev/vda")
        chunks = 200 // CHUNK_MIB
        want = g.run(f"i=0; while [ $i -lt {chunks} ]; do dd if=/dev/urandom of=/tmp/c bs=1M "
                     f"count={CHUNK_MIB} 2>/dev/null; md5sum < /tmp/c; dd if=/tmp/c of=/dev/vda "
                     f"bs=1M seek=$((i * {CHUNK_MIB})) 2>/dev/null; i=$((i + 1)); done; rm /tmp/c",
                     timeout=300).split()[0::2]
        self.assertEqual(len(want), chunks)
        dirty = g.run("grep Dirty: /proc/meminfo").split()[1]
        g.set_pool(160 * MiB)
        self.wait_for("the host memfd allocation <= 224 MiB",
                      lambda: True if g.host_allocated() <= 224 * MiB else None, 120, interval=0.2)
        before = g.dmm_stats()
        t0 = time.monotonic()
        g.run("sync", timeout=300)
        took = time.monotonic() - t0
        after_sync = g.dmm_stats()
        g.run("echo 3 > /proc/sys/vm/drop_caches")
        got = g.run(f"i=0; while [ $i -lt {chunks} ]; do dd if=/dev/vda bs=1M "
                    f"skip=$((i * {CHUNK_MIB})) count={CHUNK_MIB} 2>/dev/null | md5sum; "
                    "i=$((i + 1)); done", timeout=300).split()[0::2]
        host = image_md5s(image, CHUNK_MIB, chunks)
        faults = after_sync["device_faults"] - before["device_faults"]
        self.record(f"{chunks * CHUNK_MIB} MiB written to a {kind} disk ({dirty} kB dirty), "
                    f"pool 512 -> 160 MiB: {before['swapped_pages']} pages swapped; sync took "
                    f"{took:.1f} s and swapped in {after_sync['swap_ins'] - before['swap_ins']} "
                    f"pages ({faults} faults raised by the device process); "
                    f"{g.dmm_stats()['memory_errors']} memory errors")
        self.assertGreater(before["swapped_pages"], 0, "nothing was swapped out")
        self.assertGreater(after_sync["swap_ins"], before["swap_ins"],
                           "the device's write-back swapped nothing in")
        if device:
            self.assertGreater(faults, 0, "the device process raised no fault through DMM")
        self.assertEqual(host, want, "the image holds other data than the guest wrote")
        self.assertEqual(got, want, "the guest reads back other data than it wrote")
        self.assertEqual(g.dmm_stats()["memory_errors"], 0)
