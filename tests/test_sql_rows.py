"""Row rules (delete, mask) on SQLite, PostgreSQL and MariaDB: exactly the expired, unheld rows."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, text
from sqlalchemy.exc import DBAPIError

from retentiond.engine import HoldSpec
from retentiond.errors import RuleError
from retentiond.stores.sql.target import connect_store, make_sql_target
from tests.sql_support import (
    DIALECTS,
    MemoryJournal,
    Row,
    SimulatedCrash,
    context,
    database_url,
    load_rows,
    run_rule,
    surviving,
)

HELD_PATIENT = 7


def _rows() -> list[Row]:
    # Ages stay far from the 30-day boundary so that clock skew between hosts cannot matter.
    rows = []
    for i in range(1, 601):
        patient = None if i % 50 == 0 else i % 20
        rows.append(Row(i, patient, age_days=400 - (i % 8) * 50 if i % 3 else 3 + i % 20))
    return rows


def _expected_gone(rows: list[Row], held: set[int]) -> set[int]:
    return {r.id for r in rows if r.age_days > 30 and r.patient_id not in held}


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh database of each kind."""
    return database_url(request, tmp_path, request.param)


def _hold(*patients: int | str) -> HoldSpec:
    return HoldSpec(
        reason="court case 2026-117", rule="lab-results", where={"patient_id": patients}
    )


def test_delete_removes_exactly_the_expired_unheld_rows(db_url: str) -> None:
    rows = _rows()
    engine, table = load_rows(db_url, rows)
    ctx = context(db_url, table="results", age_column="validated_at", holds=[_hold(HELD_PATIENT)])
    plan, outcome, journal = run_rule(ctx)

    gone = _expected_gone(rows, {HELD_PATIENT})
    left = surviving(engine, table)
    assert set(left) == {r.id for r in rows} - gone
    # Rows with a NULL patient are not held by a patient hold; they went when expired.
    assert any(r.patient_id is None and r.id in gone for r in rows)
    assert plan.total_items == len(rows)
    assert plan.expired_items == len(gone)
    assert plan.held_items == sum(1 for r in rows if r.age_days > 30 and r.patient_id == 7)
    assert plan.clock == "database" and plan.cutoff is not None
    assert plan.oldest_age_seconds is not None and plan.oldest_age_seconds > 340 * 86400
    assert outcome.items == len(gone) and outcome.remaining_expired == 0
    assert sorted(journal.keys) == sorted(f"[{i}]".encode() for i in gone)
    assert journal.items == len(gone) and not journal.pending
    engine.dispose()


def test_mask_nulls_the_listed_columns_and_keeps_the_rows(db_url: str) -> None:
    rows = _rows()
    engine, table = load_rows(db_url, rows)
    ctx = context(
        db_url,
        table="results",
        age_column="validated_at",
        action="mask",
        columns=["comment"],
        holds=[_hold(str(HELD_PATIENT))],  # a string value for an integer column still holds
    )
    plan, outcome, journal = run_rule(ctx)

    masked = _expected_gone(rows, {HELD_PATIENT})
    left = surviving(engine, table)
    assert set(left) == {r.id for r in rows}
    assert {i for i, (_, comment) in left.items() if comment is None} == masked
    assert plan.expired_items == len(masked) == outcome.items == journal.items
    # A second pass finds nothing left to mask.
    again, outcome2, _ = run_rule(ctx)
    assert again.expired_items == 0 and outcome2.items == 0
    engine.dispose()


def test_a_hold_without_where_keeps_every_row_of_the_rule(db_url: str) -> None:
    rows = _rows()
    engine, table = load_rows(db_url, rows)
    whole = HoldSpec(reason="inspection", rule="lab-results")
    ctx = context(db_url, table="results", age_column="validated_at", holds=[whole])
    plan, outcome, _ = run_rule(ctx)
    assert len(surviving(engine, table)) == len(rows)
    assert plan.expired_items == 0 and outcome.items == 0
    assert plan.held_items == sum(1 for r in rows if r.age_days > 30)
    engine.dispose()


