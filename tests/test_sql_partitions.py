"""PostgreSQL range partitions on the age column: wholly expired ones are detached and dropped."""

from __future__ import annotations

import threading
from datetime import date
from typing import Any

from dateutil.relativedelta import relativedelta
from sqlalchemy import create_engine, text

from retentiond.engine import HoldSpec
from retentiond.stores.sql.target import make_sql_target
from tests.sql_support import context, run_rule

MONTHS = 14


def _month(k: int) -> date:
    return date.today().replace(day=1) - relativedelta(months=k)


def _partitioned(url: str) -> Any:
    """results partitioned by month over the last MONTHS months, a future month and a default."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE results (id bigint NOT NULL, patient_id int, "
                "validated_at timestamptz NOT NULL, value text, PRIMARY KEY (id, validated_at)) "
                "PARTITION BY RANGE (validated_at)"
            )
        )
        for k in range(-1, MONTHS):
            lo, hi = _month(k), _month(k - 1)
            conn.execute(
                text(
                    f"CREATE TABLE results_{lo:%Y_%m} PARTITION OF results "
                    f"FOR VALUES FROM ('{lo}') TO ('{hi}')"
                )
            )
        conn.execute(text("CREATE TABLE results_old PARTITION OF results DEFAULT"))
        conn.execute(text("CREATE INDEX ON results (patient_id)"))
        # One row per day and patient over 20 months (the oldest land in the default partition).
        conn.execute(
            text(
                "INSERT INTO results SELECT row_number() OVER (), p, d, 'v' FROM "
                "generate_series(now() - interval '600 days', now(), interval '1 day') d, "
                "generate_series(1, 5) p"
            )
        )
    return engine


def _count(engine: Any, where: str = "true") -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM results WHERE {where}")).scalar_one())


def _partitions(engine: Any) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid")
        )
        return {r[0] for r in rows}


def test_wholly_expired_partitions_are_dropped_and_the_rest_deleted_row_by_row(
    pg_database: str,
) -> None:
    engine = _partitioned(pg_database)
    expired_where = "validated_at < now() - interval '180 days'"
    before, expired = _count(engine), _count(engine, expired_where)
    ctx = context(
        pg_database, table="results", age_column="validated_at", retain="180d", max_fraction=1.0
    )
    plan, outcome, journal = run_rule(ctx)

    assert plan.method == "partition-drop+ctid-ranges"
    assert plan.expired_items == expired and plan.details["partitions_to_drop"] >= 4
    assert _count(engine, expired_where) == 0
    assert _count(engine) == before - expired
    dropped = {k.decode() for k in journal.keys if not k.startswith(b"[")}
    assert (
        len(dropped) == outcome.details["partitions_dropped"] == plan.details["partitions_to_drop"]
    )
    assert not dropped & _partitions(engine)
    assert "results_old" in _partitions(engine)  # the default partition is never dropped
    # Row keys and partition names together count every row that disappeared.
    assert journal.items == outcome.items == expired and outcome.remaining_expired == 0
    engine.dispose()


def test_a_partition_with_held_rows_is_deleted_row_by_row_instead(pg_database: str) -> None:
    engine = _partitioned(pg_database)
    held = HoldSpec(reason="court case", rule="lab-results", where={"patient_id": (3,)})
    expired_where = "validated_at < now() - interval '180 days'"
    held_before = _count(engine, f"{expired_where} AND patient_id = 3")
    ctx = context(
        pg_database,
        table="results",
        age_column="validated_at",
        retain="180d",
        max_fraction=1.0,
        holds=[held],
    )
    plan, outcome, journal = run_rule(ctx)
    assert outcome.details["partitions_dropped"] == 0  # every old month holds patient 3
    assert _count(engine, expired_where) == held_before > 0
    assert _count(engine, f"{expired_where} AND patient_id <> 3") == 0
    assert journal.items == plan.expired_items == outcome.items
    engine.dispose()


def test_a_busy_parent_falls_back_to_row_deletes_without_blocking_the_application(
    pg_database: str,
) -> None:
    engine = _partitioned(pg_database)
    app = create_engine(pg_database)
    ctx = context(
        pg_database,
        table="results",
        age_column="validated_at",
        retain="180d",
        max_fraction=1.0,
        lock_timeout_ms=50,
    )
    target = make_sql_target(ctx)
    plan = target.plan()
    with app.connect() as conn:
        # An application transaction that read the table and is still open: DETACH cannot have
        # its exclusive lock, and must not wait for it longer than the lock timeout.
        conn.execute(text("SELECT count(*) FROM results"))
        outcome = target.execute(plan, _journal(), threading.Event())
        conn.execute(text("SELECT 1"))  # the application's transaction is still alive
        conn.rollback()
    assert outcome.details["partitions_dropped"] == 0
    assert _count(engine, "validated_at < now() - interval '180 days'") == 0
    app.dispose()
    engine.dispose()


def _journal() -> Any:
    from tests.sql_support import MemoryJournal

    return MemoryJournal()
