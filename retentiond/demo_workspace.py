"""Build the demo's throwaway workspace: a SQLite lab database, a transfer folder, and a config.

All data is generated and fake. Dates are relative to now so the demo shows the same picture any day.
"""

from __future__ import annotations

import os
import random
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

FIRST_NAMES = [
    "Alice",
    "Bruno",
    "Chloé",
    "David",
    "Emma",
    "Farid",
    "Gaëlle",
    "Hugo",
    "Inès",
    "Jules",
]
LAST_NAMES = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand"]
HELD_PATIENTS = (1001, 1002)  # a court case keeps their results
YEARS_OF_RESULTS = 15


@dataclass(frozen=True)
class Workspace:
    """Where the demo's pieces are."""

    root: Path
    database: Path
    transfer: Path
    config: Path
    state_dir: Path


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def build_database(path: Path, now: datetime, rng: random.Random) -> None:
    """A lab database: patients, results over 15 years, comments on results, a migration copy."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        PRAGMA foreign_keys = ON;
        CREATE TABLE patients (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, phone TEXT, email TEXT,
            last_visit TIMESTAMP NOT NULL);
        CREATE TABLE results (
            id INTEGER PRIMARY KEY, patient_id INTEGER NOT NULL REFERENCES patients(id),
            test TEXT NOT NULL, value REAL NOT NULL, validated_at TIMESTAMP NOT NULL);
        CREATE INDEX results_validated_at ON results(validated_at);
        CREATE INDEX results_patient ON results(patient_id);
        CREATE TABLE result_comments (
            id INTEGER PRIMARY KEY, result_id INTEGER NOT NULL REFERENCES results(id),
            comment TEXT NOT NULL);
        CREATE TABLE export_v4 (id INTEGER PRIMARY KEY, patient_id INTEGER, payload TEXT);
        """
    )
    patients = []
    for pid in range(1000, 1400):
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        visit = now - timedelta(days=rng.randint(0, 6 * 365))
        patients.append(
            (
                pid,
                name,
                f"+33 6 {rng.randint(10_000_000, 99_999_999)}",
                f"{name.split()[0].lower()}.{pid}@example.org",
                _timestamp(visit),
            )
        )
    conn.executemany("INSERT INTO patients VALUES (?, ?, ?, ?, ?)", patients)
    results = []
    for rid in range(1, 12_001):
        validated = now - timedelta(days=rng.uniform(0, YEARS_OF_RESULTS * 365.25))
        pid = rng.randrange(1000, 1400)
        results.append(
            (
                rid,
                pid,
                rng.choice(["HbA1c", "CRP", "TSH", "Ferritin"]),
                round(rng.uniform(0.1, 12.0), 2),
                _timestamp(validated),
            )
        )
    conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?)", results)
    comments = [(i, rng.randrange(1, 12_001), "checked twice") for i in range(1, 2_001)]
    conn.executemany("INSERT INTO result_comments VALUES (?, ?, ?)", comments)
    conn.executemany(
        "INSERT INTO export_v4 VALUES (?, ?, ?)",
        [(i, rng.randrange(1000, 1400), "migrated record") for i in range(1, 3_001)],
    )
    conn.commit()
    conn.close()


def _touch(path: Path, age: timedelta, now: datetime, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    moment = (now - age).timestamp()
    os.utime(path, (moment, moment))


def build_transfer(root: Path, now: datetime, rng: random.Random) -> None:
    """A transfer folder: CSV exports of many ages, an inspection folder, a migration copy folder."""
    for day in range(0, 40):
        for site in ("north", "south"):
            rows = "".join(f"{rng.randrange(1000, 1400)},{rng.random():.3f}\n" for _ in range(50))
            _touch(
                root / site / f"export-{site}-day{day:02}.csv",
                timedelta(days=day, hours=1),
                now,
                b"patient_id,value\n" + rows.encode(),
            )
    for day in (20, 25, 30):
        _touch(
            root / "audit-2026" / f"inspection-{day}.csv",
            timedelta(days=day),
            now,
            b"patient_id,value\n1001,0.5\n",
        )
    _touch(root / "north" / "README.txt", timedelta(days=90), now, b"exports from the old LIMS\n")
    for i in range(5):
        _touch(
            root / "migration-2026" / f"chunk-{i}.sql",
            timedelta(days=45),
            now,
            b"INSERT INTO results VALUES (...);\n" * 200,
        )


def write_config(ws: Workspace, now: datetime) -> None:
    """A config that uses every kind of rule and a hold."""
    copy_made = (now - timedelta(days=45)).date().isoformat()
    ws.config.write_text(
        f"""# retentiond demo configuration (generated; every value is fake)
[daemon]
state_url = "sqlite:///{ws.state_dir / "state.db"}"
schedule = "every 1h"

[ledger]
origin = "demo.example.org/retentiond"
signing_key_file = "{ws.state_dir / "ledger.key"}"

[keys]
kek_file = "{ws.state_dir / "kek"}"

[metrics]
listen = "127.0.0.1:9464"

[stores.lab]
kind = "sql"
url = "sqlite:///{ws.database}"

[stores.transfer]
kind = "files"
root = "{ws.transfer}"

[[rules]]
name = "lab-results"
store = "lab"
table = "results"
age_column = "validated_at"
retain = "10y"
action = "delete"
cascade = ["result_comments"]
legal_basis = "public health code: results kept 10 years"

[[rules]]
name = "contact-minimisation"
store = "lab"
table = "patients"
age_column = "last_visit"
retain = "3y"
action = "mask"
columns = ["phone", "email"]

[[rules]]
name = "migration-staging"
store = "lab"
table = "export_v4"
since = {copy_made}
retain = "30d"
action = "drop"

[[rules]]
name = "transfer-exports"
store = "transfer"
glob = "**/*.csv"
retain = "7d"
action = "delete"
prune_empty_dirs = true
max_fraction = 0.9       # a transfer folder is mostly old exports: allow up to 90% per run

[[rules]]
name = "migration-folder"
store = "transfer"
path = "migration-2026"
since = {copy_made}
retain = "30d"
action = "drop"

[[rules]]
name = "sealed-copies"
action = "shred"

[[holds]]
rule = "lab-results"
where = {{ patient_id = [{", ".join(str(p) for p in HELD_PATIENTS)}] }}
reason = "court case 2026-117"

[[holds]]
rule = "transfer-exports"
path = "audit-2026/"
reason = "inspection in progress"
"""
    )
    os.chmod(ws.config, 0o600)


def build_workspace(root: Path, seed: int = 2021) -> Workspace:
    """Create every piece of the demo under `root` (which must be empty or absent)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    ws = Workspace(
        root=root,
        database=root / "lab.db",
        transfer=root / "transfer",
        config=root / "config.toml",
        state_dir=root / "state",
    )
    now = datetime.now(UTC)
    rng = random.Random(seed)
    build_database(ws.database, now, rng)
    build_transfer(ws.transfer, now, rng)
    write_config(ws, now)
    return ws
