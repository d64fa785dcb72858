"""Property: whatever the data and the holds, no held or unexpired row is ever deleted or masked."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, create_engine

from retentiond.engine import HoldSpec
from tests.sql_support import Row, context, database_url, load_rows, run_rule, surviving

ages = st.one_of(st.integers(0, 29), st.integers(31, 3000))
patients = st.one_of(st.none(), st.integers(0, 12))
rows_strategy = st.lists(st.tuples(patients, ages, st.booleans()), max_size=120)
holds_strategy = st.lists(
    st.lists(st.one_of(st.integers(0, 12), st.integers(0, 12).map(str)), min_size=1, max_size=4),
    max_size=3,
)


def _reset(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        metadata = MetaData()
        metadata.reflect(conn)
        for table in metadata.sorted_tables:
            table.drop(conn)
    engine.dispose()


def _check(url: str, data: list[Any], held_lists: list[list[Any]], action: str) -> None:
    _reset(url)
    rows = [Row(i + 1, p, age, "note" if c else None) for i, (p, age, c) in enumerate(data)]
    engine, table = load_rows(url, rows)
    holds = [
        HoldSpec(
            reason="case", rule="lab-results", where={"patient_id": tuple(vals)}, source=f"h{i}"
        )
        for i, vals in enumerate(held_lists)
    ]
    held = {int(v) for vals in held_lists for v in vals}
    extra = {"columns": ["comment"]} if action == "mask" else {}
    ctx = context(
        url,
        table="results",
        age_column="validated_at",
        action=action,
        holds=holds,
        max_fraction=1.0,
        budget_ms=5,
        **extra,
    )
    plan, outcome, journal = run_rule(ctx)
    left = surviving(engine, table)
    engine.dispose()
    selected = {
        r.id
        for r in rows
        if r.age_days > 30 and r.patient_id not in held and (action == "delete" or r.comment)
    }
    if action == "delete":
        assert set(left) == {r.id for r in rows} - selected
    else:
        assert set(left) == {r.id for r in rows}
        for r in rows:
            assert left[r.id][1] == (None if r.id in selected else r.comment)
    assert plan.expired_items == outcome.items == journal.items == len(selected)
    assert sorted(journal.keys) == sorted(f"[{i}]".encode() for i in selected)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=rows_strategy, held_lists=holds_strategy, action=st.sampled_from(["delete", "mask"]))
def test_sqlite_never_loses_a_held_or_unexpired_row(
    tmp_path: Any, data: list[Any], held_lists: list[list[Any]], action: str
) -> None:
    _check(f"sqlite:///{tmp_path / 'p.db'}", data, held_lists, action)


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_servers_never_lose_a_held_or_unexpired_row(
    request: pytest.FixtureRequest, tmp_path: Any, kind: str
) -> None:
    url = database_url(request, tmp_path, kind)

    @settings(max_examples=15, deadline=None)
    @given(
        data=rows_strategy, held_lists=holds_strategy, action=st.sampled_from(["delete", "mask"])
    )
    def check(data: list[Any], held_lists: list[list[Any]], action: str) -> None:
        _check(url, data, held_lists, action)

    check()
