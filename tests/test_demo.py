"""The demo runs the real engine on its workspace, and what it reports is what is there afterwards."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from tests.conftest import run_cli


def test_demo_report_matches_the_workspace_and_keys_can_be_proven(tmp_path: Path) -> None:
    workspace = tmp_path / "demo"
    result = run_cli("demo", "--dir", str(workspace), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("init", "check --connect", "plan", "apply", "ledger verify"):
        assert f"==> retentiond {step}" in out

    lab = sqlite3.connect(workspace / "lab.db")
    results_left = lab.execute("SELECT count(*) FROM results").fetchone()[0]
    masked = [r[0] for r in lab.execute("SELECT id FROM patients WHERE phone IS NULL")]
    tables = {r[0] for r in lab.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    lab.close()
    match = re.search(r"lab results: (\d+) -> (\d+)", out)
    assert match and int(match.group(2)) == results_left < int(match.group(1))
    assert f"patients with contact details masked: {len(masked)}" in out and masked
    assert "export_v4" not in tables and "staging copy export_v4: dropped" in out
    assert not (workspace / "transfer" / "migration-2026").exists()
    assert not (workspace / "lab-dump-2026-11.age").exists()
    assert (workspace / "lab-dump-archive.age").exists()
    assert "was shredded at" in out and "usb-stick-copy.age: cannot be opened" in out
    held = sorted(p.name for p in (workspace / "transfer" / "audit-2026").iterdir())
    assert held == ["inspection-20.csv", "inspection-25.csv", "inspection-30.csv"]

    config = str(workspace / "config.toml")
    assert run_cli("-c", config, "ledger", "verify").returncode == 0
    entries = [
        json.loads(line)
        for line in run_cli("-c", config, "ledger", "show", "--json").stdout.splitlines()
    ]
    mask = next(e for e in entries if e.get("rule") == "contact-minimisation")
    assert mask["count"] == len(masked)

    keys = tmp_path / "masked.txt"
    keys.write_text("".join(f"{k}\n" for k in masked))
    proven = run_cli("-c", config, "ledger", "check-keys", str(mask["seq"]), str(keys))
    assert proven.returncode == 0, proven.stderr
    assert "MATCH" in proven.stdout
    keys.write_text("".join(f"{k}\n" for k in masked[:-1]))
    wrong = run_cli("-c", config, "ledger", "check-keys", str(mask["seq"]), str(keys))
    assert wrong.returncode == 3
