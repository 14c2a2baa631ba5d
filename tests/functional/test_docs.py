"""The man pages in docs/man are what scripts/gen-man.sh makes from the
binaries' --help: regenerate them into a temporary directory and compare."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_man_pages_match_binaries():
    bin_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    missing = [n for n in ("vhost-balloon", "dmmctl") if not (bin_dir / n).is_file()]
    required = os.environ.get("DMM_REQUIRE_FUNCTIONAL") == "1"
    if missing:
        reason = f"{', '.join(missing)} not built in {bin_dir} (cargo build --release -p vhost-balloon -p dmm-core)"
        pytest.fail(reason) if required else pytest.skip(reason)
    if shutil.which("help2man") is None and os.geteuid() != 0:
        reason = "help2man not installed (apt-get install help2man)"
        pytest.fail(reason) if required else pytest.skip(reason)
    # gen-man.sh installs help2man itself when it can (root).
    res = subprocess.run(
        [ROOT / "scripts" / "gen-man.sh", "--check", bin_dir],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, f"man pages drifted:\n{res.stdout}\n{res.stderr}"
    for name in ("vhost-balloon", "dmmctl"):
        page = (ROOT / "docs" / "man" / f"{name}.1").read_text()
        assert ".SH SYNOPSIS" in page and ".SH \"SEE ALSO\"" in page, name


def test_no_merge_conflict_markers():
    """A merge left unresolved must not land (README.md once held one)."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    markers = (b"<<<<<<< ", b">>>>>>> ")
    bad = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        if not path.is_file() or path.suffix in (".patch",):
            continue
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if line.startswith(markers):
                bad.append(f"{name.decode()}:{n}")
    assert not bad, f"merge conflict markers in {bad}"
