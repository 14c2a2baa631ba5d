"""The systemd unit contrib/systemd/vhost-balloon@.service.

`systemd-analyze verify` and `security --offline` on the unit (with ExecStart
pointing at the built binary), its ExecStart flags against the binary's
--help, and, where systemd is not PID 1 (containers, CI), the binary run by
hand under the sandbox constraints that can be reproduced without systemd.
"""

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT_DIR = ROOT / "contrib" / "systemd"
UNIT = UNIT_DIR / "vhost-balloon@.service"
PATH_UNIT = UNIT_DIR / "vhost-balloon@.path"
MAN_DIR = ROOT / "docs" / "man"
INSTALLED_BIN = "/usr/local/bin/vhost-balloon"
# The unit's exposure must stay "OK" (systemd-analyze: < 2.0 is "OK").
MAX_EXPOSURE = 1.5


def built_binary(name):
    """Path of a release binary, or skip (fail under DMM_REQUIRE_FUNCTIONAL)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "release" / name
    if not path.is_file():
        reason = f"{path} not built (cargo build --release -p vhost-balloon -p dmm-core)"
        if os.environ.get("DMM_REQUIRE_FUNCTIONAL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def need_tool(tool):
    if shutil.which(tool) is None:
        reason = f"{tool} not installed (apt-get install systemd)"
        if os.environ.get("DMM_REQUIRE_FUNCTIONAL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def unit_copy(tmp_path):
    """The unit with ExecStart rewritten to the built binary, plus a MANPATH
    holding our man pages so that Documentation=man:... resolves."""
    binary = built_binary("vhost-balloon")
    text = UNIT.read_text()
    assert INSTALLED_BIN in text, f"ExecStart of {UNIT} no longer runs {INSTALLED_BIN}"
    (tmp_path / UNIT.name).write_text(text.replace(INSTALLED_BIN, str(binary)))
    shutil.copy(PATH_UNIT, tmp_path / PATH_UNIT.name)
    man1 = tmp_path / "man" / "man1"
    man1.mkdir(parents=True)
    for page in MAN_DIR.glob("*.1"):
        (man1 / page.name).symlink_to(page)
    return tmp_path


def analyze(unit_dir, *args):
    env = dict(os.environ, MANPATH=str(unit_dir / "man"), SYSTEMD_PAGER="", SYSTEMD_COLORS="0")
    return subprocess.run(
        ["systemd-analyze", *args], cwd=unit_dir, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("unit", ["vhost-balloon@vm1.service", "vhost-balloon@vm1.path"])
def test_unit_verifies_without_warnings(unit_copy, unit):
    need_tool("systemd-analyze")
    # An instance name, so that %i expands as it will for a VM.
    res = analyze(unit_copy, "verify", str(unit_copy / unit))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr


def test_path_unit_watches_the_default_dmm_socket():
    service = UNIT.read_text()
    path = PATH_UNIT.read_text()
    default = re.search(r"^Environment=DMM_SOCKET=(\S+)$", service, re.M)
    assert default, "the service sets no default DMM_SOCKET"
    assert f"PathExists={default.group(1)}" in path.splitlines()


def test_tmpfiles_creates_the_socket_directory(tmp_path):
    need_tool("systemd-tmpfiles")
    res = subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create", UNIT_DIR / "dmm.conf"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    st = (tmp_path / "run" / "dmm").stat()
    assert oct(st.st_mode & 0o777) == oct(0o750)


def test_unit_exposure_is_low(unit_copy):
    need_tool("systemd-analyze")
    res = analyze(unit_copy, "security", "--offline=yes", str(unit_copy / "vhost-balloon@vm1.service"))
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert m, res.stdout
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout


def exec_start_flags():
    line = next(l for l in UNIT.read_text().splitlines() if l.startswith("ExecStart="))
    return re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", line)


def test_exec_start_flags_exist_in_binary():
    binary = built_binary("vhost-balloon")
    flags = exec_start_flags()
    assert "--socket-path" in flags, flags
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30).stdout
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text)]
    assert not missing, f"ExecStart uses {missing}, not in `vhost-balloon --help`:\n{help_text}"


# --- the binary under the sandbox, by hand (no systemd as PID 1) -------------

# Directives reproduced by hand, and how; the rest need systemd's seccomp
# filters and are only checked by `systemd-analyze verify/security` above.
BY_HAND = {
    "PrivateNetwork=yes": "unshare --net",
    "PrivateIPC=yes": "unshare --ipc",
    "PrivateMounts=yes": "unshare --mount --propagation private",
    "ProtectSystem=strict": "every mount read-only but the runtime directory",
    "NoNewPrivileges=yes": "setpriv --no-new-privs",
    "CapabilityBoundingSet=": "setpriv --bounding-set=-all (root keeps no capability)",
}
NOT_BY_HAND = ("RestrictAddressFamilies", "SystemCallFilter", "MemoryDenyWriteExecute",
               "LockPersonality", "RestrictNamespaces", "ProtectKernel*", "ProtectProc")


class FakeDmm:
    """Enough of the DMM control protocol for vhost-balloon to start."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.commands = []
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn, conn.makefile("rwb") as f:
            for line in f:
                cmd = json.loads(line).get("cmd")
                self.commands.append(cmd)
                if cmd == "stats":
                    ans = {"ok": True, "stats": {"balloon_actual_pages": 0}, "guest": {}}
                elif cmd == "subscribe-balloon":
                    ans = {"ok": True, "num_pages": 0}
                else:
                    ans = {"ok": True}
                f.write(json.dumps(ans).encode() + b"\n")
                f.flush()

    def close(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def vhost_user_get_features(path):
    """VHOST_USER_GET_FEATURES (1) on a fresh connection; returns the u64."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(struct.pack("<III", 1, 0x1, 0))
        hdr = b""
        while len(hdr) < 20:
            chunk = s.recv(20 - len(hdr))
            assert chunk, "vhost-balloon closed the connection"
            hdr += chunk
        req, flags, size, features = struct.unpack("<IIIQ", hdr)
        assert (req, flags & 0x4, size) == (1, 0x4, 8), (req, flags, size)
        return features


def test_binary_runs_under_the_sandbox_by_hand(tmp_path):
    if Path("/proc/1/comm").read_text().strip() == "systemd":
        pytest.skip("systemd is PID 1: start vhost-balloon@NAME.service for real instead")
    binary = built_binary("vhost-balloon")
    for tool in ("unshare", "setpriv", "mount"):
        need_tool(tool)
    if os.geteuid() != 0:
        pytest.skip("needs root (mount namespaces, and the unit runs as root)")
    print("reproduced by hand:", BY_HAND)
    print("not reproduced without systemd (seccomp based):", ", ".join(NOT_BY_HAND))

    ro_dir = tmp_path / "dmm"  # read-only inside, like /run/dmm under ProtectSystem=strict
    ro_dir.mkdir()
    run_dir = tmp_path / "run"  # RuntimeDirectory=: the only writable place
    run_dir.mkdir()
    dmm = FakeDmm(ro_dir / "vm1.ctl")
    sock = run_dir / "vm1.sock"
    # Every mount read-only (ProtectSystem=strict also covers /etc, /usr, /boot,
    # /run...), then the runtime directory writable again.
    script = (
        "awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do "
        "case $mp in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue;; esac; "
        'mount -o bind,remount,ro "$mp" 2>/dev/null || true; done; '
        f"mount --bind {run_dir} {run_dir}; mount -o bind,remount,rw {run_dir}; "
        f"if touch {ro_dir}/probe 2>/dev/null; then echo 'read-only remount failed' >&2; exit 97; fi; "
        "exec setpriv --no-new-privs --bounding-set=-all --inh-caps=-all "
        f'"$@"'
    )
    log = open(tmp_path / "vhost-balloon.log", "w")
    proc = subprocess.Popen(
        ["unshare", "--net", "--ipc", "--mount", "--propagation", "private", "sh", "-ec", script, "sh",
         str(binary), "--socket-path", str(sock), "--dmm", str(ro_dir / "vm1.ctl"), "-v"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, f"exited {proc.returncode}: {(tmp_path / 'vhost-balloon.log').read_text()}"
        assert sock.exists(), (tmp_path / "vhost-balloon.log").read_text()
        # It reached DMM through a read-only mount and no network namespace.
        assert "subscribe-balloon" in dmm.commands, dmm.commands
        # It serves vhost-user: virtio 1.0 and vhost-user protocol features.
        features = vhost_user_get_features(sock)
        assert features & (1 << 32) and features & (1 << 30), hex(features)
        # The constraints really applied to it.
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        assert re.search(r"^CapBnd:\s+0+$", status, re.M), status
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        dmm.close()
