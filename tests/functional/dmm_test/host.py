# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Host-side truth: how much of QEMU's guest-RAM memfd is really allocated."""

import os
import threading
import time
from typing import Callable, Optional, Tuple, TypeVar

MiB = 1 << 20
T = TypeVar("T")


class HostError(Exception):
    """The guest-RAM memfd could not be found or read."""


def guest_memfd(pid: int, size: int) -> str:
    """Path (/proc/PID/fd/N) of QEMU's guest-RAM memfd of `size` bytes.

    QEMU may hold other memfds; the guest-RAM one is the memfd whose size is
    the guest's RAM size (the largest one if none matches exactly).
    """
    fd_dir = f"/proc/{pid}/fd"
    best: Optional[Tuple[int, str]] = None
    try:
        names = os.listdir(fd_dir)
    except OSError as e:
        raise HostError(f"cannot list {fd_dir}: {e}") from e
    for name in names:
        path = os.path.join(fd_dir, name)
        try:
            if not os.readlink(path).startswith("/memfd:"):
                continue
            st = os.stat(path)
        except OSError:
            continue  # closed meanwhile
        if st.st_size == size:
            return path
        if best is None or st.st_size > best[0]:
            best = (st.st_size, path)
    if best is None:
        raise HostError(f"process {pid} holds no memfd")
    return best[1]


def allocated_bytes(memfd_path: str) -> int:
    """Bytes the memfd really holds: st_blocks * 512."""
    try:
        return os.stat(memfd_path).st_blocks * 512
    except OSError as e:
        raise HostError(f"cannot stat {memfd_path}: {e}") from e


def wait_until(what: str, probe: Callable[[], Optional[T]], timeout: float, interval: float = 0.25) -> T:
    """Polls `probe` until it returns something other than None; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_settled(what: str, probe: Callable[[], int], timeout: float, quiet: float = 3.0,
                 tolerance: int = MiB, interval: float = 0.25) -> int:
    """Polls `probe` until its value stays within `tolerance` for `quiet` s; returns it.

    TimeoutError if it keeps moving for `timeout` s.
    """
    deadline = time.monotonic() + timeout
    last = probe()
    since = time.monotonic()
    while True:
        time.sleep(interval)
        value = probe()
        now = time.monotonic()
        if abs(value - last) > tolerance:
            last, since = value, now
        elif now - since >= quiet:
            return value
        if now >= deadline:
            raise TimeoutError(f"{what} still changing after {timeout:.0f} s (last {value})")


class PeakSampler:
    """`with PeakSampler(probe) as s:` samples `probe()` every `interval` s on a
    thread while the block runs; `s.peak` is the largest value seen (an
    OSError, QEMU gone, ends the sampling)."""

    def __init__(self, probe: Callable[[], int], interval: float = 0.1):
        self.probe = probe
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.probe())
            except OSError:
                return
            time.sleep(self.interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
