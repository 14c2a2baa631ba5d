# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""One test guest: QEMU (stock or DMM), its console, its vhost-balloon.

Stock: `memory-backend-memfd,share=on` + `virtio-balloon-pci` (QEMU's own
balloon). DMM: `memory-backend-dmm` + `vhost-user-balloon-pci` + the
`vhost-balloon` process with `--dmm`. QEMU starts first: it creates the DMM
control socket, then waits on the balloon's chardev (`reconnect-ms=1000`)
while we start vhost-balloon, and only then answers QMP.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional

from . import accel
from .console import READY, Console, ConsoleError
from .host import MiB, allocated_bytes, guest_memfd, wait_until
from .paths import FIRMWARE_DIRS, Paths, import_qemu_python

BOOT_TIMEOUT = 180.0
QMP_TIMEOUT = 60.0  # per QMP command
PAGE = 4096


class GuestError(Exception):
    """QEMU or vhost-balloon did not start or stopped unexpectedly."""


def _machine_class(paths: Paths):
    """QEMUMachine subclass that runs a hook between QEMU's start and QMP connect."""
    import_qemu_python(paths)
    from qemu.machine import QEMUMachine  # pylint: disable=import-outside-toplevel

    class HookedMachine(QEMUMachine):
        """QEMUMachine with `before_qmp(popen)` called right after QEMU starts."""

        before_qmp = None

        def _post_launch(self) -> None:
            if self.before_qmp is not None:
                self.before_qmp(self._popen)
            super()._post_launch()

    return HookedMachine


