"""A DMM guest under libvirt: examples/libvirt/dmm-guest.xml, booted (TCG)
by a libvirtd of our own, shrunk with qom-set through `virsh
qemu-monitor-command`, and the host memory it gave back measured on QEMU's
guest-RAM memfd (st_blocks through /proc/<pid>/fd).

libvirtd runs in a private mount namespace with temporary directories bound
over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
/var/log/libvirt, so the host's libvirt configuration and domains are never
touched; its qemu.conf runs QEMU as root with no security driver and no
namespaces (docs/libvirt.md says why and what to use in production).

The guest runs with free page reporting off (dmm.noreport=1), so what the
host gets back comes from the pool shrink through the balloon. Paths, the
console and the memfd measurement come from the functional tests' dmm_test
package; logs go to build/test-logs/test_libvirt/.

Skipped unless libvirt is installed; DMM_REQUIRE_LIBVIRT=1 turns every skip
into a failure and DMM_INSTALL_LIBVIRT=1 installs Debian's libvirt first.
Once libvirt is there, a missing build piece fails under
DMM_REQUIRE_FUNCTIONAL like the other functional tests.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dmm_test import paths as dmm_paths
from dmm_test.console import Console
from dmm_test.host import allocated_bytes, guest_memfd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "libvirt" / "dmm-guest.xml"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
MIB = 1 << 20
GUEST_MIB = 512
FILL_MIB = 256
KEEP_MIB = 32
POOL_MIB = 160
LIBVIRT_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
QEMU_CONF = """\
# Test only: QEMU as root, no confinement (see docs/libvirt.md).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
stdio_handler = "file"
"""
LIBVIRTD_CONF = """\
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
"""


def unavailable(reason):
    if os.environ.get("DMM_REQUIRE_LIBVIRT") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def ensure_libvirt():
    if shutil.which("libvirtd") and shutil.which("virsh"):
        return
    if os.environ.get("DMM_INSTALL_LIBVIRT") == "1":
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends",
             "libvirt-daemon-system", "libvirt-clients"],
            check=True, env=env, timeout=900,
        )
        if shutil.which("libvirtd") and shutil.which("virsh"):
            return
    unavailable("libvirt not installed (apt-get install libvirt-daemon-system libvirt-clients, "
                "or DMM_INSTALL_LIBVIRT=1)")


def artifacts():
    """The patched QEMU, the guest and vhost-balloon (dmm_test.paths finds them,
    DMM_QEMU_BIN / DMM_GUEST / DMM_VHOST_BALLOON override)."""
    try:
        found = dmm_paths.find()
    except dmm_paths.Missing as e:
        required(str(e))
    if found.vhost_balloon is None:
        required("no target/{release,debug}/vhost-balloon (cargo build --release -p vhost-balloon)")
    return found


def required(reason):
    """A missing build piece: fails under DMM_REQUIRE_FUNCTIONAL or DMM_REQUIRE_LIBVIRT."""
    if dmm_paths.required():
        pytest.fail(reason)
    unavailable(reason)


def wait_for(what, pred, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Libvirtd:
    """A libvirtd of our own in a private mount namespace.

    No default emulator: Debian's libvirt only recommends a QEMU, and
    our domain names the patched one in <emulator>, so libvirt probes that
    binary alone. What needs a default QEMU (`virsh version`: "Cannot find
    suitable emulator for x86_64") is not used here (docs/libvirt.md)."""

    def __init__(self, base):
        self.base = base
        self.proc = None
        self.log = None
        self.uri = f"qemu:///system?socket={base / 'run' / 'libvirt-sock'}"

    def start(self):
        """Starts libvirtd and waits until its QEMU driver answers; stop() in any case after."""
        for name in LIBVIRT_DIRS:
            (self.base / name).mkdir(parents=True)
        (self.base / "etc" / "qemu.conf").write_text(QEMU_CONF)
        (self.base / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (self.base / "etc" / "libvirt.conf").write_text("")
        binds = "; ".join(
            f'mkdir -p {dst} && mount --bind {self.base / src} {dst}' for src, dst in LIBVIRT_DIRS.items())
        self.log = open(self.base / "libvirtd.log", "w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
             f"{binds}; exec libvirtd -p /run/libvirt/libvirtd.pid"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        def answers():
            if self.proc.poll() is not None:
                return True
            try:
                return self.virsh("list", "--all", check=False, timeout=30).returncode == 0
            except subprocess.TimeoutExpired:
                return False

        try:
            wait_for("libvirtd to answer `virsh list`", answers, 60)
        except AssertionError as e:
            raise AssertionError(f"{e}; libvirtd log:\n{self.log_text()}") from None
        assert self.proc.poll() is None, f"libvirtd exited {self.proc.returncode}:\n{self.log_text()}"

    def log_text(self):
        return (self.base / "libvirtd.log").read_text()[-4000:]

    def virsh(self, *args, check=True, timeout=120):
        args = [str(a) for a in args]
        res = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                             timeout=timeout)
        if check:
            assert res.returncode == 0, f"virsh {' '.join(args)}: {res.stdout}{res.stderr}"
        return res

    def qmp(self, domain, command, **arguments):
        req = {"execute": command, "arguments": arguments} if arguments else {"execute": command}
        out = self.virsh("qemu-monitor-command", domain, json.dumps(req)).stdout
        return json.loads(out)["return"]

    def stop(self):
        """Stops the domains (libvirtd leaves them running when it stops), libvirtd, and
        then any QEMU it started that is still there. Safe after a failed start()."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    running = self.virsh("list", "--name", check=False, timeout=30).stdout.split()
                    for name in running:
                        self.virsh("destroy", name, check=False, timeout=60)
                except subprocess.TimeoutExpired:
                    pass
                stop_group(self.proc, 15)
            for pidfile in (self.base / "run" / "qemu").glob("*.pid"):
                kill_pid_if(pidfile.read_text(), f"guest={pidfile.stem},")
        finally:
            if self.log is not None:
                self.log.close()


def stop_group(proc, timeout):
    """SIGTERM to the process group `proc` leads, SIGKILL after `timeout` s; reaps `proc`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def kill_pid_if(pid, needle):
    """SIGKILLs `pid` if its command line holds `needle` (so not a reused pid)."""
    try:
        pid = int(pid)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if needle.encode() in f.read():
                os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def domain_xml(name, found, serial_path, control_path, balloon_path):
    """The example with our paths, name and a smaller guest; serial on a Unix
    socket; free page reporting off in the guest, so the balloon alone
    gives memory back."""
    ET.register_namespace("qemu", QEMU_NS)
    tree = ET.parse(EXAMPLE)
    dom = tree.getroot()
    dom.find("name").text = name
    for tag in ("memory", "currentMemory"):
        el = dom.find(tag)
        el.set("unit", "MiB")
        el.text = str(GUEST_MIB)
    os_el = dom.find("os")
    os_el.find("kernel").text = found.kernel
    os_el.find("initrd").text = found.initrd
    os_el.find("cmdline").text = f"{found.cmdline} dmm.noreport=1"
    devices = dom.find("devices")
    devices.find("emulator").text = found.qemu
    for tag in ("serial", "console"):
        for el in devices.findall(tag):
            devices.remove(el)
    serial = ET.SubElement(devices, "serial", type="unix")
    ET.SubElement(serial, "source", mode="bind", path=str(serial_path))
    ET.SubElement(serial, "target", port="0")
    args = dom.find(f"{{{QEMU_NS}}}commandline").findall(f"{{{QEMU_NS}}}arg")
    for arg in args:
        v = arg.get("value")
        if v.startswith("memory-backend-dmm,"):
            v = re.sub(r"\bsize=[^,]+", f"size={GUEST_MIB}M", v)
            v = re.sub(r"\bpool-size=[^,]+", f"pool-size={GUEST_MIB}M", v)
            v = re.sub(r"\bcontrol-socket=[^,]+", f"control-socket={control_path}", v)
        elif v.startswith("socket,id=balloon0,"):
            v = re.sub(r"\bpath=[^,]+", f"path={balloon_path}", v)
        arg.set("value", v)
    return ET.tostring(dom, encoding="unicode")


def guest_ram_bytes(pid, size):
    """Bytes allocated to QEMU's guest-RAM memfd."""
    return allocated_bytes(guest_memfd(pid, size))


def stats(daemon, name):
    return daemon.qmp(name, "qom-get", path="/objects/mem0", property="stats")["stats"]


def qemu_log(daemon, name):
    log = daemon.base / "log" / "qemu" / f"{name}.log"
    return "\nQEMU log:\n" + log.read_text()[-3000:] if log.exists() else ""


@pytest.fixture
def libvirtd(tmp_path):
    if os.geteuid() != 0:
        unavailable("needs root (a private libvirtd running QEMU as root)")
    ensure_libvirt()
    artifacts()
    if shutil.which("unshare") is None:
        unavailable("unshare (util-linux) not installed")
    daemon = Libvirtd(tmp_path / "libvirt")
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def connect_console(path):
    def attempt():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
        except OSError:
            s.close()
            return None
        return s

    return wait_for(f"the serial socket {path}", attempt, 30)


def test_dmm_guest_shrinks_under_libvirt(libvirtd, tmp_path):
    found = artifacts()
    name = f"dmm-test-{os.getpid()}"
    log_dir = Path(dmm_paths.LOG_ROOT) / "test_libvirt"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    control = tmp_path / "dmm.ctl"
    balloon_sock = tmp_path / "vhost-balloon.sock"
    serial = tmp_path / "serial.sock"

    xml_path = log_dir / f"{name}.xml"
    xml_path.write_text(domain_xml(name, found, serial, control, balloon_sock))
    libvirtd.virsh("define", xml_path)
    balloon = starting = console = listener = None
    balloon_log = open(log_dir / "vhost-balloon.log", "w")
    try:
        # QEMU first: it creates the control socket, then waits for the
        # balloon (reconnect-ms); vhost-balloon needs that socket at start.
        starting = subprocess.Popen(["virsh", "-c", libvirtd.uri, "start", name],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for("QEMU's control socket", lambda: control.exists() or starting.poll() is not None, 60)
        assert control.exists(), f"virsh start: {starting.communicate()[0]}{qemu_log(libvirtd, name)}"
        balloon = subprocess.Popen(
            [found.vhost_balloon, "--socket-path", balloon_sock, "--dmm", control, "-v"],
            stdout=balloon_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out, _ = starting.communicate(timeout=120)
        assert starting.returncode == 0, f"virsh start: {out}{qemu_log(libvirtd, name)}"
        pid = int((libvirtd.base / "run" / "qemu" / f"{name}.pid").read_text())
        console = Console(connect_console(serial), str(log_dir / "console.log"))
        console.wait_for(r"DMM-GUEST-READY balloon=yes", 180)

        # Data the guest keeps must survive the shrink: a checksummed file
        # moved out of dmm-guest's way.
        size = GUEST_MIB * MIB
        kept = re.search(r"fill \d+ ([0-9a-f]{32})", console.check(f"dmm-guest fill {KEEP_MIB} 9", 300))
        assert kept, "dmm-guest fill printed no checksum"
        console.check("mv /tmp/dmm-fill/data /tmp/kept")
        # Dirty guest RAM, then free it inside the guest: it stays allocated
        # on the host until the balloon gives it back.
        console.check(f"dmm-guest dirty {FILL_MIB} 7", 300)
        console.check("dmm-guest free")
        before = guest_ram_bytes(pid, size)
        assert before >= (FILL_MIB + KEEP_MIB) * MIB, f"only {before >> 20} MiB allocated after the fills"
        stats0 = stats(libvirtd, name)

        # The pool change is a QMP event libvirt passes on (docs/libvirt.md).
        listener = subprocess.Popen(
            ["virsh", "-c", libvirtd.uri, "qemu-monitor-event", name, "--event",
             "DMM_POOL_SIZE_CHANGE", "--timeout", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(5)  # virsh registers for the event before the change
        t0 = time.monotonic()
        libvirtd.qmp(name, "qom-set", path="/objects/mem0", property="pool-size", value=POOL_MIB * MIB)
        assert libvirtd.qmp(name, "qom-get", path="/objects/mem0", property="pool-size") == POOL_MIB * MIB
        event, _ = listener.communicate(timeout=150)
        line = next((x for x in event.splitlines() if x.startswith("event DMM_POOL_SIZE_CHANGE")), "")
        assert line, f"virsh qemu-monitor-event: {event}"
        data = json.loads(line[line.index("{"):])
        assert data["id"] == "mem0" and data["pool-size"] == POOL_MIB * MIB, data
        assert data["previous-pool-size"] == size and data["resident"] >= before // 2, data

        def shrunk():
            allocated = guest_ram_bytes(pid, size)
            st = stats(libvirtd, name)
            done = (allocated <= (POOL_MIB + 16) * MIB and st["balloon_target_pages"] > 0
                    and st["balloon_actual_pages"] == st["balloon_target_pages"])
            return done and (allocated, st)

        after, st = wait_for(f"the guest to fit the {POOL_MIB} MiB pool", shrunk, 180, 1.0)
        print(f"memfd allocated: {before >> 20} MiB after the guest freed {FILL_MIB} MiB, "
              f"{after >> 20} MiB with a {POOL_MIB} MiB pool ({time.monotonic() - t0:.1f} s); stats {st}")
        assert after <= before - (FILL_MIB - POOL_MIB) * MIB // 2
        assert st["balloon_target_pages"] * st["page_size"] == size - POOL_MIB * MIB
        assert st["reclaimed_balloon_bytes"] - stats0["reclaimed_balloon_bytes"] >= (before - after) // 2
        # libdmm's own count agrees with the file (the guest runs on: allow 2 MiB).
        assert abs(st["host_allocated_bytes"] - after) <= 2 * MIB, (st["host_allocated_bytes"], after)

        assert console.check("md5sum /tmp/kept", 300).split()[0] == kept.group(1)
    finally:
        if console is not None:
            console.close()
        for proc in (starting, listener):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        libvirtd.virsh("destroy", name, check=False)
        libvirtd.virsh("undefine", name, check=False)
        if balloon is not None:
            stop_group(balloon, 10)
        balloon_log.close()
