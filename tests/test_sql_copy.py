"""Post-migration copies: a table or schema dropped once `since + retain` passed on the server."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from retentiond.engine import HoldSpec
from retentiond.errors import RuleError
from retentiond.stores.sql.target import make_sql_target
from tests.sql_support import DIALECTS, MemoryJournal, context, database_url

LONG_AGO = (date.today() - timedelta(days=400)).isoformat()


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh database of each kind."""
    return database_url(request, tmp_path, request.param)


def _copy(url: str, rows: int = 25) -> Any:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE export_v4 (id INTEGER PRIMARY KEY, name VARCHAR(20))"))
        for i in range(rows):
            conn.execute(text("INSERT INTO export_v4 VALUES (:i, :n)"), {"i": i, "n": f"p{i}"})
        conn.execute(text("CREATE TABLE results (id INTEGER PRIMARY KEY)"))
    return engine


def _drop_rule(url: str, since: str, **extra: Any) -> Any:
    return context(url, name="staging", table="export_v4", action="drop", since=since, **extra)


def _tables(engine: Any) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_a_due_copy_is_dropped_and_its_rows_counted(db_url: str) -> None:
    engine = _copy(db_url)
    ctx = _drop_rule(db_url, LONG_AGO)
    target = make_sql_target(ctx)
    plan = target.plan()
    assert (plan.expired_items, plan.total_items, plan.cutoff) == (25, 25, None)
    assert plan.method == "drop-table" and plan.details["due"] is True
    journal = MemoryJournal()
    outcome = target.execute(plan, journal, threading.Event())
    assert _tables(engine) == {"results"}
    assert journal.keys == [b"export_v4"] and journal.items == 25 == outcome.items
    assert make_sql_target(ctx).still_present([b"export_v4"]) == set()
    again = make_sql_target(ctx).plan()
    assert again.expired_items == 0 and again.details["present"] is False
    engine.dispose()


def test_a_copy_before_its_deadline_or_held_is_kept(db_url: str) -> None:
    engine = _copy(db_url)
    fresh = make_sql_target(_drop_rule(db_url, date.today().isoformat()))
    plan = fresh.plan()
    assert plan.expired_items == 0 and plan.details["due"] is False
    fresh.execute(plan, MemoryJournal(), threading.Event())
    held = _drop_rule(db_url, LONG_AGO, holds=[HoldSpec(reason="audit", rule="staging")])
    target = make_sql_target(held)
    plan = target.plan()
    assert (plan.expired_items, plan.held_items) == (0, 25)
    assert target.execute(plan, MemoryJournal(), threading.Event()).items == 0
    assert _tables(engine) == {"results", "export_v4"}
    engine.dispose()


def test_a_copy_referenced_from_outside_is_kept_with_an_error_naming_the_key(db_url: str) -> None:
    engine = _copy(db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE uses_copy (id INTEGER PRIMARY KEY, export_id INTEGER, "
                "CONSTRAINT fk_uses_export FOREIGN KEY (export_id) REFERENCES export_v4 (id))"
            )
        )
    with pytest.raises(RuleError, match=r'rule "staging": foreign key "fk_uses_export"'):
        make_sql_target(_drop_rule(db_url, LONG_AGO)).plan()
    assert "export_v4" in _tables(engine)
    engine.dispose()


def test_a_postgres_schema_copy_is_dropped_whole(pg_database: str) -> None:
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA staging"))
        conn.execute(text("CREATE TABLE staging.patients (id serial PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TABLE staging.results (id int PRIMARY KEY, p int REFERENCES staging.patients)"
            )
        )
        conn.execute(text("INSERT INTO staging.patients SELECT FROM generate_series(1, 10)"))
        conn.execute(text("INSERT INTO staging.results SELECT i, i FROM generate_series(1, 10) i"))
    ctx = context(pg_database, name="staging", schema="staging", action="drop", since=LONG_AGO)
    target = make_sql_target(ctx)
    plan = target.plan()
    assert plan.expired_items == 20 and plan.method == "drop-schema"
    journal = MemoryJournal()
    target.execute(plan, journal, threading.Event())
    assert "staging" not in inspect(engine).get_schema_names()
    assert sorted(journal.keys) == [b"staging", b"staging.patients", b"staging.results"]
    assert journal.items == 20
    engine.dispose()


def test_a_postgres_schema_used_by_a_view_outside_is_kept(pg_database: str) -> None:
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA staging"))
        conn.execute(text("CREATE TABLE staging.results (id int PRIMARY KEY)"))
        conn.execute(text("CREATE VIEW public.report AS SELECT id FROM staging.results"))
    ctx = context(pg_database, name="staging", schema="staging", action="drop", since=LONG_AGO)
    target = make_sql_target(ctx)
    with pytest.raises(RuleError, match=r'rule "staging": schema: staging holds objects'):
        target.execute(target.plan(), MemoryJournal(), threading.Event())
    assert inspect(engine).get_table_names(schema="staging") == ["results"]
    engine.dispose()


def test_a_mysql_schema_copy_is_dropped_whole(mysql_database: str) -> None:
    engine = create_engine(mysql_database)
    copy = f"{engine.url.database}_copy"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{copy}`"))
        conn.execute(text(f"CREATE TABLE `{copy}`.results (id int PRIMARY KEY)"))
        conn.execute(text(f"INSERT INTO `{copy}`.results VALUES (1), (2), (3)"))
    try:
        ctx = context(mysql_database, name="staging", schema=copy, action="drop", since=LONG_AGO)
        target = make_sql_target(ctx)
        plan = target.plan()
        journal = MemoryJournal()
        target.execute(plan, journal, threading.Event())
        assert copy not in inspect(engine).get_schema_names()
        assert journal.items == 3 and not journal.pending
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{copy}`"))
        engine.dispose()
