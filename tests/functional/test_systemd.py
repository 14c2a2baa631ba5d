"""The systemd unit contrib/systemd/vhost-balloon@.service.

`systemd-analyze verify` and `security --offline` on the unit (with ExecStart
pointing at the built binary), its ExecStart flags against the binary's
--help, and, where systemd is not PID 1 (containers, CI), the binary run by
hand under the sandbox constraints that can be reproduced without systemd.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "vhost-balloon@.service"
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


def test_unit_verifies_without_warnings(unit_copy):
    need_tool("systemd-analyze")
    # An instance name, so that %i expands as it will for a VM.
    res = analyze(unit_copy, "verify", str(unit_copy / "vhost-balloon@vm1.service"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr


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
