"""Rules on SQL databases: delete or mask expired rows, drop expired copies.

`make_sql_target` binds a rule to its database. A row rule's plan reads the server's clock once and
counts, read-only, what the rule selects; its execution walks the table in short, time-budgeted
batches (or drops wholly expired partitions), re-checking the predicate and the holds in every
statement, then counts what expired data is still there (the post-check).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import TableClause, case, create_engine, func, or_, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from retentiond.config.secrets import store_url
from retentiond.engine import BatchJournal, Outcome, Plan, Target, TargetContext
from retentiond.errors import RuleError
from retentiond.stores.sql.batch import BatchRunner
from retentiond.stores.sql.cascade import CascadeNode, build_cascade
from retentiond.stores.sql.dialect import TIMEOUT, Layout, SqlDialect
from retentiond.stores.sql.table import (
    RowTable,
    build_row_table,
    decode_key,
    encode_dependent_keys,
    encode_keys,
    has_table,
    key_match,
    reflect_table,
)

_SWEEP_ROUNDS = 20
_SWEEP_BATCH = 1000
_PRESENCE_CHUNK = 1000


def _dialect_class(backend: str) -> type[SqlDialect]:
    if backend == "postgresql":
        from retentiond.stores.sql.postgres import PostgresDialect

        return PostgresDialect
    if backend in ("mysql", "mariadb"):
        from retentiond.stores.sql.mysql import MysqlDialect

        return MysqlDialect
    if backend == "sqlite":
        from retentiond.stores.sql.sqlite import SqliteDialect

        return SqliteDialect
    raise RuleError(f"database {backend} is not supported (PostgreSQL, MySQL/MariaDB, SQLite)")


def connect_store(context: TargetContext) -> tuple[Engine, SqlDialect]:
    """An engine on the rule's database with the daemon's session limits, and its dialect."""
    url = store_url(context.store, context.store_name or "?")
    cls = _dialect_class(url.get_backend_name())
    engine = create_engine(url, **cls.engine_options(context.daemon))
    dialect = cls(engine, context.daemon)
    dialect.install()
    return engine, dialect


def make_sql_target(context: TargetContext) -> Target:
    """The target applying `context.rule` (delete, mask or drop) to its SQL store."""
    engine, dialect = connect_store(context)
    if context.rule.action == "drop":
        from retentiond.stores.sql.copies import CopyTarget

        return CopyTarget(context, engine, dialect)
    if context.rule.action in ("delete", "mask"):
        return RowTarget(context, engine, dialect)
    raise RuleError(
        f'rule "{context.rule.name}": action: {context.rule.action} does not apply to SQL'
    )


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time())
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _age_seconds(now: datetime, oldest: Any) -> float | None:
    moment = _as_datetime(oldest)
    if moment is None:
        return None
    if (moment.tzinfo is None) != (now.tzinfo is None):
        moment = moment.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - moment).total_seconds())


class RowTarget:
    """A delete or mask rule on one table (partitioned or not), with its cascades and holds."""

    def __init__(self, context: TargetContext, engine: Engine, dialect: SqlDialect) -> None:
        self.context = context
        self.rule = context.rule
        self.engine = engine
        self.dialect = dialect

    # -- shared pieces -------------------------------------------------------------------------

    def _prepare(self, conn: Connection) -> tuple[RowTable, tuple[CascadeNode, ...]]:
        """Reflect the table and its dependents, checking every name against the catalog."""
        rt = build_row_table(conn, self.rule, self.context.holds, self.dialect.text_ages)
        if self.rule.action != "delete":
            return rt, ()
        return rt, build_cascade(conn, self.dialect, self.rule, rt.table, rt.configured)

    def _explain(self, exc: sa_exc.SQLAlchemyError) -> BaseException:
        found = self.dialect.explain(exc, self.rule.name, self.rule.table)
        return found if found is not None else exc

    def _counts(
        self, conn: Connection, rt: RowTable, cutoff: datetime
    ) -> tuple[int, int, int, Any]:
        """(rows, selected, held among expired, oldest selected age value)."""
        t = rt.table
        selected = rt.selects(t, cutoff)
        held = rt.held(t)
        if self.dialect.splits_counts(conn, t):
            # Two queries an index can answer (the total from the smallest index, the expired
            # rows from a range of the age column's), instead of one scan of the whole table.
            total = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            expired_only = select(
                func.count(),
                func.coalesce(func.sum(case((held, 1), else_=0)), 0),
                func.min(case((selected, t.c[rt.age]), else_=None)),
            ).where(rt.expired(t, cutoff))
            row: Any = conn.execute(expired_only.select_from(t)).one()
            expired, held_count, oldest = row
            # Within expired rows, held and unheld are complements (NULL keys are unheld).
            return total, int(expired) - int(held_count), int(held_count), oldest
        query = select(
            func.count(),
            func.coalesce(func.sum(case((selected, 1), else_=0)), 0),
            func.coalesce(func.sum(case((rt.expired(t, cutoff) & held, 1), else_=0)), 0),
            func.min(case((selected, t.c[rt.age]), else_=None)),
        ).select_from(t)
        row = conn.execute(query).one()
        total, chosen, held_count, oldest = row
        return int(total), int(chosen), int(held_count), oldest

    def _remaining(self, rt: RowTable, cutoff: datetime) -> int:
        with self.engine.connect() as conn:
            query = select(func.count()).select_from(rt.table).where(rt.selects(rt.table, cutoff))
            return self.dialect.count_after_purge(conn, query)

    # -- plan ----------------------------------------------------------------------------------

    def plan(self) -> Plan:
        """Count what the rule selects now, by the server's clock; read-only."""
        try:
            with self.engine.connect() as conn, self.dialect.read_only(conn):
                rt, cascade = self._prepare(conn)
                self.dialect.check_ages(conn, rt)
                now, local = self.dialect.server_now(conn)
                column_now = now if rt.aware else local
                cutoff = self.rule.retain.subtract_from(now)
                column_cutoff = self.rule.retain.subtract_from(column_now)
                total, chosen, held, oldest = self._counts(conn, rt, column_cutoff)
                table_bytes = self.dialect.relation_bytes(conn, rt.table)
                layout = self.dialect.layout(conn, rt, column_cutoff, bool(cascade))
        except sa_exc.SQLAlchemyError as exc:
            raise self._explain(exc) from None
        finally:
            self.engine.dispose()
        row_bytes = table_bytes // total if total else 0
        return Plan(
            rule=self.rule.name,
            action=self.rule.action,
            target=rt.configured,
            method=layout.method,
            cutoff=cutoff,
            clock="database",
            total_items=total,
            expired_items=chosen,
            held_items=held,
            bytes=chosen * row_bytes,
            oldest_age_seconds=_age_seconds(column_now, oldest) if chosen else None,
            details={
                "column_cutoff": column_cutoff.isoformat(),
                "row_bytes": row_bytes,
                "partitions_to_drop": len(layout.drops),
                "cascade": [node.qualified for node in cascade],
            },
        )

    # -- execute -------------------------------------------------------------------------------

    def _walk(
        self, runner: BatchRunner, rt: RowTable, source: TableClause, stop: threading.Event
    ) -> None:
        with self.engine.connect() as conn:
            walker = self.dialect.walker(conn, rt, source)
            conn.rollback()
            if walker is None:
                return
            while not stop.is_set():
                scope = walker.next_scope(conn)
                conn.rollback()  # the range query must not keep a snapshot or lock open
                if scope is None:
                    return
                try:
                    removed, elapsed = runner.remove(source, scope, walker.sizer)
                except sa_exc.DBAPIError as exc:
                    # Rows the application keeps locked past every retry: leave this range for
                    # the next run (the post-check counts it as overdue) rather than queue.
                    if self.dialect.classify(exc) != TIMEOUT:
                        raise
                    runner.totals.skipped += 1
                    walker.advance(1)
                    continue
                walker.advance(removed)
                walker.sizer.observe(elapsed)

    def _sweep(
        self, runner: BatchRunner, rt: RowTable, cutoff: datetime, stop: threading.Event
    ) -> None:
        """Rows that a concurrent update moved behind the walk are removed by key."""
        pk = rt.key_columns(rt.table)
        for _ in range(_SWEEP_ROUNDS):
            if stop.is_set():
                return
            with self.engine.connect() as conn:
                query = select(*pk).where(rt.selects(rt.table, cutoff)).limit(_SWEEP_BATCH)
                rows = [tuple(r) for r in conn.execute(query)]
            if not rows:
                return
            try:
                removed, _ = runner.remove(rt.table, key_match(pk, rows), None)
            except sa_exc.DBAPIError as exc:
                if self.dialect.classify(exc) != TIMEOUT:
                    raise
                runner.totals.skipped += 1
                return
            if removed == 0:
                return  # what is left is locked by the application; the post-check reports it

    def _run(
        self,
        runner: BatchRunner,
        rt: RowTable,
        layout: Layout,
        cutoff: datetime,
        stop: threading.Event,
    ) -> int | None:
        """Drop, walk and sweep; the post-check count, or None when stopped before it."""
        sources = list(layout.sources)
        drops = list(layout.drops)
        budget = self.context.daemon.batch_budget_ms / 1000 * 0.7
        while drops and not stop.is_set():
            try:
                used, kept = runner.drop_group(drops, budget)
            except sa_exc.DBAPIError as exc:
                # The application keeps the table busy (the lock timeout ran out at every try):
                # deleting the partitions' rows needs no exclusive lock, so they can still go.
                if self.dialect.classify(exc) != TIMEOUT:
                    raise
                used, kept = len(drops), drops
            # A partition holding rows the rule keeps (held) is walked row by row instead.
            sources += [d.source for d in kept if d.source is not None]
            drops = drops[used:]
        for source in sources:
            if stop.is_set():
                return None
            self._walk(runner, rt, source, stop)
        if stop.is_set():
            return None
        remaining = self._remaining(rt, cutoff)
        if remaining:
            self._sweep(runner, rt, cutoff, stop)
            remaining = self._remaining(rt, cutoff)
        return remaining

    def execute(self, plan: Plan, journal: BatchJournal, stop: threading.Event) -> Outcome:
        """Remove what the plan's cutoff selects, in budgeted batches; stops between batches."""
        cutoff = datetime.fromisoformat(str(plan.details["column_cutoff"]))
        try:
            with self.engine.connect() as conn:
                rt, cascade = self._prepare(conn)
                layout = self.dialect.layout(conn, rt, cutoff, bool(cascade))
                conn.rollback()
            runner = BatchRunner(
                self.engine,
                self.dialect,
                journal,
                self._present,
                rt,
                cascade,
                cutoff,
                int(plan.details.get("row_bytes", 0)),
            )
            remaining: int | None = 0
            with runner:
                if not rt.whole_hold:
                    remaining = self._run(runner, rt, layout, cutoff, stop)
            stopped = stop.is_set()
            if remaining is None:
                # Stopping (SIGTERM): no full scan now; what the plan found minus what went.
                removed = runner.totals.items - sum(runner.totals.dependents.values())
                remaining = max(0, plan.expired_items - removed)
        except sa_exc.SQLAlchemyError as exc:
            raise self._explain(exc) from None
        finally:
            self.engine.dispose()
        totals = runner.totals
        return Outcome(
            items=totals.items,
            bytes=totals.bytes,
            digest="",  # the journal digests the keys it was handed
            method=layout.method,
            remaining_expired=remaining,
            details={
                "batches": totals.batches,
                "longest_batch_ms": round(totals.longest_s * 1000, 1),
                "retries": totals.retries,
                "partitions_dropped": totals.containers,
                "skipped_ranges": totals.skipped,
                "dependents": dict(totals.dependents),
                "stopped": stopped,
            },
        )

    # -- reconciliation ------------------------------------------------------------------------

    def _present(self, conn: Connection, keys: Sequence[bytes]) -> set[bytes]:
        present: set[bytes] = set()
        groups: dict[str | None, list[tuple[bytes, list[Any]]]] = {}
        for key in keys:
            decoded = decode_key(key)
            if decoded is None:  # a container (a dropped partition) named by its qualified name
                if has_table(conn, key.decode()):
                    present.add(key)
                continue
            groups.setdefault(decoded[0], []).append((key, decoded[1]))
        for qualified, items in groups.items():
            table = reflect_table(conn, qualified or self.rule.table, self.rule.name)
            pk = [table.c[c.name] for c in table.primary_key.columns]
            for start in range(0, len(items), _PRESENCE_CHUNK):
                chunk = items[start : start + _PRESENCE_CHUNK]
                query = select(*pk).where(key_match(pk, [v for _, v in chunk]))
                if qualified is None and self.rule.action == "mask":
                    # A masked row stays in the table: it is "removed" once nothing is left to mask.
                    query = query.where(or_(*[table.c[c].is_not(None) for c in self.rule.columns]))
                rows = conn.execute(query).all()
                if qualified is None:
                    found = set(encode_keys(rows, len(pk)))
                else:
                    found = set(encode_dependent_keys(qualified, rows, len(pk)))
                present |= {key for key, _ in chunk if key in found}
        return present

    def still_present(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of these keys (from an interrupted batch) are still in the database."""
        try:
            with self.engine.connect() as conn:
                return self._present(conn, keys)
        except sa_exc.SQLAlchemyError as exc:
            raise self._explain(exc) from None
        finally:
            self.engine.dispose()
