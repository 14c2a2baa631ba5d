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
     request to the host holding <= TARGET + SLACK MiB, checksum after. The
     re-read of the data (md5sum) is timed before the shrink, under the pool,
     and after the pool grows back (issue 10: within 1.2x of before).
(ii) freed: the guest dirties and frees FREED MiB; seconds until the host
     holds <= TARGET MiB, ours vs stock.
(iii) cycle: the whole life of memory that comes back. The guest dirties and
     frees FREED MiB; the host shrinks it to TARGET MiB (timed, with the disk
     bytes QEMU wrote meanwhile, /proc/PID/io write_bytes), grows it back to
     all of its RAM (timed until the balloon is deflated), then the guest
     writes REUSE MiB of zeros to tmpfs (timed: the re-use of what it got
     back). Whole cycle = shrink + grow + re-use. Checked against issue 10's
     bar: PASS/FAIL lines.

Stock is QEMU's own virtio-balloon in its best configuration: free page
reporting on (free-page-reporting=on), the QMP balloon for the target.

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
    p.add_argument("--reuse", type=positive, default=1400,
                   help="MiB the guest writes after the grow, cycle scenario (default 1400)")
    p.add_argument("--scenarios", default="live,freed,cycle", help="comma list of live, freed, cycle")
    p.add_argument("--sides", default="stock,dmm", help="comma list of stock, dmm")
    p.add_argument("--vhost-arg", action="append", default=[], metavar="ARG",
                   help="an extra vhost-balloon option for the dmm side, repeatable "
                        "(an A/B of device options: --vhost-arg=--free-page-hint --vhost-arg=off)")
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


def make_guest(paths, args, scenario: str, side: str, run: int, log_dir: str) -> Guest:
    kw: Dict = {"free_page_reporting": True}
    if side == "dmm":
        kw = {"policies": "balloon,swap,zero,report", "swap": True, "vhost_args": args.vhost_arg}
    return Guest(paths, log_dir, mode=side, mem_mib=args.mem, name=f"{scenario}-{side}-{run}", **kw)


def wait_for(what: str, done, timeout: float) -> float:
    """Polls done() every SAMPLE s; returns the seconds it took (raises on timeout)."""
    t0 = time.monotonic()
    while not done():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        time.sleep(SAMPLE)
    return time.monotonic() - t0


def shrink(g: Guest, side: str, target: int, slack: int) -> tuple:
    """Asks for `target` bytes (stock: QMP balloon; dmm: pool-size) and waits for the host
    to hold at most target + slack; returns (before, low, seconds, reached)."""
    before = g.host_allocated()
    t0 = time.monotonic()
    if side == "stock":
        g.balloon(target)
    else:
        g.set_pool(target)
    low, secs, reached = wait_alloc(g, target + slack, t0, TIMEOUT)
    return before, low, secs, reached


def grow(g: Guest, side: str) -> float:
    """Gives the guest all its RAM back; seconds until the balloon is deflated."""
    t0 = time.monotonic()
    if side == "stock":
        g.balloon(g.size)
        wait_for("the balloon to deflate", lambda: g.balloon_actual() >= g.size, TIMEOUT)
    else:
        g.set_pool(g.size)
        wait_for("the balloon to deflate", lambda: g.dmm_stats()["ballooned_pages"] == 0, TIMEOUT)
    return time.monotonic() - t0


def timed_check(g: Guest, keep: str) -> float:
    """Seconds the guest takes to re-read its live data (md5sum); raises if it changed."""
    t0 = time.monotonic()
    got = g.check(timeout=1800)
    if got != keep:
        raise RuntimeError(f"live data changed: {got} != {keep}")
    return time.monotonic() - t0


