#!/usr/bin/env python3
# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Pool benchmark: one pool, every policy, against stock QEMU's balloon.

Run through scripts/bench-pool.sh. Two scenarios on the same guest, stock and
ours side by side in the same run:

(i)  live: the guest holds LIVE MiB of checksummed data in tmpfs; the host
     asks for TARGET MiB. Stock can only ask the guest (QMP balloon): we report
     what the host allocation reached, how long it took and what happened to
     the guest (alive? OOM kills? data intact?). Ours (pool-size = TARGET,
     policies balloon,swap,zero,report) must reach the pool: MiB/s from the
     request to the host holding <= TARGET + SLACK MiB, checksum after.
(ii) freed: the guest dirties and frees FREED MiB; seconds until the host
     holds <= TARGET MiB, ours vs stock.

The guest-RAM memfd's real allocation (st_blocks) is sampled every 20 ms.
"""

import argparse
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "functional"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

# pylint: disable=wrong-import-position
from bench_balloon import dmm_unavailable, machine_line, positive, shown  # noqa: E402
from dmm_test import Guest, MiB  # noqa: E402
from dmm_test import paths as dmm_paths  # noqa: E402

SAMPLE = 0.02
SLACK_MIB = 16
TIMEOUT = 180.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench-pool.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=positive, default=3, help="runs per side and scenario (default 3)")
    p.add_argument("--mem", type=positive, default=2048, help="guest RAM MiB (default 2048)")
    p.add_argument("--live", type=positive, default=1229, help="live MiB in tmpfs (default 1229)")
    p.add_argument("--freed", type=positive, default=1536, help="MiB dirtied and freed (default 1536)")
    p.add_argument("--target", type=positive, default=512, help="MiB to shrink to (default 512)")
    p.add_argument("--scenarios", default="live,freed", help="comma list of live, freed")
    p.add_argument("--sides", default="stock,dmm", help="comma list of stock, dmm")
    return p.parse_args()


def wait_alloc(g: Guest, limit: int, t0: float, timeout: float) -> tuple:
    """Samples until the allocation is <= limit or stops dropping; returns (low, t_low - t0, reached)."""
    low, t_low = g.host_allocated(), t0
    while True:
        now = time.monotonic()
        a = g.host_allocated()
        if a < low:
            low, t_low = a, now
        if a <= limit:
            return a, now - t0, True
        if now - t_low > 15.0 or now - t0 > timeout:
            return low, t_low - t0, False
        time.sleep(SAMPLE)


def guest_state(g: Guest, keep: Optional[str]) -> str:
    """alive/dead, OOM kills, data."""
    try:
        oom = g.run("dmesg | grep -c -i 'out of memory' || true", timeout=60).strip()
        data = ""
        if keep is not None:
            rc, out = g.console.run("dmm-guest check", timeout=900)
            data = ", data intact" if rc == 0 and keep in out else f", data LOST ({out.strip()[-60:]})"
        return f"guest alive, {oom} OOM kill(s){data}"
    except Exception as e:  # pylint: disable=broad-except
        return f"guest unresponsive ({type(e).__name__})"


def one(paths, args, scenario: str, side: str, run: int, log_dir: str) -> Dict:
    kw = {}
    if side == "dmm":
        kw = {"policies": "balloon,swap,zero,report", "swap": True}
    g = Guest(paths, log_dir, mode=side, mem_mib=args.mem, name=f"{scenario}-{side}-{run}", **kw)
    try:
        g.launch()
        keep = None
        if scenario == "live":
            keep = g.fill(args.live, seed=run, timeout=1800)
        else:
            g.run(f"dmm-guest dirty {args.freed} {run}", timeout=1800)
            g.free()
        time.sleep(1.0)
        target = args.target * MiB
        before = g.host_allocated()
        t0 = time.monotonic()
        if side == "stock":
            g.balloon(target)
        else:
            g.set_pool(target)
        limit = target + (SLACK_MIB * MiB if scenario == "live" else 0)
        low, secs, reached = wait_alloc(g, limit, t0, TIMEOUT)
        state = guest_state(g, keep)
        extra = ""
        if side == "dmm":
            s = g.dmm_stats()
            extra = (f"; reclaimed balloon {s['reclaimed_balloon_bytes'] // MiB}, report "
                     f"{s['reclaimed_report_bytes'] // MiB}, zero {s['reclaimed_zero_bytes'] // MiB}, "
                     f"swap {s['reclaimed_swap_bytes'] // MiB} MiB")
        rate = (before - low) / MiB / secs if secs > 0 else 0.0
        print(f"  {scenario:5} {side:5} run {run}: host {before // MiB} -> {low // MiB} MiB in "
              f"{secs:.2f} s ({'reached' if reached else 'NOT reached'} {limit // MiB} MiB), "
              f"{rate:.0f} MiB/s; {state}{extra}", flush=True)
        return {"before": before / MiB, "low": low / MiB, "s": secs, "reached": reached,
                "rate": rate, "state": state}
    finally:
        g.shutdown()


def main() -> int:
    args = parse_args()
    try:
        paths = dmm_paths.find()
    except dmm_paths.Missing as e:
        print(f"bench-pool: {e}", file=sys.stderr)
        return 2
    from dmm_test import accel  # pylint: disable=import-outside-toplevel
    sides = [s for s in args.sides.split(",") if s]
    why = dmm_unavailable(paths)
    if "dmm" in sides and why:
        print(f"bench-pool: dmm side unavailable: {why}", file=sys.stderr)
        return 2
    log_dir = os.path.join(dmm_paths.BUILD, "bench-logs", time.strftime("pool-%Y%m%d-%H%M%S"))
    print(f"machine: {machine_line(paths, accel.choose(paths))}")
    print(f"guest: {args.mem} MiB; live {args.live} MiB / freed {args.freed} MiB; target "
          f"{args.target} MiB; stock = memory-backend-memfd,share=on + virtio-balloon-pci (QMP "
          f"balloon, the harness's stock device); dmm = memory-backend-dmm policies "
          f"balloon,swap,zero,report + vhost-balloon (qom-set pool-size); logs {shown(log_dir)}")
    res: Dict[tuple, List[Dict]] = {}
    for scenario in [s for s in args.scenarios.split(",") if s]:
        for run in range(1, args.runs + 1):
            for side in sides:
                try:
                    r = one(paths, args, scenario, side, run, log_dir)
                    res.setdefault((scenario, side), []).append(r)
                except Exception as e:  # pylint: disable=broad-except
                    print(f"  {scenario} {side} run {run}: FAILED: {type(e).__name__}: {e}",
                          flush=True)
    print()
    print("| scenario | side | runs | host before -> low (MiB) | seconds | MiB/s | reached |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for (scenario, side), rs in res.items():
        m = {k: statistics.median(r[k] for r in rs) for k in ("before", "low", "s", "rate")}
        med[(scenario, side)] = m
        print(f"| {scenario} | {side} | {len(rs)} | {m['before']:.0f} -> {m['low']:.0f} | "
              f"{m['s']:.2f} | {m['rate']:.0f} | {sum(r['reached'] for r in rs)}/{len(rs)} |")
    if ("freed", "stock") in med and ("freed", "dmm") in med:
        st, dm = med[("freed", "stock")], med[("freed", "dmm")]
        if dm["s"] > 0:
            print(f"\nfreed: stock/ours seconds to reach the target (medians): {st['s'] / dm['s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
