"""`retentiond init` on SQLite and on PostgreSQL: creates, then changes nothing the second time."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect

from retentiond.state.db import head_revision
from tests.configs import write_config
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _schema(url: str) -> dict[str, list[tuple[str, str]]]:
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        return {
            t: sorted((c["name"], str(c["type"])) for c in insp.get_columns(t))
            for t in sorted(insp.get_table_names())
        }
    finally:
        engine.dispose()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _init_twice(tmp_path: Path, state_url: str) -> None:
    config = write_config(tmp_path, "", state_url=state_url)
    first = run_cli("init", "-c", str(config))
    assert first.returncode == 0, first.stderr
    assert "created at revision" in first.stdout
    key, kek = tmp_path / "ledger.key", tmp_path / "kek"
    assert _mode(key) == 0o600 and _mode(kek) == 0o600
    key_bytes, kek_bytes = key.read_bytes(), kek.read_bytes()
    schema = _schema(state_url)
    assert {"ledger_entry", "hold", "sealed_copy", "rule_state", "alembic_version"} <= set(schema)

    second = run_cli("init", "-c", str(config))
    assert second.returncode == 0, second.stderr
    assert f"already at revision {head_revision()}" in second.stdout
    assert "exists, kept" in second.stdout
    assert key.read_bytes() == key_bytes and kek.read_bytes() == kek_bytes
    assert _schema(state_url) == schema

    # Alembic run by hand agrees: the database is at head.
    current = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"state_url={state_url}", "current"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{head_revision()} (head)" in current.stdout


def test_init_on_sqlite_twice(tmp_path: Path) -> None:
    state = tmp_path / "state" / "state.db"
    _init_twice(tmp_path, f"sqlite:///{state}")
    assert _mode(state) == 0o600


def test_init_on_postgresql_twice(tmp_path: Path, pg_database: str) -> None:
    _init_twice(tmp_path, pg_database)


def test_schema_revision_constant_is_the_migrations_head() -> None:
    from retentiond.state.db import SCHEMA_REVISION

    assert head_revision() == SCHEMA_REVISION, "bump SCHEMA_REVISION with each new migration"


def test_commands_before_init_say_what_to_do(tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    result = run_cli("status", "-c", str(config))
    assert result.returncode == 1
    assert "retentiond init" in result.stderr


def test_loose_key_file_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, "")
    assert run_cli("init", "-c", str(config)).returncode == 0
    os.chmod(tmp_path / "ledger.key", 0o644)
    result = run_cli("init", "-c", str(config))
    assert result.returncode == 1
    assert "ledger.signing_key_file" in result.stderr
