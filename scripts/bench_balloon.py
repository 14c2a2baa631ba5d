#!/usr/bin/env python3
# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Balloon benchmark: stock QEMU balloon vs DMM, same guest, same run.

Run through scripts/bench-balloon.sh. Each run boots the guest once per
side, dirties and frees DIRTY MiB, waits for the host allocation to settle,
then shrinks the guest to TARGET MiB and samples the guest-RAM memfd's real
allocation (st_blocks) every 20 ms until it stops dropping. Reported per
side: MiB the host got back, seconds from the request to the last drop, and
MiB/s; medians over the runs, and the ratio ours/stock.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "functional"))

# pylint: disable=wrong-import-position
from dmm_test import Guest, MiB, PAGE, qemu_has  # noqa: E402
from dmm_test import paths as dmm_paths  # noqa: E402

SAMPLE = 0.02       # s between allocation samples
STALL = 5.0         # s without a drop (after the balloon reached its target: QUIET) ends a run
QUIET = 2.0
RUN_TIMEOUT = 300.0


@dataclass
class Result:
    """One side of one run."""

    side: str
    run: int
    before_mib: float
    after_mib: float
    seconds: float

    @property
    def gave_back(self) -> float:
        return self.before_mib - self.after_mib

    @property
    def rate(self) -> float:
        return self.gave_back / self.seconds if self.seconds > 0 else 0.0


def positive(text: str) -> int:
    """argparse type: an integer > 0, with an error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be > 0")
    return value


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench-balloon.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=positive, default=3, help="runs per side (default 3)")
    p.add_argument("--sides", default="stock,dmm",
                   help="comma list of stock, dmm (default both; dmm is skipped with a "
                        "note if its parts are missing)")
    p.add_argument("--mem", type=positive, default=2048, help="guest RAM MiB (default 2048)")
    p.add_argument("--dirty", type=positive, default=1536,
                   help="MiB the guest dirties and frees (default 1536)")
    p.add_argument("--target", type=positive, default=384,
                   help="MiB the guest is shrunk to (default 384)")
    p.add_argument("--smp", type=positive, default=1, help="guest vCPUs (default 1)")
    p.add_argument("--dmm-trigger", choices=("pool", "balloon"), default="pool",
                   help="ours: qom-set pool-size (default) or QMP balloon through the DMM link")
    args = p.parse_args()
    sides = [s for s in args.sides.split(",") if s]
    for s in sides:
        if s not in ("stock", "dmm"):
            p.error(f"--sides: unknown side '{s}' (expected stock, dmm)")
    if args.dirty + 128 > args.mem:
        p.error(f"--dirty {args.dirty}: leave at least 128 MiB of the {args.mem} MiB guest")
    if args.target >= args.mem:
        p.error(f"--target {args.target}: must be below --mem {args.mem}")
    args.sides = sides
    return args


def shown(path: str) -> str:
    """A path relative to the checkout when it is inside it."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def machine_line(paths: dmm_paths.Paths, accel: str) -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        qver = subprocess.run([paths.qemu, "--version"], capture_output=True, text=True,
                              timeout=30, check=False).stdout.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        qver = "unknown QEMU"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu}, {os.cpu_count()} "
            f"host CPUs, kernel {platform.release()}, load {load}; {qver}; accel {accel}")


def dmm_unavailable(paths: dmm_paths.Paths) -> Optional[str]:
    if not qemu_has(paths.qemu, "object", "memory-backend-dmm"):
        return f"{paths.qemu} has no memory-backend-dmm"
    if not qemu_has(paths.qemu, "device", "vhost-user-balloon-pci"):
        return f"{paths.qemu} has no vhost-user-balloon-pci"
    if paths.vhost_balloon is None:
        return "no target/release/vhost-balloon (cargo build --release -p vhost-balloon)"
    return None


def measure(g: Guest, trigger: Callable[[], None], reached: Callable[[], bool]) -> tuple:
    """Triggers the shrink and samples the allocation; returns (before, after, seconds)."""
    before = g.host_allocated()
    t0 = time.monotonic()
    trigger()
    low, t_low = before, t0
    done_at: Optional[float] = None
    next_check = t0
    while True:
        now = time.monotonic()
        a = g.host_allocated()
        if a < low - MiB:
            low, t_low = a, now
        if done_at is None and now >= next_check:
            next_check = now + 0.5
            if reached():
                done_at = now
        if done_at is not None and now - max(t_low, done_at) >= QUIET:
            break
        if now - t_low >= STALL and now - t0 >= STALL:
            break
        if now - t0 >= RUN_TIMEOUT:
            print(f"  warning: still dropping after {RUN_TIMEOUT:.0f} s", flush=True)
            break
        time.sleep(SAMPLE)
    return before, min(low, g.host_allocated()), t_low - t0


