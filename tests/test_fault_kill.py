"""kill -9 of `retentiond apply` at random moments of every kind of run, then `apply` again.

Kinds: rows deleted on PostgreSQL, columns masked, partitions dropped, table copies dropped, files
deleted, sealed copies shredded. Each kind first runs once to its end to measure a run; then each
trial refills the target, starts `retentiond apply` as a real process, kills it with SIGKILL at a
moment drawn uniformly over that measured run, and runs `apply` again (which reconciles the
interrupted run and finishes the work). After every trial: the ledger verifies; the ledger counts of
the trial add up to exactly what disappeared (counted directly in the table, the folder or the
keystore); nothing held, unexpired or outside the rules was touched.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dateutil.relativedelta import relativedelta
from sqlalchemy import create_engine, text

from tests.configs import write_config
from tests.fault_support import (
    SEED,
    Killer,
    KillStats,
    apply_in_process,
    check,
    cli,
    counted,
    record,
    verify_in_process,
)
from tests.files_support import seed

TRIALS = int(os.environ.get("RETENTIOND_TEST_KILL_TRIALS", "17"))  # per kind; six kinds
HELD = 8  # an even patient id: some of its rows are expired
LONG_AGO = (date.today() - timedelta(days=400)).isoformat()
ENV = {"RETENTIOND_DAEMON__BATCH_BUDGET_MS": "5"}

pytestmark = pytest.mark.slow


@dataclass
class Kind:
    """One kind of run: its config body, how to refill its data, and what to count."""

    body: str
    refill: Callable[[], None]
    gone: Callable[[], int]  # items that disappeared since the last refill
    protected: Callable[[], bool]  # held, unexpired and unrelated data all intact
    rules: tuple[str, ...]


def _sql(engine: Any, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def _scalar(engine: Any, query: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(query)).scalar_one())


ROWS = 12_000
_OTHER = (
    "CREATE TABLE IF NOT EXISTS other (id int PRIMARY KEY, t timestamptz, note text)",
    "TRUNCATE other",
    "INSERT INTO other SELECT i, now() - interval '5 years', 'x' FROM generate_series(1, 100) i",
)


def _rows_table(engine: Any) -> None:
    _sql(
        engine,
        "CREATE TABLE IF NOT EXISTS results (id bigint PRIMARY KEY, patient_id int, "
        "validated_at timestamptz NOT NULL, comment text)",
        "CREATE INDEX IF NOT EXISTS ix_results_patient ON results (patient_id)",
        "TRUNCATE results",
        f"INSERT INTO results SELECT i, i % 50, now() - (CASE WHEN i % 2 = 0 THEN 90 ELSE 3 END) "
        f"* interval '1 day', 'note' FROM generate_series(1, {ROWS}) i",
        *_OTHER,
    )


def _store(url: str) -> str:
    return f'\n[stores.lims]\nkind = "sql"\nurl = "{url}"\n'


def _row_rule(action: str, extra: str = "") -> str:
    return f"""
[[rules]]
name = "lab-{action}"
store = "lims"
table = "public.results"
age_column = "validated_at"
retain = "30d"
action = "{action}"
max_fraction = 1.0
{extra}