class Guest:
    """A running (or about to run) test guest and everything around it."""

    def __init__(self, paths: Paths, log_dir: str, *, mode: str = "dmm", mem_mib: int = 1024,
                 pool_mib: Optional[int] = None, policies: str = "balloon", balloon: bool = True,
                 report: bool = True, swap: bool = False, swap_compress: bool = False,
                 swap_dir: Optional[str] = None, smp: int = 1, extra_cmdline: str = "",
                 extra_args: Optional[List[str]] = None,
                 vhost_args: Optional[List[str]] = None, name: str = "guest",
                 free_page_reporting: bool = False):
        if mode not in ("dmm", "stock"):
            raise ValueError(f"mode {mode!r}: expected 'dmm' or 'stock'")
        self.paths = paths
        self.mode = mode
        self.size = mem_mib * MiB
        self.log_dir = log_dir
        self.name = name
        os.makedirs(log_dir, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="dmm-test-", dir="/tmp")  # short: socket paths
        self.ctl_sock = os.path.join(self.tmp, "dmm.ctl")
        self.vu_sock = os.path.join(self.tmp, "balloon.sock")
        self.accel = accel.choose(paths)
        self.console: Optional[Console] = None
        self.vhost: Optional[subprocess.Popen] = None
        self.vhost_args = list(vhost_args or [])
        self._vhost_log = os.path.join(log_dir, f"{name}-vhost-balloon.log")
        self._memfd: Optional[str] = None
        self.balloon_driver: Optional[bool] = None  # from the ready marker
        self.vhost_args = list(vhost_args or [])  # extra vhost-balloon options

        args = ["-nodefaults", "-no-user-config", "-accel", self.accel, "-smp", str(smp),
                "-m", f"{mem_mib}M", "-no-reboot",
                "-kernel", paths.kernel, "-initrd", paths.initrd,
                "-append", " ".join(x for x in (paths.cmdline, extra_cmdline,
                                                "" if balloon else "dmm.noballoon=1",
                                                "" if report else "dmm.noreport=1") if x)]
        for d in FIRMWARE_DIRS:
            args += ["-L", d]
        if mode == "stock":
            args += ["-object", f"memory-backend-memfd,id=mem0,size={self.size},share=on",
                     "-machine", "pc,memory-backend=mem0",
                     "-device", "virtio-balloon-pci,id=balloon0"
                     + (",free-page-reporting=on" if free_page_reporting else "")]
        else:
            pool = self.size if pool_mib is None else pool_mib * MiB
            policies = policies.replace(",", ",,")  # QEMU option syntax
            self.swap_path = os.path.join(swap_dir or self.tmp, "swap")
            swap_opt = f",swap-path={self.swap_path}" if swap else ""
            swap_opt += ",swap-compress=on" if swap_compress else ""
            args += ["-object", f"memory-backend-dmm,id=mem0,size={self.size},pool-size={pool},"
                                f"control-socket={self.ctl_sock},policies={policies}{swap_opt}",
                     "-machine", "pc,memory-backend=mem0",
                     "-chardev", f"socket,id=vb0,path={self.vu_sock},reconnect-ms=1000",
                     "-device", "vhost-user-balloon-pci,id=balloon0,chardev=vb0,memdev=mem0"]
        args += extra_args or []
        machine_cls = _machine_class(paths)
        self.vm = machine_cls(paths.qemu, args=args, name=name, base_temp_dir=self.tmp,
                              log_dir=log_dir, qmp_timer=60)
        self.vm.set_console()
        if mode == "dmm":
            self.vm.before_qmp = self._start_vhost_after_qemu

    # --- life cycle -----------------------------------------------------------

    def _start_vhost_after_qemu(self, popen: subprocess.Popen) -> None:
        def ready() -> Optional[bool]:
            if popen.poll() is not None:
                raise GuestError(f"QEMU exited with {popen.returncode} before creating "
                                 f"{self.ctl_sock}; see {self.log_dir}")
            return True if os.path.exists(self.ctl_sock) else None
        wait_until(f"QEMU to create {self.ctl_sock}", ready, timeout=60)
        self.start_vhost_balloon()

        # QEMU waits for its vhost-user backend for ever (reconnect-ms): a
        # vhost-balloon that dies at start (a bad option) fails the test now.
        # QEMU is killed first: it would not answer a graceful shutdown.
        def listening() -> Optional[bool]:
            try:
                self.raise_if_vhost_dead()
            except GuestError:
                popen.kill()
                popen.wait(timeout=30)
                raise
            return True if os.path.exists(self.vu_sock) else None
        wait_until(f"vhost-balloon to listen on {self.vu_sock}", listening, timeout=30)

    def launch(self, wait_ready: bool = True) -> None:
        """Starts QEMU (and vhost-balloon for DMM) and waits for the guest's ready marker."""
        self.vm.launch()
        # QEMUMachine leaves QMP commands without a timeout: a hung QEMU would hang the test.
        self.vm._qmp.settimeout(QMP_TIMEOUT)  # pylint: disable=protected-access
        self.console = Console(self.vm.console_socket,
                               os.path.join(self.log_dir, f"{self.name}-console.log"))
        if wait_ready:
            m = self.console.wait_for(READY + r" balloon=(\w+)", BOOT_TIMEOUT)
            self.balloon_driver = m.group(1) == b"yes"

    def start_vhost_balloon(self) -> None:
        """Starts vhost-balloon against this guest's sockets (DMM mode)."""
        if self.paths.vhost_balloon is None:
            raise GuestError("no vhost-balloon binary (cargo build --release -p vhost-balloon)")
        if self.vhost is not None and self.vhost.poll() is None:
            raise GuestError("vhost-balloon is already running")
        with open(self._vhost_log, "ab") as log:
            log.write(f"=== start {time.strftime('%H:%M:%S')}\n".encode())
            self.vhost = subprocess.Popen(  # pylint: disable=consider-using-with
                [self.paths.vhost_balloon, "--socket-path", self.vu_sock, "--dmm", self.ctl_sock,
                 "--log-level", "info", *self.vhost_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def raise_if_vhost_dead(self) -> None:
        """Raises GuestError naming how vhost-balloon ended if it is not running (DMM mode)."""
        code = self.vhost.poll() if self.vhost is not None else None
        if self.vhost is None or code is not None:
            how = "never started" if self.vhost is None else (
                f"killed by signal {-code}" if code < 0 else f"exited with status {code}")
            raise GuestError(f"vhost-balloon {how}; see {self._vhost_log}")

    def kill_vhost_balloon(self) -> None:
        """SIGKILLs vhost-balloon (a crash, as far as QEMU can tell) and reaps it."""
        if self.vhost is not None:
            if self.vhost.poll() is None:
                self.vhost.send_signal(signal.SIGKILL)
            self.vhost.wait(timeout=30)

    def shutdown(self) -> None:
        """Stops QEMU and vhost-balloon (always by force if needed) and removes temp files."""
        try:
            if self.console is not None:
                self.console.close()
        finally:
            try:
                try:
                    self.vm.shutdown(timeout=15)
                except Exception:  # pylint: disable=broad-except
                    self.vm.kill()
            finally:
                try:
                    self.kill_vhost_balloon()
                finally:
                    shutil.rmtree(self.tmp, ignore_errors=True)

    # --- host side ------------------------------------------------------------

    @property
    def pid(self) -> int:
        pid = self.vm.get_pid()
        if pid is None:
            raise GuestError("QEMU is not running")
        return pid

    def disk_written(self) -> int:
        """Bytes QEMU's process caused to be written to storage (/proc/PID/io write_bytes)."""
        with open(f"/proc/{self.pid}/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
        raise GuestError(f"no write_bytes in /proc/{self.pid}/io")

    def host_allocated(self) -> int:
        """Bytes of guest RAM the host really holds (memfd st_blocks * 512)."""
        if self._memfd is None:
            self._memfd = guest_memfd(self.pid, self.size)
        return allocated_bytes(self._memfd)

    # --- QMP ------------------------------------------------------------------

    def qmp(self, cmd: str, **args: Any) -> Any:
        """Runs a QMP command; raises on error."""
        try:
            return self.vm.cmd(cmd, **args)
        except Exception:
            self.raise_if_dead()
            raise

    def dmm_stats(self) -> Dict[str, int]:
        """DMM's counters (qom-get /objects/mem0 stats -> "stats")."""
        return self.qmp("qom-get", path="/objects/mem0", property="stats")["stats"]

    def control(self, cmd: str, **args: Any) -> Dict[str, Any]:
        """One request on DMM's control socket (docs/control-protocol.md); raises on an error answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(self.ctl_sock)
            s.sendall((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            line = s.makefile("r").readline()
        answer = json.loads(line)
        if not answer.get("ok"):
            raise GuestError(f"control {cmd} {args}: {answer.get('error')}")
        return answer

    def event_wait(self, name: str, timeout: float = 60.0) -> Dict[str, Any]:
        """The next QMP event called `name` (earlier ones are kept by QEMUMachine)."""
        ev = self.vm.event_wait(name, timeout=timeout)
        if ev is None:
            self.raise_if_dead()
            raise GuestError(f"no QMP event {name} within {timeout:.0f} s")
        return ev

    def set_pool(self, nbytes: int) -> None:
        """qom-set /objects/mem0 pool-size."""
        self.qmp("qom-set", path="/objects/mem0", property="pool-size", value=nbytes)

    def balloon(self, guest_bytes: int) -> None:
        """QMP balloon: the RAM size the guest should keep."""
        self.qmp("balloon", value=guest_bytes)

    def balloon_actual(self) -> int:
        """query-balloon actual: bytes the guest has now (RAM minus balloon)."""
        return int(self.qmp("query-balloon")["actual"])

    # --- guest side -----------------------------------------------------------

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Runs a guest command that must succeed; returns its output."""
        if self.console is None:
            raise GuestError("guest not launched")
        try:
            return self.console.check(command, timeout)
        except ConsoleError as e:
            # The console closes as QEMU dies, a moment before it can be reaped.
            self.raise_if_dead(grace=5.0)
            raise e

    def raise_if_dead(self, grace: float = 0.0) -> None:
        """Raises GuestError naming QEMU's exit status or signal if QEMU is gone
        (or goes within `grace` seconds)."""
        popen = self.vm._popen  # pylint: disable=protected-access
        code = None
        if popen is not None:
            try:
                code = popen.wait(timeout=grace) if grace else popen.poll()
            except subprocess.TimeoutExpired:
                code = None
        if code is not None:
            how = f"signal {-code}" if code < 0 else f"status {code}"
            raise GuestError(f"QEMU died ({how}); see {self.log_dir}")

    def meminfo(self) -> Dict[str, int]:
        """Guest MemTotal/MemFree/MemAvailable in bytes."""
        out = self.run("dmm-guest meminfo", timeout=30)
        info: Dict[str, int] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                info[parts[0]] = int(parts[1]) * 1024
        if "MemTotal" not in info:
            raise GuestError(f"unexpected meminfo output {out!r}")
        return info

    def fill(self, mib: int, seed: int = 1, timeout: float = 600.0) -> str:
        """Writes `mib` MiB of data to guest tmpfs; returns its checksum."""
        out = self.run(f"dmm-guest fill {mib} {seed}", timeout=timeout).split()
        if len(out) != 3 or out[0] != "fill":
            raise GuestError(f"unexpected fill output {out!r}")
        return out[2]

    def check(self, timeout: float = 600.0) -> str:
        """Recomputes the checksum of the filled data; returns it (raises on mismatch)."""
        return self.run("dmm-guest check", timeout=timeout).split()[-1]

    def free(self) -> None:
        """Deletes the filled data and drops the guest's caches."""
        self.run("dmm-guest free", timeout=120)
