"""Faults inside the databases during a purge: the purge's connection killed (PostgreSQL
pg_terminate_backend, MariaDB KILL CONNECTION), and the target table altered under a run (a column
dropped, the table renamed, rows updated so they no longer expire). Each run retries, fails or
finishes cleanly; after the next `apply` the ledger verifies and counts exactly what went, and nothing
held or unexpired was touched."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.configs import lab_results_rule, lims_store, patient_hold, write_config
from tests.fault_support import (
    SEED,
    Killer,
    apply_in_process,
    check,
    cli,
    counted,
    record,
    verify_in_process,
)

ROWS = 20_000
HELD = 8
TRIALS = 4
ENV = {"RETENTIOND_DAEMON__BATCH_BUDGET_MS": "5"}
pytestmark = pytest.mark.slow


def _body(url: str) -> str:
    return lims_store(url) + lab_results_rule(max_fraction=1.0) + patient_hold(HELD)


def _fill(engine: Any, pg: bool) -> None:
    old = "now() - interval '90 day'" if pg else "now() - interval 90 day"
    new = "now() - interval '3 day'" if pg else "now() - interval 3 day"
    series = (
        f"SELECT i FROM generate_series(1, {ROWS}) i"
        if pg
        else f"SELECT seq AS i FROM seq_1_to_{ROWS}"
    )
    ts = "timestamptz" if pg else "datetime"
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS results"))
        conn.execute(text("DROP TABLE IF EXISTS results_moved"))
        conn.execute(
            text(
                f"CREATE TABLE results (id int PRIMARY KEY, patient_id int, "
                f"validated_at {ts} NOT NULL, comment varchar(20))"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO results SELECT i, i % 50, CASE WHEN i % 2 = 0 THEN {old} ELSE {new} "
                f"END, 'note' FROM ({series}) s"
            )
        )


def _count(engine: Any, query: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(query)).scalar_one())


def _setup(tmp_path: Path, url: str) -> tuple[Path, str, Any, bool]:
    state = f"sqlite:///{tmp_path / 's.db'}"
    config = write_config(tmp_path / "etc", _body(url), state_url=state)
    pg = url.startswith("postgresql")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    _fill(engine, pg)
    assert cli(config, "init").returncode == 0
    return config, state, engine, pg


def _trial(
    name: str,
    config: Path,
    state: str,
    killer: Killer,
    fault: Callable[[], None],
    gone: Callable[[], int],
    protected: Callable[[], bool],
) -> None:
    """One run with `fault` injected mid-run, then `apply` again; the invariants."""
    before = counted(state, "lab-results")
    child = killer.start()
    killer.wait_started(child)
    time.sleep(killer.rng.uniform(0, (killer.run_seconds or 0.2) * 0.7))
    fault()
    record(name, faults=1, trials=1)
    child.wait(timeout=120)
    check(name, child.returncode in (0, 1, 4), (name, "exit", child.returncode))
    apply_in_process(config)
    check(name, verify_in_process(config) == 0, (name, "ledger verify failed"))
    after = counted(state, "lab-results")
    check(name, after - before == gone(), (name, "ledger", after - before, "gone", gone()))
    check(name, protected(), (name, fault.__name__, "held or young rows touched"))


def _held_and_young(engine: Any, table: str = "results") -> bool:
    young = _count(engine, f"SELECT count(*) FROM {table} WHERE id % 2 = 1")
    held = _count(engine, f"SELECT count(*) FROM {table} WHERE id % 50 = {HELD}")
    return young == ROWS // 2 and held == ROWS // 50


def _terminate(engine: Any, pg: bool, database: str) -> Callable[[], None]:
    def fault() -> None:
        with engine.connect() as conn:
            if pg:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "application_name = 'retentiond' AND datname = :d"
                    ),
                    {"d": database},
                )
                return
            ids = conn.execute(
                text(
                    "SELECT id FROM information_schema.processlist WHERE db = :d "
                    "AND id <> connection_id()"
                ),
                {"d": database},
            ).all()
            for (pid,) in ids:
                # The connection may have ended on its own meanwhile.
                with contextlib.suppress(Exception):
                    conn.execute(text(f"KILL CONNECTION {int(pid)}"))

    return fault


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_the_purge_connection_killed_mid_run(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    url = str(request.getfixturevalue("pg_database" if kind == "postgres" else "mysql_database"))
    config, state, engine, pg = _setup(tmp_path, url)
    killer = Killer(config, state, ENV, random.Random(f"{SEED}-conn-{kind}"))
    killer.calibrate()
    name = f"connection killed ({kind})"
    database = str(make_url(url).database)
    for _ in range(TRIALS):
        _fill(engine, pg)
        _trial(
            name,
            config,
            state,
            killer,
            _terminate(engine, pg, database),
            lambda: ROWS - _count(engine, "SELECT count(*) FROM results"),
            lambda: _held_and_young(engine),
        )
    engine.dispose()


def test_the_target_table_altered_mid_run(tmp_path: Path, pg_database: str) -> None:
    config, state, engine, pg = _setup(tmp_path, pg_database)
    killer = Killer(config, state, ENV, random.Random(f"{SEED}-alter"))
    killer.calibrate()
    name = "table altered"
    where = {"table": "results"}

    def rows_now() -> int:
        return _count(engine, f"SELECT count(*) FROM {where['table']}")

    def rename() -> None:
        with engine.connect() as conn:
            conn.execute(text("ALTER TABLE results RENAME TO results_moved"))
        where["table"] = "results_moved"

    def drop_column() -> None:
        with engine.connect() as conn:
            conn.execute(text("ALTER TABLE results DROP COLUMN comment"))

    made_young = {"rows": 0}

    def no_longer_expire() -> None:
        with engine.connect() as conn:
            updated = conn.execute(
                text("UPDATE results SET validated_at = now() WHERE id > :n RETURNING id"),
                {"n": ROWS // 2},
            ).all()
        made_young["rows"] = len(updated)

    def young_survive() -> bool:
        # Every row made young while the run went on (and still there then) must survive.
        left = _count(engine, f"SELECT count(*) FROM results WHERE id > {ROWS // 2}")
        return left == made_young["rows"] and _held_and_young(engine)

    for fault in (rename, drop_column, no_longer_expire) * 2:
        _fill(engine, pg)
        where["table"] = "results"
        protected: Callable[[], bool] = (
            young_survive
            if fault is no_longer_expire
            else (lambda: _held_and_young(engine, where["table"]))
        )
        _trial(name, config, state, killer, fault, lambda: ROWS - rows_now(), protected)
    engine.dispose()