[[holds]]
rule = "lab-{action}"
where = {{ patient_id = [{HELD}] }}
reason = "court case 2026-117"
"""


def rows_kind(url: str) -> Kind:
    """Rows deleted in ctid batches."""
    engine = create_engine(url)
    expired_unheld = sum(1 for i in range(1, ROWS + 1) if i % 2 == 0 and i % 50 != HELD)

    def protected() -> bool:
        kept = _scalar(
            engine, f"SELECT count(*) FROM results WHERE id % 2 = 1 OR patient_id = {HELD}"
        )
        return (
            kept == ROWS - expired_unheld and _scalar(engine, "SELECT count(*) FROM other") == 100
        )

    return Kind(
        body=_store(url) + _row_rule("delete"),
        refill=lambda: _rows_table(engine),
        gone=lambda: ROWS - _scalar(engine, "SELECT count(*) FROM results"),
        protected=protected,
        rules=("lab-delete",),
    )


def mask_kind(url: str) -> Kind:
    """Columns of expired rows set to NULL, the rows kept."""
    engine = create_engine(url)

    def protected() -> bool:
        intact = _scalar(
            engine,
            "SELECT count(*) FROM results WHERE (id % 2 = 1 OR patient_id = "
            f"{HELD}) AND comment = 'note'",
        )
        held_or_young = sum(1 for i in range(1, ROWS + 1) if i % 2 == 1 or i % 50 == HELD)
        rows = _scalar(engine, "SELECT count(*) FROM results")
        return intact == held_or_young and rows == ROWS

    return Kind(
        body=_store(url) + _row_rule("mask", 'columns = ["comment"]'),
        refill=lambda: _rows_table(engine),
        gone=lambda: _scalar(engine, "SELECT count(*) FROM results WHERE comment IS NULL"),
        protected=protected,
        rules=("lab-mask",),
    )


MONTHS = 14


def _month(k: int) -> date:
    return date.today().replace(day=1) - relativedelta(months=k)


def partitions_kind(url: str) -> Kind:
    """Monthly partitions: wholly expired ones dropped, the mixed one deleted row by row."""
    engine = create_engine(url)

    def refill() -> None:
        statements = [
            "DROP TABLE IF EXISTS results CASCADE",
            "CREATE TABLE results (id bigint NOT NULL, patient_id int, validated_at timestamptz "
            "NOT NULL, value text, PRIMARY KEY (id, validated_at)) PARTITION BY RANGE "
            "(validated_at)",
        ]
        for k in range(-1, MONTHS):
            lo, hi = _month(k), _month(k - 1)
            statements.append(
                f"CREATE TABLE results_{lo:%Y_%m} PARTITION OF results "
                f"FOR VALUES FROM ('{lo}') TO ('{hi}')"
            )
        statements += [
            "CREATE TABLE results_old PARTITION OF results DEFAULT",
            "INSERT INTO results SELECT row_number() OVER (), p, d, 'v' FROM generate_series("
            "now() - interval '600 days', now(), interval '1 day') d, generate_series(1, 5) p",
            # Held rows (patient HELD) only in one old month: that partition goes row by row.
            f"INSERT INTO results SELECT 100000 + i, {HELD}, now() - interval '300 days', 'h' "
            f"FROM generate_series(1, 3) i",
            *_OTHER,
        ]
        _sql(engine, *statements)

    total = 601 * 5 + 3
    young = 0

    def gone() -> int:
        return total - _scalar(engine, "SELECT count(*) FROM results")

    def protected() -> bool:
        nonlocal young
        young = _scalar(
            engine, "SELECT count(*) FROM results WHERE validated_at > now() - interval '170 days'"
        )
        held = _scalar(engine, f"SELECT count(*) FROM results WHERE patient_id = {HELD}")
        return (
            young >= 169 * 5 and held == 3 and _scalar(engine, "SELECT count(*) FROM other") == 100
        )

    return Kind(
        body=_store(url) + _row_rule("delete").replace("30d", "180d"),
        refill=refill,
        gone=gone,
        protected=protected,
        rules=("lab-delete",),
    )


COPIES = 6


def copies_kind(url: str) -> Kind:
    """Post-migration copies: six due tables dropped, one not yet due kept."""
    engine = create_engine(url)
    body = _store(url) + "".join(
        f"""
