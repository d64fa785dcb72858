"""Foreign keys referencing a purged table: listed dependents go with their parents, others fail."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    Table,
    create_engine,
    insert,
    select,
)

from retentiond.errors import RuleError
from retentiond.stores.sql.target import make_sql_target
from tests.sql_support import DIALECTS, Row, context, database_url, load_rows, run_rule, surviving


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh database of each kind."""
    return database_url(request, tmp_path, request.param)


def _lab(url: str) -> tuple[Any, Table, Table, Table, list[Row]]:
    rows = [Row(i, i % 10, 200 if i % 2 else 5) for i in range(1, 201)]
    engine, results = load_rows(url, rows)
    metadata = MetaData()
    Table("results", metadata, autoload_with=engine)
    comments = Table(
        "result_comments",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("result_id", Integer, nullable=True),
        ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_comment_result"),
    )
    attachments = Table(
        "comment_files",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("comment_id", Integer, nullable=False),
        ForeignKeyConstraint(["comment_id"], ["result_comments.id"], name="fk_file_comment"),
    )
    metadata.create_all(engine, tables=[comments, attachments])
    with engine.begin() as conn:
        # Two comments per result, one file per comment; a comment without a result.
        conn.execute(
            insert(comments),
            [{"id": r.id * 10 + k, "result_id": r.id} for r in rows for k in (1, 2)]
            + [{"id": 5, "result_id": None}],
        )
        conn.execute(
            insert(attachments),
            [{"id": r.id * 100 + k, "comment_id": r.id * 10 + k} for r in rows for k in (1, 2)],
        )
    return engine, results, comments, attachments, rows


def _ids(engine: Any, table: Table) -> set[int]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(select(table.c.id))}


def test_an_unlisted_foreign_key_fails_the_rule_naming_the_constraint(db_url: str) -> None:
    engine, results, *_ = _lab(db_url)
    ctx = context(db_url, table="results", age_column="validated_at")
    with pytest.raises(RuleError, match=r'cascade: foreign key "fk_comment_result" of '):
        make_sql_target(ctx).plan()
    only_child = context(
        db_url, table="results", age_column="validated_at", cascade=["result_comments"]
    )
    with pytest.raises(RuleError, match=r'"fk_file_comment" of comment_files references'):
        make_sql_target(only_child).plan()
    assert len(_ids(engine, results)) == 200
    engine.dispose()


def test_listed_dependents_of_purged_rows_are_deleted_with_them(db_url: str) -> None:
    engine, results, comments, files, rows = _lab(db_url)
    ctx = context(
        db_url,
        table="results",
        age_column="validated_at",
        cascade=["result_comments", "comment_files"],
        budget_ms=5,
    )
    plan, outcome, journal = run_rule(ctx)
    kept = {r.id for r in rows if r.age_days < 30}
    assert set(surviving(engine, results)) == kept
    assert _ids(engine, comments) == {i * 10 + k for i in kept for k in (1, 2)} | {5}
    assert _ids(engine, files) == {i * 100 + k for i in kept for k in (1, 2)}
    purged = 200 - len(kept)
    assert plan.expired_items == purged and plan.details["cascade"] == ["result_comments"]
    assert outcome.details["dependents"] == {
        "result_comments": 2 * purged,
        "comment_files": 2 * purged,
    }
    assert journal.items == outcome.items == 5 * purged
    assert (
        b'["result_comments",[11]]' in journal.keys and b'["comment_files",[101]]' in journal.keys
    )
    gone_keys = [k for k in journal.keys]
    assert make_sql_target(ctx).still_present(gone_keys) == set()
    engine.dispose()


def test_a_self_referencing_table_is_refused(db_url: str) -> None:
    engine = create_engine(db_url)
    metadata = MetaData()
    Table(
        "results",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("parent_id", Integer, nullable=True),
        Column("validated_at", DateTime, nullable=True),
        ForeignKeyConstraint(["parent_id"], ["results.id"], name="fk_parent"),
    )
    metadata.create_all(engine)
    ctx = context(db_url, table="results", age_column="validated_at")
    with pytest.raises(RuleError, match=r'foreign key "fk_parent" .*self-referencing'):
        make_sql_target(ctx).plan()
    engine.dispose()
