#!/usr/bin/env python3
# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""The main job: boot a guest under QEMU + DMM + vhost-balloon, shrink it, grow it.

Run through scripts/demo.sh (which builds everything first). Prints, from the
host's point of view (the guest-RAM memfd's st_blocks), what the host held,
what it got back when the pool shrank and how long that took, and what the
guest saw (MemTotal) at each step.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "functional"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

# pylint: disable=wrong-import-position
from bench_balloon import positive  # noqa: E402
from dmm_test import Guest, MiB  # noqa: E402
from dmm_test import paths as dmm_paths  # noqa: E402
from dmm_test.host import wait_settled, wait_until  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(prog="demo.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--mem", type=positive, default=1024, help="guest RAM MiB (default 1024)")
    p.add_argument("--dirty", type=positive, default=640,
                   help="MiB the guest writes and then frees (default 640)")
    p.add_argument("--pool", type=positive, default=384,
                   help="MiB the pool shrinks to (default 384)")
    args = p.parse_args()
    if args.pool >= args.mem:
        p.error(f"--pool {args.pool} must be smaller than --mem {args.mem}")
    if args.dirty >= args.mem:
        p.error(f"--dirty {args.dirty} must be smaller than --mem {args.mem}")

    try:
        paths = dmm_paths.find()
    except dmm_paths.Missing as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    log_dir = tempfile.mkdtemp(prefix="dmm-demo-")
    mib = lambda b: b / MiB  # noqa: E731
    guest = Guest(paths, log_dir, mode="dmm", mem_mib=args.mem, policies="balloon", name="demo")
    try:
        t0 = time.monotonic()
        guest.launch()
        print(f"booted a {args.mem} MiB guest ({guest.accel}) in {time.monotonic() - t0:.1f} s: "
              f"QEMU + memory-backend-dmm + vhost-user-balloon-pci + vhost-balloon")
        held_total = guest.meminfo()["MemTotal"]
        print(f"  guest MemTotal {mib(held_total):.0f} MiB, "
              f"host holds {mib(guest.host_allocated()):.0f} MiB")

        guest.fill(args.dirty)
        held = guest.host_allocated()
        print(f"guest wrote {args.dirty} MiB: host holds {mib(held):.0f} MiB")
        guest.free()
        held = wait_settled("host allocation", guest.host_allocated, timeout=60, quiet=2)
        print(f"guest freed it: host still holds {mib(held):.0f} MiB "
              f"(freed guest memory stays allocated on the host)")

        t0 = time.monotonic()
        guest.set_pool(args.pool * MiB)
        after = wait_settled("host allocation", guest.host_allocated, timeout=300, quiet=3,
                             interval=0.05)
        # time until the last drop: the settle window is not part of it
        secs = max(time.monotonic() - t0 - 3.0, 0.001)
        back = held - after
        print(f"pool -> {args.pool} MiB (qom-set pool-size): host got back {mib(back):.0f} MiB "
              f"in {secs:.1f} s ({mib(back) / secs:.0f} MiB/s), now holds {mib(after):.0f} MiB")
        stats = guest.dmm_stats()
        print(f"  guest MemTotal {mib(guest.meminfo()['MemTotal']):.0f} MiB, "
              f"balloon {stats.get('balloon_actual_pages', 0) * 4096 / MiB:.0f} MiB")

        guest.set_pool(args.mem * MiB)

        def grown():
            return True if guest.dmm_stats().get("balloon_actual_pages", 1) == 0 else None
        t0 = time.monotonic()
        deflated = True
        try:
            wait_until("the balloon to deflate", grown, timeout=120)
        except TimeoutError as e:
            deflated = False
            print(f"  {e}")
        total = guest.meminfo()["MemTotal"]
        print(f"pool -> {args.mem} MiB: balloon deflated in {time.monotonic() - t0:.1f} s, "
              f"guest MemTotal {mib(total):.0f} MiB")
        guest.fill(args.dirty, seed=2)
        print(f"guest wrote {args.dirty} MiB again: host holds {mib(guest.host_allocated()):.0f} MiB")
        ok = deflated and back > 0 and total >= held_total - 16 * MiB
        print("demo: OK" if ok else f"demo: FAILED (logs in {log_dir})")
        return 0 if ok else 1
    finally:
        guest.shutdown()


if __name__ == "__main__":
    sys.exit(main())