[[rules]]
name = "staging-{i}"
store = "lims"
table = "public.export_{i}"
since = "{LONG_AGO if i < COPIES else date.today().isoformat()}"
retain = "30d"
action = "drop"
"""
        for i in range(COPIES + 1)
    )

    def refill() -> None:
        statements = [*_OTHER]
        for i in range(COPIES + 1):
            statements += [
                f"DROP TABLE IF EXISTS export_{i}",
                f"CREATE TABLE export_{i} (id int PRIMARY KEY, name text)",
                f"INSERT INTO export_{i} SELECT g, 'p' || g FROM generate_series(1, {50 + i}) g",
            ]
        _sql(engine, *statements)

    def gone() -> int:
        with engine.connect() as conn:
            present = {
                r[0]
                for r in conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            }
        return sum(50 + i for i in range(COPIES + 1) if f"export_{i}" not in present)

    def protected() -> bool:
        return (
            _scalar(engine, f"SELECT count(*) FROM export_{COPIES}") == 50 + COPIES
            and _scalar(engine, "SELECT count(*) FROM other") == 100
        )

    return Kind(body, refill, gone, protected, tuple(f"staging-{i}" for i in range(COPIES + 1)))


FILES = 600


def files_kind(root: Path) -> Kind:
    """Expired exports deleted; fresh ones, held ones and other extensions kept."""
    body = f"""
[stores.transfer]
kind = "files"
root = "{root}"

[[rules]]
name = "transfer-exports"
store = "transfer"
glob = "**/*.csv"
retain = "7d"
action = "delete"
max_fraction = 1.0