def one_run(paths: dmm_paths.Paths, args: argparse.Namespace, side: str, run: int,
            log_dir: str) -> Result:
    # Free page reporting off in the guest (stock does not offer it; vhost-balloon
    # does): only the balloon gives memory back, on both sides.
    g = Guest(paths, log_dir, mode=side, mem_mib=args.mem, smp=args.smp, report=False,
              name=f"{side}-{run}")
    try:
        g.launch()
        g.run(f"dmm-guest dirty {args.dirty} {run}", timeout=1200)
        g.free()
        time.sleep(1.0)
        target = args.target * MiB
        if side == "stock":
            trigger = lambda: g.balloon(target)  # noqa: E731
            reached = lambda: g.balloon_actual() <= target + MiB  # noqa: E731
        else:
            if args.dmm_trigger == "pool":
                trigger = lambda: g.set_pool(target)  # noqa: E731
            else:
                trigger = lambda: g.balloon(target)  # noqa: E731

            def reached() -> bool:
                s = g.dmm_stats()
                return s["balloon_target_pages"] > 0 and \
                    s["balloon_actual_pages"] >= s["balloon_target_pages"]
        before, after, seconds = measure(g, trigger, reached)
        res = Result(side, run, before / MiB, after / MiB, seconds)
        extra = ""
        if side == "dmm":
            s = g.dmm_stats()
            extra = (f" (balloon {s['balloon_actual_pages'] * PAGE // MiB} MiB, DMM reclaimed "
                     f"{s['reclaimed_balloon_bytes'] // MiB} MiB)")
        else:
            extra = f" (balloon {(g.size - g.balloon_actual()) // MiB} MiB)"
        print(f"  {side:5} run {run}: host {res.before_mib:.0f} -> {res.after_mib:.0f} MiB, "
              f"gave back {res.gave_back:.0f} MiB in {res.seconds:.2f} s = "
              f"{res.rate:.0f} MiB/s{extra}", flush=True)
        return res
    finally:
        g.shutdown()


def main() -> int:
    args = parse_args()
    try:
        paths = dmm_paths.find()
    except dmm_paths.Missing as e:
        print(f"bench-balloon: {e}", file=sys.stderr)
        return 2
    from dmm_test import accel  # pylint: disable=import-outside-toplevel
    accel_name = accel.choose(paths)
    sides = list(args.sides)
    notes: List[str] = []
    if "dmm" in sides:
        why = dmm_unavailable(paths)
        if why:
            sides.remove("dmm")
            notes.append(f"dmm side skipped: {why}")
    if not sides:
        print("bench-balloon: nothing to run: " + "; ".join(notes), file=sys.stderr)
        return 2
    log_dir = os.path.join(dmm_paths.BUILD, "bench-logs", time.strftime("balloon-%Y%m%d-%H%M%S"))
    print(f"machine: {machine_line(paths, accel_name)}")
    print(f"guest: {args.mem} MiB, {args.smp} vCPU, dirties and frees {args.dirty} MiB, "
          f"shrunk to {args.target} MiB, guest free page reporting off; stock = {shown(paths.qemu)} with "
          f"memory-backend-memfd,share=on + virtio-balloon-pci (QMP balloon); dmm = same binary "
          f"with memory-backend-dmm + vhost-user-balloon-pci + vhost-balloon --dmm "
          f"({'qom-set pool-size' if args.dmm_trigger == 'pool' else 'QMP balloon'})")
    print(f"logs: {shown(log_dir)}")
    for n in notes:
        print(n)
    results: Dict[str, List[Result]] = {s: [] for s in sides}
    for run in range(1, args.runs + 1):
        for side in sides:
            try:
                results[side].append(one_run(paths, args, side, run, log_dir))
            except Exception as e:  # pylint: disable=broad-except
                print(f"  {side:5} run {run}: FAILED: {type(e).__name__}: {e}", flush=True)
    print()
    print("| side | runs | host got back (MiB) | seconds | MiB/s |")
    print("|---|---|---|---|---|")
    med: Dict[str, Dict[str, float]] = {}
    for side in sides:
        rs = results[side]
        if not rs:
            print(f"| {side} | 0 | - | - | - |")
            continue
        med[side] = {"mib": statistics.median(r.gave_back for r in rs),
                     "s": statistics.median(r.seconds for r in rs),
                     "rate": statistics.median(r.rate for r in rs)}
        m = med[side]
        print(f"| {side} | {len(rs)} | {m['mib']:.0f} | {m['s']:.2f} | {m['rate']:.0f} |")
    if "stock" in med and "dmm" in med:
        st, dm = med["stock"], med["dmm"]
        print()
        print(f"ratio ours/stock (medians): MiB given back {dm['mib'] / st['mib']:.2f}, "
              f"seconds {dm['s'] / st['s']:.2f}, MiB/s {dm['rate'] / st['rate']:.2f}")
    failed = sum(args.runs - len(results[s]) for s in sides)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