def test_plan_runs_in_a_transaction_the_database_keeps_read_only(db_url: str) -> None:
    engine, table = load_rows(db_url, _rows())
    ctx = context(db_url, table="results", age_column="validated_at")
    store_engine, dialect = connect_store(ctx)
    with store_engine.connect() as conn, pytest.raises(DBAPIError), dialect.read_only(conn):
        conn.execute(delete(table))
    store_engine.dispose()
    make_sql_target(ctx).plan()
    assert len(surviving(engine, table)) == 600
    engine.dispose()


def test_a_renamed_table_or_dropped_column_fails_the_rule_by_name(db_url: str) -> None:
    engine, _ = load_rows(db_url, _rows())
    ctx = context(db_url, table="results", age_column="validated_at")
    target = make_sql_target(ctx)
    plan = target.plan()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE results RENAME TO results_old"))
    with pytest.raises(RuleError, match=r'rule "lab-results": table: .*"results" does not exist'):
        target.execute(plan, MemoryJournal(), threading.Event())
    with pytest.raises(RuleError, match="does not exist"):
        make_sql_target(ctx).plan()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE results_old RENAME TO results"))
        conn.execute(text("ALTER TABLE results DROP COLUMN comment"))
    masking = context(
        db_url, table="results", age_column="validated_at", action="mask", columns=["comment"]
    )
    with pytest.raises(RuleError, match=r'columns\[0\]: column "comment" does not exist'):
        make_sql_target(masking).plan()
    engine.dispose()


def test_a_hold_on_an_unknown_column_or_with_a_bad_value_fails_the_rule(db_url: str) -> None:
    engine, _ = load_rows(db_url, _rows())
    bad_column = HoldSpec(reason="case", rule="lab-results", where={"patient": (1,)}, source="x")
    ctx = context(db_url, table="results", age_column="validated_at", holds=[bad_column])
    with pytest.raises(RuleError, match=r"hold x: where.patient: column \"patient\" does not"):
        make_sql_target(ctx).plan()
    bad_value = HoldSpec(reason="case", rule="lab-results", where={"patient_id": ("x1",)})
    ctx = context(db_url, table="results", age_column="validated_at", holds=[bad_value])
    with pytest.raises(RuleError, match="does not fit"):
        make_sql_target(ctx).plan()
    engine.dispose()


class _StopAfter(MemoryJournal):
    """Sets the stop event once `n` batches completed."""

    def __init__(self, n: int, stop: threading.Event) -> None:
        super().__init__()
        self.n = n
        self.stop = stop

    def complete(self, batch_id: int, removed: Any, nbytes: int, items: Any = None) -> None:
        """Record the batch, then ask the run to stop."""
        super().complete(batch_id, removed, nbytes, items)
        if len(self.done) >= self.n:
            self.stop.set()


def test_stop_ends_the_run_between_batches_and_everything_done_is_recorded(db_url: str) -> None:
    rows = [Row(i, i % 20, 100) if i % 2 else Row(i, i % 20, 2) for i in range(1, 6001)]
    engine, table = load_rows(db_url, rows)
    ctx = context(db_url, table="results", age_column="validated_at", budget_ms=5)
    target = make_sql_target(ctx)
    plan = target.plan()
    stop = threading.Event()
    journal = _StopAfter(1, stop)
    outcome = target.execute(plan, journal, stop)
    gone = len(rows) - len(surviving(engine, table))
    assert 0 < gone < plan.expired_items
    assert outcome.items == journal.items == gone and outcome.details["stopped"] is True
    engine.dispose()