[[holds]]
rule = "transfer-exports"
path = "audit/"
reason = "inspection in progress"
"""
    expired = [f"out/{i // 100}/e{i}.csv" for i in range(FILES)]
    kept = [f"out/young{i}.csv" for i in range(40)] + [f"audit/a{i}.csv" for i in range(40)]
    kept += [f"out/{i}.txt" for i in range(40)]

    def refill() -> None:
        for rel in expired:
            if not (root / rel).exists():
                seed(root, rel, 30)
        for rel in kept:
            if not (root / rel).exists():
                seed(root, rel, 30 if not rel.startswith("out/young") else 1)

    return Kind(
        body=body,
        refill=refill,
        gone=lambda: sum(1 for rel in expired if not (root / rel).exists()),
        protected=lambda: all((root / rel).exists() for rel in kept),
        rules=("transfer-exports",),
    )


SEALED = 30


def shred_kind(directory: Path, state_url: str) -> Kind:
    """Sealed copies past their deadline crypto-erased; unexpired and held ones kept."""
    from retentiond.seal.copy import seal_copy, unseal_copy
    from retentiond.state.db import create_state_engine
    from retentiond.state.models import sealed_copy

    engine = create_state_engine(state_url)
    kek = directory / "etc" / "kek"
    made: dict[str, str] = {}  # copy id -> due, young or held

    def seal_one(path: Path, expires: timedelta) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        copy = seal_copy(
            engine, kek, io.BytesIO(b"dump").readinto, path, datetime.now(UTC) + expires, None
        )
        return copy.id

    def refill() -> None:
        made.clear()
        run = len(list((directory / "copies").glob("r*"))) if (directory / "copies").exists() else 0
        base = directory / "copies" / f"r{run}"
        for i in range(SEALED):
            made[seal_one(base / f"{i}.age", timedelta(seconds=-1))] = "due"
        for i in range(3):
            made[seal_one(base / f"young{i}.age", timedelta(days=30))] = "young"
            made[seal_one(directory / "held" / f"r{run}-{i}.age", timedelta(seconds=-1))] = "held"

    def _alive() -> set[str]:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id FROM sealed_copy WHERE wrapped_identity IS NOT NULL")
            ).all()
        return {r[0] for r in rows}

    def protected() -> bool:
        alive = _alive()
        keep = {i for i, why in made.items() if why != "due"}
        if not keep <= alive:
            return False
        one = next(iter(keep))
        with engine.connect() as conn:
            path = conn.execute(sealed_copy.select().where(sealed_copy.c.id == one)).one().path
        out = io.BytesIO()
        with open(path, "rb") as stream:
            unseal_copy(engine, kek, stream, out.write)
        return out.getvalue() == b"dump"

    return Kind(
        body='\n[[rules]]\nname = "sealed-copies"\naction = "shred"\n',
        refill=refill,
        gone=lambda: sum(1 for i, why in made.items() if why == "due" and i not in _alive()),
        protected=protected,
        rules=("sealed-copies",),
    )


def _trials(name: str, kind_of: Callable[[], Kind], tmp_path: Path, state_url: str) -> None:
    """Calibrate, then TRIALS kills each followed by `apply`; check the invariants every time."""
    kind = kind_of()
    config = write_config(tmp_path / "etc", kind.body, state_url=state_url)
    init = cli(config, "init")
    assert init.returncode == 0, init.stderr
    if name == "shred":
        held = tmp_path / "held"
        added = cli(
            config,
            "hold",
            "add",
            "--rule",
            "sealed-copies",
            "--path",
            str(held).lstrip("/"),
            "--reason",
            "inspection in progress",
        )
        assert added.returncode == 0, added.stderr
    rng = random.Random(f"{SEED}-{name}")
    killer = Killer(config, state_url, ENV, rng, stats=KillStats())
    kind.refill()
    killer.calibrate()
    before = sum(counted(state_url, r) for r in kind.rules)
    check(name, kind.gone() == before, (name, "calibration", kind.gone(), before))
    for trial in range(TRIALS):
        kind.refill()
        before = sum(counted(state_url, r) for r in kind.rules)
        killer.kill_once()
        record(name, faults=1, trials=1)
        again = apply_in_process(config)
        after = sum(counted(state_url, r) for r in kind.rules)
        gone = kind.gone()
        check(name, again == 0, (name, trial, "apply after the kill exited", again))
        check(name, verify_in_process(config) == 0, (name, trial, "ledger verify failed"))
        check(name, after - before == gone, (name, trial, "ledger", after - before, "gone", gone))
        check(name, kind.protected(), (name, trial, "held, young or other data touched"))
    stats = killer.stats
    assert stats is not None and stats.trials == TRIALS
    # Most kills must land inside a run, or the trials would test nothing.
    assert stats.mid_run >= TRIALS // 2, (name, stats, killer.run_seconds)
    record(name, mid_run=stats.mid_run)


def test_kill_9_while_deleting_rows(tmp_path: Path, pg_database: str) -> None:
    _trials("rows", lambda: rows_kind(pg_database), tmp_path, f"sqlite:///{tmp_path / 's.db'}")


def test_kill_9_while_masking(tmp_path: Path, pg_database: str) -> None:
    _trials("mask", lambda: mask_kind(pg_database), tmp_path, f"sqlite:///{tmp_path / 's.db'}")


def test_kill_9_while_dropping_partitions(tmp_path: Path, pg_database: str) -> None:
    _trials(
        "partitions",
        lambda: partitions_kind(pg_database),
        tmp_path,
        f"sqlite:///{tmp_path / 's.db'}",
    )


def test_kill_9_while_dropping_copies(tmp_path: Path, pg_database: str) -> None:
    # The state in the target database itself: each drop and its entry commit together.
    _trials("copies", lambda: copies_kind(pg_database), tmp_path, pg_database)


def test_kill_9_while_deleting_files(tmp_path: Path) -> None:
    _trials(
        "files",
        lambda: files_kind(tmp_path / "transfer"),
        tmp_path,
        f"sqlite:///{tmp_path / 's.db'}",
    )


def test_kill_9_while_shredding(tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 's.db'}"
    kinds: list[Kind] = []

    def late() -> Kind:
        # The keystore exists only after `init`; bind the kind lazily.
        return kinds[0]

    class Lazy:
        body = '\n[[rules]]\nname = "sealed-copies"\naction = "shred"\n'
        rules = ("sealed-copies",)

        def refill(self) -> None:
            if not kinds:
                kinds.append(shred_kind(tmp_path, state))
            late().refill()

        def gone(self) -> int:
            return late().gone()

        def protected(self) -> bool:
            return late().protected()

    lazy = Lazy()
    _trials(
        "shred",
        lambda: Kind(lazy.body, lazy.refill, lazy.gone, lazy.protected, lazy.rules),
        tmp_path,
        state,
    )
