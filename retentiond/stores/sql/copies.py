"""Post-migration copies in a database: a table or a schema dropped once `since + retain` passed.

The deadline is compared with the database server's clock. The copy is locked, its rows counted and
the count recorded before the drop, in one transaction where the database allows DDL in one
(PostgreSQL, SQLite), so the ledger says exactly how many rows disappeared with it. A foreign key
from outside the copy, or a hold on it, keeps the copy and fails (or skips) the rule.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, time
from typing import Any

from sqlalchemy import MetaData, Table, TableClause, func, inspect, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DropSchema, ExecutableDDLElement
from sqlalchemy.sql.compiler import DDLCompiler

from retentiond.engine import BatchJournal, Outcome, Plan, TargetContext
from retentiond.errors import RuleError
from retentiond.stores.sql.batch import Recorder
from retentiond.stores.sql.dialect import ContainerDrop, SqlDialect, sqlstate_of
from retentiond.stores.sql.table import has_table


class LockTable(ExecutableDDLElement):
    """Take an exclusive lock on a table for the rest of the transaction (quoted by SQLAlchemy)."""

    def __init__(self, relation: TableClause) -> None:
        self.relation = relation


@compiles(LockTable, "postgresql")
def _lock_pg(element: LockTable, compiler: DDLCompiler, **kw: Any) -> str:
    name = compiler.preparer.format_table(element.relation)
    return f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"


@compiles(LockTable, "mysql")
def _lock_mysql(element: LockTable, compiler: DDLCompiler, **kw: Any) -> str:
    return f"LOCK TABLES {compiler.preparer.format_table(element.relation)} WRITE"


@compiles(LockTable)
def _lock_other(element: LockTable, compiler: DDLCompiler, **kw: Any) -> str:
    # SQLite: BEGIN IMMEDIATE already holds the database's only write lock.
    return "SELECT 1"


def _qualified(table: Table) -> str:
    return f"{table.schema}.{table.name}" if table.schema else table.name


class CopyTarget:
    """A `drop` rule: a table (`table`) or a whole schema (`schema`) that is a migration copy."""

    def __init__(self, context: TargetContext, engine: Engine, dialect: SqlDialect) -> None:
        self.context = context
        self.rule = context.rule
        self.engine = engine
        self.dialect = dialect
        self.configured: str = self.rule.table or self.rule.schema_name or "?"

    def _tables(self, conn: Connection) -> list[Table]:
        """The copy's tables, reflected; empty when the copy is gone (already dropped)."""
        metadata = MetaData()
        if self.rule.schema_name is not None:
            if self.rule.schema_name not in inspect(conn).get_schema_names():
                return []
            metadata.reflect(conn, schema=self.rule.schema_name, resolve_fks=False)
            return list(metadata.sorted_tables)
        schema, _, name = self.rule.table.rpartition(".")
        if not has_table(conn, self.rule.table):
            return []
        return [Table(name, metadata, schema=schema or None, autoload_with=conn)]

    def _check_outside_references(self, conn: Connection, tables: list[Table]) -> None:
        default = inspect(conn).default_schema_name
        inside = {(t.schema or default, t.name) for t in tables}
        for table in tables:
            for ref in self.dialect.referencing(conn, table):
                if (ref.schema or default, ref.table) not in inside:
                    raise RuleError(
                        f'rule "{self.rule.name}": foreign key "{ref.name}" of {ref.qualified} '
                        f"references the copy {self.configured}; the copy is kept"
                    )

    def _held(self) -> bool:
        return any(h.where is None and h.path_prefix is None for h in self.context.holds)

    def _deadline(self) -> datetime:
        since = datetime.combine(self.rule.since, time(), tzinfo=UTC)
        deadline: datetime = self.rule.retain.add_to(since)
        return deadline

    def plan(self) -> Plan:
        """The copy's size, and whether its deadline passed by the server's clock; read-only."""
        try:
            with self.engine.connect() as conn, self.dialect.read_only(conn):
                now, _ = self.dialect.server_now(conn)
                tables = self._tables(conn)
                self._check_outside_references(conn, tables)
                rows = sum(
                    int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                    for t in tables
                )
                size = sum(self.dialect.relation_bytes(conn, t) for t in tables)
        except sa_exc.SQLAlchemyError as exc:
            raise self._explain(exc) from None
        finally:
            self.engine.dispose()
        deadline = self._deadline()
        due = now >= deadline and (bool(tables) or self.rule.schema_name is not None)
        held = self._held()
        return Plan(
            rule=self.rule.name,
            action="drop",
            target=self.configured,
            method="drop-schema" if self.rule.schema_name else "drop-table",
            cutoff=None,
            clock="database",
            total_items=rows,
            expired_items=rows if due and not held else 0,
            held_items=rows if due and held else 0,
            bytes=size if due and not held else 0,
            oldest_age_seconds=(now - deadline).total_seconds() if due else None,
            details={
                "deadline": deadline.isoformat(),
                "due": due,
                "held": held,
                "present": bool(tables),
                "tables": len(tables),
            },
        )

    def _explain(self, exc: sa_exc.SQLAlchemyError) -> BaseException:
        if sqlstate_of(exc) == "2BP01":
            return RuleError(
                f'rule "{self.rule.name}": schema: {self.configured} holds objects other than '
                "tables (views, functions, types) or is used from outside; the copy is kept"
            )
        found = self.dialect.explain(exc, self.rule.name, self.configured)
        return found if found is not None else exc

    def _container(self, tables: list[Table]) -> ContainerDrop:
        schema = self.rule.schema_name
        keys = tuple(_qualified(t) for t in tables) + ((schema,) if schema else ())

        # MySQL: LOCK TABLES takes one statement for all tables and forbids DROP DATABASE, so only
        # a single-table copy is locked there; elsewhere every table is locked until commit.
        lock = not (self.dialect.ddl_commits and schema)

        def measure(conn: Connection) -> tuple[int, int]:
            for table in tables if lock else ():
                conn.execute(LockTable(table))
            rows = sum(
                int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in tables
            )
            size = sum(self.dialect.relation_bytes(conn, t) for t in tables)
            return rows, size

        def remove(conn: Connection) -> None:
            for table in reversed(tables):  # dependents before the tables they reference
                table.drop(conn)
            if schema is not None:
                conn.execute(DropSchema(schema))  # RESTRICT: anything left keeps the schema
            if self.dialect.ddl_commits and not schema:
                conn.exec_driver_sql("UNLOCK TABLES")

        return ContainerDrop(keys=keys, source=None, measure=measure, remove=remove)

    def execute(self, plan: Plan, journal: BatchJournal, stop: threading.Event) -> Outcome:
        """Drop the copy if the plan found it due and nothing holds it."""
        method = plan.method
        if not plan.details.get("due") or plan.details.get("held") or stop.is_set():
            return Outcome(items=0, bytes=0, digest="", method=method)
        recorder = Recorder(self.engine, self.dialect, journal, self._present)
        try:
            with self.engine.connect() as conn:
                now, _ = self.dialect.server_now(conn)
                if now < self._deadline():
                    raise RuleError(f'rule "{self.rule.name}": the server clock went back')
                tables = self._tables(conn)
                self._check_outside_references(conn, tables)
                conn.rollback()
            if tables or self.rule.schema_name is not None:
                with recorder:
                    recorder.drop(self._container(tables))
        except sa_exc.SQLAlchemyError as exc:
            raise self._explain(exc) from None
        finally:
            self.engine.dispose()
        totals = recorder.totals
        return Outcome(items=totals.items, bytes=totals.bytes, digest="", method=method)

    def _present(self, conn: Connection, keys: Sequence[bytes]) -> set[bytes]:
        present = set()
        schemas = set(inspect(conn).get_schema_names())
        for key in keys:
            name = key.decode()
            if name == self.rule.schema_name:
                if name in schemas:
                    present.add(key)
            elif has_table(conn, name):
                present.add(key)
        return present

    def still_present(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of the copy's tables (or its schema) still exist."""
        try:
            with self.engine.connect() as conn:
                return self._present(conn, keys)
        finally:
            self.engine.dispose()
