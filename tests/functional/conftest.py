# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""No test leaves a process behind.

A daemon a test started (QEMU, vhost-balloon, libvirtd, virsh) and did not
stop outlives pytest: it holds memory and sockets, and a later run or CI
waits on it. Every process a test starts inherits DMM_TEST_SESSION from this
session; QEMU under libvirtd (which clears its environment) names a path
under the session's temporary directory on its command line. After each
test, any such process still running is killed and the test errors at
teardown, naming it.
"""

import os
import signal
import time
import uuid

import pytest

SESSION_VAR = "DMM_TEST_SESSION"
os.environ[SESSION_VAR] = uuid.uuid4().hex
GRACE = 10.0  # seconds a process stopped by the test may take to go


def _ours(basetemp: bytes) -> dict:
    """pid -> command line of the live processes this session started."""
    marker = f"{SESSION_VAR}={os.environ[SESSION_VAR]}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if not cmdline:  # a zombie, or a kernel thread
            continue
        if marker in environ or basetemp in cmdline:
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


@pytest.fixture(scope="session")
def _session_basetemp(tmp_path_factory) -> bytes:
    # With the slash: pytest-5 must not match pytest-50 of another session.
    return str(tmp_path_factory.getbasetemp()).encode() + b"/"


@pytest.fixture(autouse=True)
def no_leftover_processes(_session_basetemp):
    """Errors the test (at teardown) if a process it started still runs; kills it."""
    before = set(_ours(_session_basetemp))
    yield
    deadline = time.monotonic() + GRACE
    while True:
        left = {p: c for p, c in _ours(_session_basetemp).items() if p not in before}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for pid in left:
        try:
            # A group leader (start_new_session) takes its group along.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, "the test left processes running (now killed):\n" + "\n".join(
        f"  {pid}: {cmd[:300]}" for pid, cmd in sorted(left.items()))