def cycle(paths, args, side: str, run: int, log_dir: str) -> Dict:
    """Shrink, grow, re-use: one run of the cycle scenario."""
    g = make_guest(paths, args, "cycle", side, run, log_dir)
    try:
        g.launch()
        g.run(f"dmm-guest dirty {args.freed} {run}", timeout=1800)
        g.free()
        time.sleep(1.0)
        w0 = g.disk_written()
        before, low, shrink_s, reached = shrink(g, side, args.target * MiB, 0)
        shrink_w = g.disk_written() - w0
        grow_s = grow(g, side)
        s0 = g.dmm_stats() if side == "dmm" else {}
        t2 = time.monotonic()
        g.run(f"dd if=/dev/zero of=/tmp/reuse bs=1M count={args.reuse} 2>/dev/null", timeout=1800)
        reuse_s = time.monotonic() - t2
        g.run("rm -f /tmp/reuse", timeout=120)
        extra = ""
        if side == "dmm":
            s1 = g.dmm_stats()
            d = {k: s1.get(k, 0) - s0.get(k, 0) for k in
                 ("faults", "demand_fills", "swap_ins", "take_back_fills")}
            extra = (f"; shrink: hint {s0.get('reclaimed_hint_bytes', 0) // MiB}, balloon "
                     f"{s0['reclaimed_balloon_bytes'] // MiB}, swap {s0['reclaimed_swap_bytes'] // MiB} MiB"
                     f"; re-use: {d['faults']} faults, {d['demand_fills']} demand fills, "
                     f"{d['swap_ins']} swap-ins; take-back fills before it {s0.get('take_back_fills', 0)}")
        total = shrink_s + grow_s + reuse_s
        print(f"  cycle {side:5} run {run}: shrink {before // MiB} -> {low // MiB} MiB in {shrink_s:.2f} s "
              f"({'reached' if reached else 'NOT reached'}), disk {shrink_w / MiB:.0f} MiB; grow "
              f"{grow_s:.2f} s; re-use {args.reuse} MiB {reuse_s:.2f} s; cycle {total:.2f} s{extra}",
              flush=True)
        return {"shrink_s": shrink_s, "disk": shrink_w / MiB, "reclaimed": (before - low) / MiB,
                "grow_s": grow_s, "reuse_s": reuse_s, "cycle_s": total, "reached": reached}
    finally:
        g.shutdown()


def cycle_report(rs: Dict[str, List[Dict]]) -> None:
    """Medians per side, ratios and the issue's bar."""
    keys = ("shrink_s", "disk", "reclaimed", "grow_s", "reuse_s", "cycle_s")
    med = {side: {k: statistics.median(r[k] for r in runs) for k in keys} for side, runs in rs.items()}
    print()
    print("| cycle | runs | shrink s | disk written in shrink MiB | grow s | re-use s | whole cycle s |")
    print("|---|---|---|---|---|---|---|")
    for side, m in med.items():
        print(f"| {side} | {len(rs[side])} | {m['shrink_s']:.2f} | {m['disk']:.0f} | {m['grow_s']:.2f} | "
              f"{m['reuse_s']:.2f} | {m['cycle_s']:.2f} |")
    if "stock" not in med or "dmm" not in med:
        return
    st, dm = med["stock"], med["dmm"]
    checks = [
        ("shrink at most half of stock's time", dm["shrink_s"], 0.5 * st["shrink_s"]),
        ("disk written in the shrink at most 5% of reclaimed (MiB)", dm["disk"], 0.05 * dm["reclaimed"]),
        ("re-use at most 1.1x stock's time", dm["reuse_s"], 1.1 * st["reuse_s"]),
        ("whole cycle faster than stock", dm["cycle_s"], st["cycle_s"]),
    ]
    print(f"\ncycle, ours/stock (medians): shrink {dm['shrink_s'] / st['shrink_s']:.2f}x, "
          f"grow {dm['grow_s'] / max(st['grow_s'], 1e-9):.2f}x, re-use {dm['reuse_s'] / st['reuse_s']:.2f}x, "
          f"whole cycle {dm['cycle_s'] / st['cycle_s']:.2f}x")
    for what, ours, bar in checks:
        print(f"{'PASS' if ours <= bar else 'FAIL'}: {what}: {ours:.2f} (bar {bar:.2f})")