def test_a_crash_before_the_commit_leaves_the_batch_present_and_reconcilable(db_url: str) -> None:
    rows = [Row(i, i % 20, 100 if i % 2 else 2) for i in range(1, 1001)]
    engine, table = load_rows(db_url, rows)
    ctx = context(db_url, table="results", age_column="validated_at")
    target = make_sql_target(ctx)
    plan = target.plan()
    journal = MemoryJournal(fail_after_write_ahead=1)
    with pytest.raises(SimulatedCrash):
        target.execute(plan, journal, threading.Event())
    assert len(surviving(engine, table)) == len(rows)  # the batch rolled back
    ((candidates, _),) = journal.pending.values()
    assert candidates and target.still_present(candidates) == set(candidates)
    engine.dispose()


class _LoseComplete(MemoryJournal):
    """The process dies after the target's commit, before `complete` (kill -9 at that moment)."""

    def complete(self, batch_id: int, removed: Any, nbytes: int, items: Any = None) -> None:
        """Die before recording."""
        raise SimulatedCrash


def test_a_crash_after_the_commit_is_reconciled_from_what_is_gone(db_url: str) -> None:
    rows = [Row(i, i % 20, 100 if i % 2 else 2) for i in range(1, 1001)]
    engine, table = load_rows(db_url, rows)
    ctx = context(db_url, table="results", age_column="validated_at")
    target = make_sql_target(ctx)
    plan = target.plan()
    journal = _LoseComplete()
    with pytest.raises(SimulatedCrash):
        target.execute(plan, journal, threading.Event())
    candidates = [k for keys, _ in journal.pending.values() for k in keys]
    gone = len(rows) - len(surviving(engine, table))
    # Reconciliation counts exactly the rows that disappeared.
    assert gone == len(candidates) > 0
    assert make_sql_target(ctx).still_present(candidates) == set()
    engine.dispose()


def test_a_colocated_journal_records_inside_the_target_transaction(db_url: str) -> None:
    rows = _rows()
    engine, table = load_rows(db_url, rows)
    ctx = context(db_url, table="results", age_column="validated_at")
    _, outcome, journal = run_rule(ctx, MemoryJournal(colocated=True))
    gone = _expected_gone(rows, set())
    assert journal.recorded and not journal.done and not journal.pending
    assert journal.items == len(gone) == outcome.items
    assert set(surviving(engine, table)) == {r.id for r in rows} - gone
    engine.dispose()


def test_a_composite_key_is_walked_in_key_order(db_url: str) -> None:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE samples (site VARCHAR(10) NOT NULL, n INTEGER NOT NULL, "
                "taken_at TIMESTAMP NULL, PRIMARY KEY (site, n))"
            )
        )
        for site in ("lyon", "nice", "paris"):
            for n in range(300):
                age = "2001-01-01 00:00:00" if n % 3 else "2037-01-01 00:00:00"
                conn.execute(
                    text("INSERT INTO samples VALUES (:s, :n, :t)"), {"s": site, "n": n, "t": age}
                )
    ctx = context(db_url, table="samples", age_column="taken_at", max_fraction=1.0, budget_ms=5)
    plan, outcome, journal = run_rule(ctx)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT site, n FROM samples")).all()
    assert sorted(left) == sorted(
        (s, n) for s in ("lyon", "nice", "paris") for n in range(0, 300, 3)
    )
    assert outcome.items == plan.expired_items == 600 == journal.items
    assert b'["nice",1]' in journal.keys
    engine.dispose()


def test_sqlite_ages_stored_as_numbers_fail_the_rule(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    engine, table = load_rows(url, _rows())
    with engine.begin() as conn:
        # An epoch number in a timestamp column: SQLite would order it before any text cutoff.
        conn.execute(text("UPDATE results SET validated_at = 1700000000 WHERE id = 5"))
    ctx = context(url, table="results", age_column="validated_at")
    with pytest.raises(RuleError, match=r'age_column: 1 rows of results hold a "validated_at"'):
        make_sql_target(ctx).plan()
    assert len(surviving(engine, table)) == 600
    engine.dispose()
