"""Helpers for the SQL store tests: rule contexts and journals that record what they are told."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retentiond.config.model import DaemonSection, Rule, SqlStore
from retentiond.engine import HoldSpec, Outcome, Plan, TargetContext
from retentiond.stores.sql.target import make_sql_target


def context(
    url: str,
    *,
    holds: Sequence[HoldSpec] = (),
    budget_ms: int = 50,
    lock_timeout_ms: int = 500,
    **rule: Any,
) -> TargetContext:
    """A TargetContext for one rule on the database at `url`."""
    fields = {"name": "lab-results", "store": "db", "retain": "30d", "action": "delete"}
    fields.update(rule)
    daemon = DaemonSection(batch_budget_ms=budget_ms, lock_timeout_ms=lock_timeout_ms)
    return TargetContext(
        rule=Rule.model_validate(fields),
        store_name="db",
        store=SqlStore(kind="sql", url=url),
        holds=tuple(holds),
        daemon=daemon,
        state_url=None,
    )


@dataclass
class MemoryJournal:
    """A BatchJournal that keeps batches in memory (write-ahead, then complete)."""

    colocated: bool = False
    pending: dict[int, tuple[list[bytes], int | None]] = field(default_factory=dict)
    done: dict[int, tuple[list[bytes], int, int]] = field(default_factory=dict)
    recorded: list[tuple[list[bytes], int, int]] = field(default_factory=list)
    fail_after_write_ahead: int | None = None  # raise after this many write-aheads (a crash)
    _next: int = 0

    def write_ahead(self, keys: Sequence[bytes], items: int | None = None) -> int:
        """Remember the candidates; optionally simulate a crash right after."""
        self._next += 1
        self.pending[self._next] = (list(keys), items)
        if self.fail_after_write_ahead is not None and self._next >= self.fail_after_write_ahead:
            raise SimulatedCrash
        return self._next

    def complete(
        self, batch_id: int, removed: Sequence[bytes], nbytes: int, items: int | None = None
    ) -> None:
        """Move a batch from pending to done."""
        self.pending.pop(batch_id)
        count = items if items is not None else len(removed)
        self.done[batch_id] = (list(removed), nbytes, count)

    def record_in(
        self, connection: Any, removed: Sequence[bytes], nbytes: int, items: int | None = None
    ) -> None:
        """Colocated record (kept in memory; a rollback of the target is not undone here)."""
        count = items if items is not None else len(removed)
        self.recorded.append((list(removed), nbytes, count))

    @property
    def keys(self) -> list[bytes]:
        """Every key recorded as removed."""
        out = [k for keys, _, _ in self.done.values() for k in keys]
        return out + [k for keys, _, _ in self.recorded for k in keys]

    @property
    def items(self) -> int:
        """Items recorded as removed."""
        return sum(c for _, _, c in self.done.values()) + sum(c for _, _, c in self.recorded)


class SimulatedCrash(Exception):
    """Raised by MemoryJournal to stop a run between a write-ahead and the target's commit."""


def run_rule(ctx: TargetContext, journal: Any | None = None) -> tuple[Plan, Outcome, Any]:
    """Plan and execute one rule as the runner would (without guards); returns everything."""
    target = make_sql_target(ctx)
    plan = target.plan()
    journal = journal if journal is not None else MemoryJournal()
    outcome = target.execute(plan, journal, threading.Event())
    return plan, outcome, journal


# -- test data ---------------------------------------------------------------------------------

DIALECTS = ["sqlite", "postgres", "mysql"]


def database_url(request: Any, tmp_path: Any, kind: str) -> str:
    """A fresh empty database of `kind` (sqlite, postgres or mysql) for one test."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'lab.db'}"
    if kind == "postgres":
        return str(request.getfixturevalue("pg_database"))
    return str(request.getfixturevalue("mysql_database"))


@dataclass(frozen=True)
class Row:
    """One lab result: its key, patient, age in days and a masked-able comment."""

    id: int
    patient_id: int | None
    age_days: int
    comment: str | None = "note"


def results_table(metadata: Any, *, tz: bool = False, name: str = "results") -> Any:
    """The lab-results table used by the tests (an integer key and two secondary indexes)."""
    from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text

    table = Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("patient_id", Integer, nullable=True),
        Column("validated_at", DateTime(timezone=tz), nullable=False),
        Column("comment", Text, nullable=True),
        Column("value", String(40), nullable=True),
    )
    Index(f"ix_{name}_patient", table.c.patient_id)
    Index(f"ix_{name}_validated", table.c.validated_at)
    return table


def now_naive() -> Any:
    """Now in UTC without a zone: how every test server here writes naive timestamps."""
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(tzinfo=None)


def load_rows(url: str, rows: Sequence[Row], *, tz: bool = False, name: str = "results") -> Any:
    """Create the results table at `url` and fill it; returns the engine and the table."""
    from datetime import UTC, timedelta

    from sqlalchemy import MetaData, create_engine, insert

    engine = create_engine(url)
    metadata = MetaData()
    table = results_table(metadata, tz=tz, name=name)
    metadata.create_all(engine)
    now = now_naive()
    values = [
        {
            "id": r.id,
            "patient_id": r.patient_id,
            "validated_at": (now - timedelta(days=r.age_days)).replace(tzinfo=UTC if tz else None),
            "comment": r.comment,
            "value": f"v{r.id}",
        }
        for r in rows
    ]
    with engine.begin() as conn:
        for start in range(0, len(values), 5000):
            conn.execute(insert(table), values[start : start + 5000])
    return engine, table


def surviving(engine: Any, table: Any) -> dict[int, Any]:
    """id -> (patient_id, comment) of every row still in the table."""
    from sqlalchemy import select

    with engine.connect() as conn:
        rows = conn.execute(select(table.c.id, table.c.patient_id, table.c.comment)).all()
    return {r.id: (r.patient_id, r.comment) for r in rows}
