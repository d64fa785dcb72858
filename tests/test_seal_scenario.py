"""End to end: a real pg_dump through seal and unseal, and the whole life of a sealed copy."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from retentiond.state.models import ledger_entry, sealed_copy
from tests.configs import write_config
from tests.seal_support import ROOT, Workspace, make_workspace

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        if IN_CI:
            pytest.fail(f"missing commands under CI: {missing}")
        pytest.skip(f"missing commands: {missing}")


def _libpq(url: str) -> str:
    """A libpq URL (what pg_dump and psql take) from a SQLAlchemy one."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _bash(script: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail; " + script],
        capture_output=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_pg_dump_through_seal_and_unseal_into_psql(
    pg_database: str, pg_url: str, tmp_path: Path
) -> None:
    _require("pg_dump", "psql")
    source = sa.create_engine(pg_database)
    with source.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE results (id serial PRIMARY KEY, patient text, v numeric)")
        )
        conn.execute(
            sa.text(
                "INSERT INTO results (patient, v) "
                "SELECT 'patient-' || g, g * 1.5 FROM generate_series(1, 20000) g"
            )
        )
    source.dispose()
    ws = make_workspace(tmp_path / "ws")
    out = tmp_path / "out"
    out.mkdir()
    python = f"{sys.executable} -m retentiond"
    sealed = _bash(
        f"pg_dump --no-owner '{_libpq(pg_database)}' | {python} -c {ws.config} seal - "
        f"-o {out / 'lims.age'} --expires 30d"
    )
    assert sealed.returncode == 0, sealed.stderr.decode()
    assert [p.name for p in out.iterdir()] == ["lims.age"]  # no plaintext beside it
    assert b"patient-19999" not in (out / "lims.age").read_bytes()

    restored = f"rt_{secrets.token_hex(6)}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{restored}"'))
    try:
        target = make_url(pg_url).set(database=restored).render_as_string(hide_password=False)
        loaded = _bash(
            f"{python} -c {ws.config} unseal {out / 'lims.age'} -o - "
            f"| psql -q -v ON_ERROR_STOP=1 '{_libpq(target)}' >/dev/null"
        )
        assert loaded.returncode == 0, loaded.stderr.decode()
        check = sa.create_engine(target)
        with check.connect() as conn:
            count, total = conn.execute(sa.text("SELECT count(*), sum(v) FROM results")).one()
            last = conn.execute(sa.text("SELECT patient FROM results WHERE id = 20000")).scalar()
        check.dispose()
        assert (count, float(total), last) == (20000, 1.5 * 20000 * 20001 / 2, "patient-20000")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)'))
        admin.dispose()
        ws.engine.dispose()


def _shred_entries(ws: Workspace) -> list[dict[str, object]]:
    with ws.engine.connect() as conn:
        texts = conn.execute(sa.select(ledger_entry.c.entry)).scalars().all()
    return [e for e in map(json.loads, texts) if e["kind"] == "shred"]


def test_the_life_of_a_sealed_copy(tmp_path: Path) -> None:
    """Seal from a pipe, open with `age`, let the deadline pass, shred; then nothing opens it."""
    _require("age")
    ws = make_workspace(tmp_path / "ws")
    try:
        dump = os.urandom(400_000)
        copy, other = tmp_path / "lims.age", tmp_path / "other.age"
        ws.cli("seal", "-", "-o", str(copy), "--expires", "3s", stdin=dump, check=True)
        ws.cli("seal", "-", "-o", str(other), "--expires", "30d", stdin=b"other", check=True)
        ws.cli("unseal", str(copy), "--export-identity", "-o", str(tmp_path / "id"), check=True)
        ws.cli("unseal", str(other), "--export-identity", "-o", str(tmp_path / "id2"), check=True)
        opened = subprocess.run(
            ["age", "-d", "-i", str(tmp_path / "id"), str(copy)], capture_output=True, check=True
        )
        assert opened.stdout == dump
        carried_off = tmp_path / "usb-stick.age"
        shutil.copy(copy, carried_off)  # a copy of the ciphertext somewhere the daemon never sees
        backup = tmp_path / "state-backup.db"
        with sqlite3.connect(ws.directory / "state.db") as live, sqlite3.connect(backup) as dst:
            live.backup(dst)

        time.sleep(3.2)
        plan = ws.cli("plan")
        assert plan.returncode == 0 and b"shred" in plan.stdout
        applied = ws.cli("apply")
        assert applied.returncode == 0, applied.stderr

        assert not copy.exists() and other.exists()
        [entry] = _shred_entries(ws)
        assert entry["count"] == 1 and entry["key_exported"] is True
        refused = ws.cli("unseal", str(carried_off), "-o", "-")
        assert refused.returncode == 1
        assert f"ledger entry {entry['seq']}".encode() in refused.stderr
        assert b"by rule sealed-copies" in refused.stderr and refused.stdout == b""
        # The keys that remain (another copy's identity) do not open it.
        other_key = subprocess.run(
            ["age", "-d", "-i", str(tmp_path / "id2"), str(carried_off)], capture_output=True
        )
        assert other_key.returncode != 0 and other_key.stdout == b""
        # Nor does the state database as it was before the shred, with the current key file.
        old = write_config(
            tmp_path / "old", "", state_url=f"sqlite:///{backup}", name="config.toml"
        )
        text = old.read_text().replace(str(tmp_path / "old" / "kek"), str(ws.kek_file))
        old.write_text(text)
        with sqlite3.connect(backup) as conn:
            assert conn.execute("SELECT wrapped_identity IS NOT NULL FROM sealed_copy").fetchall()
        stale = Workspace(tmp_path / "old", old, ws.engine, ws.kek_file).cli(
            "unseal", str(carried_off), "-o", "-"
        )
        assert stale.returncode == 1 and stale.stdout == b""
        assert b"restored from an older copy" in stale.stderr
        verified = ws.cli("ledger", "verify")
        assert verified.returncode == 0, verified.stderr
        with ws.engine.connect() as conn:
            row = conn.execute(sa.select(sealed_copy).where(sealed_copy.c.path == str(copy))).one()
        assert row.wrapped_identity is None and row.shred_seq == entry["seq"]
    finally:
        ws.engine.dispose()
