# Copyright 2026 The DMM Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""The guest's serial console: a reader thread, pattern waits, commands.

The guest (scripts/make-guest.sh) runs a non-interactive shell on ttyS0 with
echo off, so what comes back is only the commands' output. Each command is
framed by begin/end markers the shell prints; the markers are split with
empty quotes in the command text so that an echo could never match them.
"""

import re
import socket
import threading
import time
from typing import Optional, Tuple

READY = "DMM-GUEST-READY"
SHELL_RESTART = "DMM-GUEST-SHELL-RESTART"


class ConsoleError(Exception):
    """The console closed, timed out, or the guest shell died."""


class Console:
    """Reads a console socket into a buffer (and a log file) on a thread."""

    def __init__(self, sock: socket.socket, log_path: str):
        self._sock = sock
        self._log = open(log_path, "ab")  # pylint: disable=consider-using-with
        self._buf = bytearray()
        self._pos = 0  # start of what has not been consumed yet
        self._cond = threading.Condition()
        self._closed = False
        self._seq = 0
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read_loop, name="console", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                with self._cond:
                    if self._closed:
                        return
                continue
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._closed = True
                    self._cond.notify_all()
                    return
                self._buf += data
                self._log.write(data)
                self._log.flush()
                self._cond.notify_all()

    def close(self) -> None:
        """Stops the reader (the socket itself belongs to QEMUMachine)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self._log.close()

    def text(self) -> str:
        """Everything read so far."""
        with self._cond:
            return self._buf.decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float, failure: Optional[str] = None) -> re.Match:
        """Waits until the unconsumed output matches the regex `pattern`.

        Consumes the output up to the end of the match. Raises ConsoleError
        on timeout, on EOF, or when `failure` (a regex) matches first.
        """
        rx = re.compile(pattern.encode())
        fail_rx = re.compile(failure.encode()) if failure else None
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._buf, self._pos)
                if m:
                    self._pos = m.end()
                    return m
                if fail_rx:
                    f = fail_rx.search(self._buf, self._pos)
                    if f:
                        raise ConsoleError(
                            f"console showed {f.group(0)!r} while waiting for {pattern!r}"
                        )
                if self._closed:
                    raise ConsoleError(f"console closed while waiting for {pattern!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = self._buf[self._pos :][-400:].decode("utf-8", "replace")
                    raise ConsoleError(
                        f"no {pattern!r} on the console within {timeout:.0f} s; unread tail: {tail!r}"
                    )
                self._cond.wait(min(left, 1.0))

    def send(self, text: str) -> None:
        """Writes raw text to the guest's console."""
        try:
            self._sock.sendall(text.encode())
        except OSError as e:
            raise ConsoleError(f"cannot write to the console: {e}") from e

    def run(self, command: str, timeout: float = 60.0) -> Tuple[int, str]:
        """Runs a shell command in the guest; returns (exit status, output).

        Output has "\\n" line ends and stdout and stderr merged. The command
        must fit on one line (the tty's line limit is 4095 bytes).
        """
        if "\n" in command or len(command) > 3500:
            raise ValueError(f"guest command must be one short line: {command[:80]!r}")
        self._seq += 1
        n = self._seq
        self.send(
            f'echo "@@DMM""-B{n}"; {{ {command} ; }} </dev/null 2>&1; echo "@@DMM""-E{n} rc=$?"\n'
        )
        self.wait_for(rf"@@DMM-B{n}\r?\n", timeout, failure=SHELL_RESTART)
        start = self._pos
        m = self.wait_for(rf"@@DMM-E{n} rc=(\d+)\r?\n", timeout, failure=SHELL_RESTART)
        with self._cond:
            out = bytes(self._buf[start : m.start()])
        return int(m.group(1)), out.decode("utf-8", "replace").replace("\r\n", "\n")

    def check(self, command: str, timeout: float = 60.0) -> str:
        """Runs a command that must succeed; returns its output."""
        rc, out = self.run(command, timeout)
        if rc != 0:
            raise ConsoleError(f"guest command {command!r} exited {rc}: {out.strip()!r}")
        return out
