"""deploy/retentiond.service: hardened enough for `systemd-analyze security`, clean for `verify`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "retentiond.service"


@pytest.fixture(autouse=True)
def _systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        message = "systemd-analyze is not installed (apt-get install systemd)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI=true: .ci/run installs it)")
        pytest.skip(message)


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_exposure_is_at_most_2() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for retentiond\.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0


def test_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart= exists: lay out a root holding the unit, the system units it
    # refers to, and a stand-in for the installed /usr/bin/retentiond.
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").symlink_to("usr/bin")
    stand_in = root / "usr/bin/retentiond"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    shutil.copy("/bin/kill", root / "usr/bin/kill")
    installed = root / "etc/systemd/system/retentiond.service"
    shutil.copy(UNIT, installed)
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", str(installed)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""


def test_the_unit_has_what_the_daemon_relies_on() -> None:
    unit = _directives()
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == ["/usr/bin/retentiond run"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(unit["WatchdogSec"][0]) >= 30
    assert unit["StateDirectory"] == ["retentiond"]
    assert unit["LogsDirectory"] == ["retentiond"]
    assert any(v.startswith("lims-password:") for v in unit["LoadCredential"])
    for key in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert key in unit, key
    assert unit["ProtectSystem"] == ["strict"]
    # The stop timeout leaves room for the daemon's own grace period for the current batch.
    from retentiond.daemon import STOP_GRACE

    assert int(unit["TimeoutStopSec"][0].rstrip("s")) > STOP_GRACE
