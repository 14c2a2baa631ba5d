# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""A third-party vhost-user device for the tests: qemu-storage-daemon.

It exports a raw image as vhost-user-blk on a Unix socket it listens on;
QEMU connects to it with `-chardev socket,path=...` and
`-device vhost-user-blk-pci`. It maps the guest's RAM memfd the way every
vhost-user backend does. Run as root it can open a userfaultfd and offers
VHOST_USER_PROTOCOL_F_PAGEFAULT (libvhost-user's `have_userfault()`), so its
faults go through DMM (qemu-patches/0010); run `unprivileged` (without
CAP_SYS_PTRACE, while vm.unprivileged_userfaultfd is 0) it cannot, and QEMU
refuses it under swap or zero.
"""

import ctypes
import hashlib
import os
import subprocess
from typing import List

from .host import MiB, wait_until


PR_CAPBSET_DROP = 24
CAP_SYS_PTRACE = 19


def _drop_sys_ptrace() -> None:
    """In the child before exec: CAP_SYS_PTRACE out of the bounding set."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE)")


def userfaultfd_needs_privilege() -> bool:
    """True when an unprivileged process cannot open a userfaultfd (the
    kernel's default, vm.unprivileged_userfaultfd = 0)."""
    try:
        with open("/proc/sys/vm/unprivileged_userfaultfd", encoding="ascii") as f:
            return f.read().strip() == "0"
    except OSError:
        return False


class StorageDaemonError(Exception):
    """qemu-storage-daemon did not start or stopped unexpectedly."""


class StorageDaemon:
    """One qemu-storage-daemon exporting `image` (created, `size_mib`) at `socket_path`."""

    def __init__(self, binary: str, image: str, socket_path: str, log_path: str,
                 size_mib: int, unprivileged: bool = False):
        self.image = image
        self.socket_path = socket_path
        self.log_path = log_path
        with open(image, "wb") as f:
            f.truncate(size_mib * MiB)
        # Without CAP_SYS_PTRACE (dropped from the bounding set before exec,
        # so root's exec does not get it back) and with
        # vm.unprivileged_userfaultfd 0, userfaultfd(2) fails with EPERM.
        self.unprivileged = unprivileged
        self.args = [binary,
                     "--blockdev", f"driver=file,node-name=file0,filename={image}",
                     "--blockdev", "driver=raw,node-name=disk0,file=file0",
                     "--export", "type=vhost-user-blk,id=exp0,node-name=disk0,writable=on,"
                                 f"addr.type=unix,addr.path={socket_path}"]
        self.proc = None

    def start(self) -> None:
        """Starts the daemon and waits until it listens."""
        with open(self.log_path, "ab") as log:
            who = " (without CAP_SYS_PTRACE)" if self.unprivileged else ""
            log.write(f"${who} {' '.join(self.args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_drop_sys_ptrace if self.unprivileged else None)

        def listening():
            if self.proc.poll() is not None:
                raise StorageDaemonError(f"qemu-storage-daemon exited with {self.proc.returncode}"
                                         f"; see {self.log_path}")
            return True if os.path.exists(self.socket_path) else None
        wait_until(f"qemu-storage-daemon to listen on {self.socket_path}", listening, timeout=30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stops the daemon (SIGTERM, then SIGKILL) and reaps it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)



def image_md5s(image: str, chunk_mib: int, count: int) -> List[str]:
    """MD5 of each of the first `count` chunks of the disk image `image`, read on the host."""
    with open(image, "rb") as f:
        return [hashlib.md5(f.read(chunk_mib * MiB)).hexdigest() for _ in range(count)]
