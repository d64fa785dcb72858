"""The ledger and its export carry no personal value of the data the daemon deleted or kept."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
from pathlib import Path

from tests.configs import write_config
from tests.conftest import run_cli

# Personal values seeded in the test data: distinctive enough never to appear by chance in a hash.
PATIENT_IDS = [987650000 + i for i in range(40)]
NAMES = [f"Jeanne Dupont-Lefèvre {i:02d}" for i in range(40)]
FILE_NAMES = [f"Dupont_Jeanne_{pid}.csv" for pid in PATIENT_IDS[:6]]
HELD_ID = PATIENT_IDS[3]
LABEL = "copie pour Mme Lefèvre"


def seed(directory: Path) -> tuple[Path, Path]:
    """A lab database of patients' results, half of them expired, and a transfer folder."""
    lab = directory / "lab.db"
    with sqlite3.connect(lab) as conn:
        conn.execute(
            "CREATE TABLE results (id INTEGER PRIMARY KEY, patient_id INTEGER, patient_name TEXT,"
            " validated_at TIMESTAMP)"
        )
        conn.executemany(
            "INSERT INTO results VALUES (?, ?, ?, ?)",
            [
                (i + 1, pid, name, "2012-01-01 00:00:00" if i % 2 else "2026-01-01 00:00:00")
                for i, (pid, name) in enumerate(zip(PATIENT_IDS, NAMES, strict=True))
            ],
        )
    transfer = directory / "transfer" / "exports"
    transfer.mkdir(parents=True)
    month_ago = time.time() - 30 * 86400
    for name in FILE_NAMES:
        path = transfer / name
        path.write_text("patient_id;name\n")
        os.utime(path, (month_ago, month_ago))
    return lab, transfer.parent


def personal_values() -> list[str]:
    values = [str(pid) for pid in PATIENT_IDS] + NAMES + FILE_NAMES + [LABEL]
    values += ["Dupont", "Lefèvre", "Lef\\u00e8vre", "Dupont_Jeanne", "Jeanne"]
    return values


def test_no_seeded_personal_value_reaches_the_ledger_or_its_export(tmp_path: Path) -> None:
    lab, transfer = seed(tmp_path)
    config = write_config(
        tmp_path,
        f"""
[stores.lab]
kind = "sql"
url = "sqlite:///{lab}"

[stores.transfer]
kind = "files"
root = "{transfer}"

[[rules]]
name = "lab-results"
store = "lab"
table = "results"
age_column = "validated_at"
retain = "5y"
action = "delete"
max_fraction = 1.0

[[rules]]
name = "transfer-exports"
store = "transfer"
glob = "**/*.csv"
retain = "7d"
action = "delete"
max_fraction = 1.0
""",
    )
    cfg = ["--config", str(config)]
    assert run_cli(*cfg, "init").returncode == 0
    hold = run_cli(
        *cfg,
        "hold",
        "add",
        "--rule",
        "lab-results",
        "--where",
        f"patient_id={HELD_ID}",
        "--reason",
        "court case 2026-117",
    )
    assert hold.returncode == 0, hold.stderr
    applied = run_cli(*cfg, "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    dump = tmp_path / "dump.sql"
    dump.write_text("\n".join(NAMES))
    sealed = run_cli(
        *cfg,
        "seal",
        "-o",
        str(tmp_path / "dump.age"),
        "--expires",
        "1d",
        "--label",
        LABEL,
        str(dump),
    )
    assert sealed.returncode == 0, sealed.stderr
    exported = run_cli(*cfg, "unseal", str(tmp_path / "dump.age"), "--export-identity")
    assert exported.returncode == 0, exported.stderr

    # What the user sees: expired rows are gone, except the held one.
    with sqlite3.connect(lab) as conn:
        left = {row[0] for row in conn.execute("SELECT patient_id FROM results")}
    expired = {pid for i, pid in enumerate(PATIENT_IDS) if i % 2}
    assert left == (set(PATIENT_IDS) - expired) | {HELD_ID}
    assert not list(transfer.rglob("*.csv"))

    shown = run_cli(*cfg, "ledger", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    entries = [json.loads(line) for line in shown.stdout.splitlines()]
    kinds = [e["kind"] for e in entries]
    assert "hold" in kinds and "purge" in kinds and "config" in kinds
    purge = next(e for e in entries if e["kind"] == "purge" and e["rule"] == "lab-results")
    assert purge["count"] == len(expired) - 1
    assert purge["digest"].startswith("hmac-sha256-sum:")
    files = next(e for e in entries if e["kind"] == "purge" and e["rule"] == "transfer-exports")
    assert files["count"] == len(FILE_NAMES)
    assert run_cli(*cfg, "ledger", "export", str(tmp_path / "audit")).returncode == 0
    assert run_cli(*cfg, "ledger", "proof", "0", "-o", str(tmp_path / "p.proof")).returncode == 0

    texts = {
        "ledger show --json": shown.stdout,
        "ledger show": run_cli(*cfg, "ledger", "show").stdout,
    }
    for path in [*sorted((tmp_path / "audit").iterdir()), tmp_path / "p.proof"]:
        texts[str(path)] = path.read_text(encoding="utf-8")
    extra = texts[str(tmp_path / "p.proof")].split("\n")[1].removeprefix("extra ")
    texts["proof extra, decoded"] = base64.b64decode(extra).decode("utf-8")
    for where, text in texts.items():
        found = [value for value in personal_values() if value in text]
        assert not found, f"{where} contains {found}"
