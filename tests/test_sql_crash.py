"""kill -9 at random moments of a purge: the ledger stays valid and counts every vanished row.

Each trial fills the table, starts `retentiond apply`, kills it with SIGKILL at a random moment
after its run began, then runs `apply` again (which reconciles the interrupted run and finishes the
purge). After each trial the rows that disappeared are exactly the expired, unheld ones, and the
ledger's purge entries of that trial add up to exactly that number. Three state databases: SQLite
(write-ahead batches), PostgreSQL in another database (write-ahead) and PostgreSQL in the target
database itself (each batch recorded in the purge's own transaction).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.configs import lab_results_rule, lims_store, patient_hold, write_config
from tests.conftest import run_cli

TRIALS = 9  # the first one calibrates and is not killed
ROWS = 30_000
HELD = 8  # even, like the ids of expired rows: the hold must cover expired rows

pytestmark = pytest.mark.slow


def _body(target_url: str) -> str:
    return (
        lims_store(target_url)
        + lab_results_rule(table="public.results", max_fraction=1.0)
        + patient_hold(HELD)
    )


def _env() -> dict[str, str]:
    return {"RETENTIOND_DAEMON__BATCH_BUDGET_MS": "5"}


def _fill(engine: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS results (id bigint PRIMARY KEY, patient_id int, "
                "validated_at timestamptz NOT NULL, value text)"
            )
        )
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_results_patient ON results (patient_id)"))
        conn.execute(text("TRUNCATE results"))
        conn.execute(
            text(
                "INSERT INTO results SELECT i, i % 50, now() - (CASE WHEN i % 2 = 0 "
                "THEN 90 ELSE 3 END) * interval '1 day', 'v' FROM generate_series(1, :n) i"
            ),
            {"n": ROWS},
        )
        # A table no rule names: nothing may ever touch it.
        conn.execute(text("CREATE TABLE IF NOT EXISTS other (id int PRIMARY KEY, t timestamptz)"))
        conn.execute(text("TRUNCATE other"))
        conn.execute(
            text(
                "INSERT INTO other SELECT i, now() - interval '5 years' FROM generate_series(1, 100) i"
            )
        )


def _expected_gone() -> int:
    return sum(1 for i in range(1, ROWS + 1) if i % 2 == 0 and i % 50 != HELD)


def _running(state: Any) -> bool:
    try:
        with state.connect() as conn:
            return bool(
                conn.execute(text("SELECT count(*) FROM run WHERE status = 'running'")).scalar()
            )
    except Exception:  # the table may not be readable yet
        return False


def _purge_counts(state: Any) -> dict[str, int]:
    with state.connect() as conn:
        entries = [json.loads(e) for (e,) in conn.execute(text("SELECT entry FROM ledger_entry"))]
    return {e["run_id"]: e["count"] for e in entries if e.get("kind") == "purge"}


def _trials(tmp_path: Path, target_url: str, state_url: str) -> None:
    config = write_config(tmp_path, _body(target_url), state_url=state_url)
    init = run_cli("init", "-c", str(config))
    assert init.returncode == 0, init.stderr
    target = create_engine(target_url)
    state = create_engine(state_url)
    rng = random.Random(int(os.environ.get("RETENTIOND_TEST_SEED", "4021")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTIOND_")} | _env()
    killed_mid_run = 0
    run_seconds = 0.5
    for trial in range(TRIALS):
        _fill(target)
        seen = set(_purge_counts(state))
        child = subprocess.Popen(
            [sys.executable, "-m", "retentiond", "-c", str(config), "apply"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not _running(state) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        started = time.monotonic()
        if trial == 0:
            # Calibration: this first run goes to its end, so later kills land inside a run.
            child.wait()
            run_seconds = max(0.05, time.monotonic() - started)
        time.sleep(rng.uniform(0, run_seconds))
        if child.poll() is None:
            killed_mid_run += 1
            os.kill(child.pid, signal.SIGKILL)
        child.wait()

        again = run_cli("-c", str(config), "apply", env=_env())
        assert again.returncode == 0, (trial, again.stdout, again.stderr)
        with target.connect() as conn:
            left: int = conn.execute(text("SELECT count(*) FROM results")).scalar_one()
            kept: int = conn.execute(
                text("SELECT count(*) FROM results WHERE id % 2 = 1 OR patient_id = :h"),
                {"h": HELD},
            ).scalar_one()
            other: int = conn.execute(text("SELECT count(*) FROM other")).scalar_one()
        counts = {r: c for r, c in _purge_counts(state).items() if r not in seen}
        assert ROWS - left == _expected_gone(), trial
        assert kept == left and other == 100, trial
        assert sum(counts.values()) == ROWS - left, (trial, counts)
    assert killed_mid_run >= TRIALS // 2, killed_mid_run
    verify = run_cli("-c", str(config), "ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    target.dispose()
    state.dispose()


def test_kill_9_with_a_sqlite_state_database(tmp_path: Path, pg_database: str) -> None:
    _trials(tmp_path, pg_database, f"sqlite:///{tmp_path / 'state.db'}")


def test_kill_9_with_a_postgres_state_database(tmp_path: Path, pg_database: str) -> None:
    admin = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    state_db = f"{make_url(pg_database).database}_state"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{state_db}"'))
    state_url = make_url(pg_database).set(database=state_db).render_as_string(hide_password=False)
    try:
        _trials(tmp_path, pg_database, state_url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{state_db}" WITH (FORCE)'))
        admin.dispose()


def test_kill_9_with_the_state_in_the_target_database(tmp_path: Path, pg_database: str) -> None:
    _trials(tmp_path, pg_database, pg_database)
