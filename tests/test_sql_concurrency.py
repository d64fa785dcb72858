"""A purge while the application reads, inserts and updates the same table: nobody sees an error."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, func, insert, select, update

from retentiond.engine import HoldSpec
from tests.sql_support import (
    Row,
    context,
    database_url,
    load_rows,
    now_naive,
    run_rule,
    surviving,
)

ROWS = 20_000


@pytest.fixture(params=["postgres", "mysql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A fresh PostgreSQL and MariaDB database."""
    return database_url(request, tmp_path, request.param)


class _Application:
    """Three clients doing what a lab application does, recording every error they see."""

    def __init__(self, url: str, table: Any) -> None:
        self.engine = create_engine(url, pool_size=4)
        self.table = table
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.done = 0
        self.next_id = ROWS + 1
        self.lock = threading.Lock()

    def _loop(self, action: Any) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            try:
                with self.engine.begin() as conn:
                    action(conn, rng)
                self.done += 1
            except Exception as exc:
                self.errors.append(type(exc).__name__ + ": " + str(exc)[:200])

    def read(self, conn: Any, rng: random.Random) -> None:
        """Results of one patient."""
        t = self.table
        conn.execute(select(t).where(t.c.patient_id == rng.randrange(200))).all()

    def insert(self, conn: Any, rng: random.Random) -> None:
        """A new result, validated now."""
        with self.lock:
            self.next_id += 1
            new_id = self.next_id
        conn.execute(
            insert(self.table).values(
                id=new_id, patient_id=rng.randrange(200), validated_at=now_naive(), value="new"
            )
        )

    def update(self, conn: Any, rng: random.Random) -> None:
        """A change to any result, expired or not."""
        t = self.table
        conn.execute(update(t).where(t.c.id == rng.randrange(1, ROWS)).values(value="changed"))

    def __enter__(self) -> _Application:
        self.threads = [
            threading.Thread(target=self._loop, args=(a,), daemon=True)
            for a in (self.read, self.insert, self.update)
        ]
        for thread in self.threads:
            thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        self.engine.dispose()


def test_a_purge_beside_a_busy_application_is_exact_and_invisible(db_url: str) -> None:
    rows = [Row(i, i % 200, 100 if i % 2 else 3) for i in range(1, ROWS + 1)]
    engine, table = load_rows(db_url, rows)
    held = HoldSpec(reason="case", rule="lab-results", where={"patient_id": (11,)})
    ctx = context(db_url, table="results", age_column="validated_at", budget_ms=10, holds=[held])
    with _Application(db_url, table) as app:
        plan, outcome, journal = run_rule(ctx)
        time.sleep(0.2)
    assert app.errors == []
    assert app.done > 50
    expired_unheld = {r.id for r in rows if r.age_days > 30 and r.patient_id != 11}
    with engine.connect() as conn:
        ids = {r[0] for r in conn.execute(select(table.c.id))}
        new_rows = conn.execute(select(func.count()).where(table.c.value == "new")).scalar_one()
    assert not ids & expired_unheld
    assert {r.id for r in rows} - expired_unheld <= ids
    assert new_rows > 0  # the application's inserts went through and stayed
    assert outcome.items == journal.items == len(expired_unheld) == plan.expired_items
    assert outcome.remaining_expired == 0
    engine.dispose()


def test_a_row_the_application_keeps_locked_is_left_for_the_next_run(pg_database: str) -> None:
    rows = [Row(i, i % 200, 100 if i % 2 else 3) for i in range(1, 2001)]
    engine, table = load_rows(pg_database, rows)
    app = create_engine(pg_database)
    ctx = context(pg_database, table="results", age_column="validated_at", lock_timeout_ms=50)
    with app.connect() as conn:
        # An application transaction holds a lock on one expired row for the whole purge.
        conn.execute(update(table).where(table.c.id == 1001).values(value="busy"))
        started = time.monotonic()
        _, outcome, journal = run_rule(ctx)
        took = time.monotonic() - started
        conn.commit()  # the application's transaction was never broken
    left = surviving(engine, table)
    assert 1001 in left
    assert outcome.remaining_expired >= 1 and outcome.details["skipped_ranges"] >= 1
    assert journal.items == outcome.items == len(rows) - len(left)
    assert len(left) - 1000 == outcome.remaining_expired  # everything else expired went
    assert took < 30
    app.dispose()
    engine.dispose()