def one(paths, args, scenario: str, side: str, run: int, log_dir: str) -> Dict:
    g = make_guest(paths, args, scenario, side, run, log_dir)
    try:
        g.launch()
        keep = None
        reads: Dict[str, float] = {}
        if scenario == "live":
            keep = g.fill(args.live, seed=run, timeout=1800)
            reads["before"] = timed_check(g, keep)
        else:
            g.run(f"dmm-guest dirty {args.freed} {run}", timeout=1800)
            g.free()
        time.sleep(1.0)
        target = args.target * MiB
        slack = SLACK_MIB * MiB if scenario == "live" else 0
        limit = target + slack
        before, low, secs, reached = shrink(g, side, target, slack)
        state = guest_state(g, keep)
        extra = ""
        if side == "dmm":
            s = g.dmm_stats()
            extra = (f"; reclaimed balloon {s['reclaimed_balloon_bytes'] // MiB}, report "
                     f"{s['reclaimed_report_bytes'] // MiB}, hint "
                     f"{s.get('reclaimed_hint_bytes', 0) // MiB}, zero {s['reclaimed_zero_bytes'] // MiB}, "
                     f"swap {s['reclaimed_swap_bytes'] // MiB} MiB")
        if scenario == "live" and keep is not None and state.startswith("guest alive"):
            # The re-read under the pool, then after the pool grows back.
            reads["pool"] = timed_check(g, keep)
            grow(g, side)
            reads["after"] = timed_check(g, keep)
            extra += (f"; re-read {reads['before']:.1f} s before, {reads['pool']:.1f} s under the "
                      f"pool, {reads['after']:.1f} s after the grow")
        rate = (before - low) / MiB / secs if secs > 0 else 0.0
        print(f"  {scenario:5} {side:5} run {run}: host {before // MiB} -> {low // MiB} MiB in "
              f"{secs:.2f} s ({'reached' if reached else 'NOT reached'} {limit // MiB} MiB), "
              f"{rate:.0f} MiB/s; {state}{extra}", flush=True)
        return {"before": before / MiB, "low": low / MiB, "s": secs, "reached": reached,
                "rate": rate, "state": state, "reads": reads}
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
          f"{args.target} MiB; re-use {args.reuse} MiB; stock = memory-backend-memfd,share=on + "
          f"virtio-balloon-pci,free-page-reporting=on (QMP balloon); dmm = memory-backend-dmm "
          f"policies balloon,swap,zero,report + vhost-balloon (qom-set pool-size); logs {shown(log_dir)}")
    res: Dict[tuple, List[Dict]] = {}
    cycles: Dict[str, List[Dict]] = {}
    for scenario in [s for s in args.scenarios.split(",") if s]:
        if scenario not in ("live", "freed", "cycle"):
            print(f"bench-pool: unknown scenario {scenario!r} (live, freed, cycle)", file=sys.stderr)
            return 2
        for run in range(1, args.runs + 1):
            for side in sides:
                try:
                    if scenario == "cycle":
                        cycles.setdefault(side, []).append(cycle(paths, args, side, run, log_dir))
                        continue
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
    for (scenario, side), rs in res.items():
        reads = [r["reads"] for r in rs if len(r.get("reads", {})) == 3]
        if scenario != "live" or not reads:
            continue
        m = {k: statistics.median(r[k] for r in reads) for k in ("before", "pool", "after")}
        ratio = m["after"] / m["before"]
        print(f"\nlive {side}: re-read of {args.live} MiB (medians of {len(reads)}): "
              f"{m['before']:.1f} s before the shrink, {m['pool']:.1f} s under the pool "
              f"({m['pool'] / m['before']:.2f}x), {m['after']:.1f} s after the grow ({ratio:.2f}x)")
        if side == "dmm":
            print(f"{'PASS' if ratio <= 1.2 else 'FAIL'}: live re-read after the grow within 1.2x "
                  f"of before the shrink: {ratio:.2f}x")
    if cycles:
        cycle_report(cycles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
