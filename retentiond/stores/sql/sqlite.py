"""SQLite: batches over rowid ranges, write transactions taken up front, a bounded busy wait.

SQLite has one writer at a time, so each batch is short (the time budget) and starts with BEGIN
IMMEDIATE: the purge takes the write lock before reading, so what it selects cannot change before it
deletes, and the application waits at most one batch. Reads (plans, catalog) take no write lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, TableClause, event, func, literal_column, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from retentiond.errors import RuleError
from retentiond.stores.sql.dialect import TIMEOUT, WRITE_OPTION, SqlDialect
from retentiond.stores.sql.table import RowTable
from retentiond.stores.sql.walk import Walker, int_range_walker

# rowid is SQLite's fixed name for the implicit row identifier, never user input.
ROWID = literal_column("rowid", Integer())


class SqliteDialect(SqlDialect):
    """SQLite 3.35 and later (RETURNING); earlier versions lock and delete by key."""

    name = "sqlite"
    key_method = "rowid-ranges"
    text_ages = True

    @staticmethod
    def engine_options(daemon: Any) -> dict[str, Any]:
        """The busy timeout is the lock timeout: how long a batch waits for the application."""
        return {"connect_args": {"timeout": daemon.lock_timeout_ms / 1000}}

    def install(self) -> None:
        """Take over transaction control from the driver so writes start with BEGIN IMMEDIATE."""

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            # Enforced foreign keys: a dependent the catalog did not show fails the batch instead
            # of being left dangling.
            dbapi_connection.execute("PRAGMA foreign_keys = ON")
            # A batch's dirty pages must fit in the page cache: a spill takes the exclusive lock
            # early (readers wait) and syncs mid-batch. 32 MiB, for this connection only.
            dbapi_connection.execute("PRAGMA cache_size = -32768")

        def on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get(WRITE_OPTION):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        event.listen(self.engine, "connect", on_connect)
        event.listen(self.engine, "begin", on_begin)

    def server_now(self, conn: Connection) -> tuple[datetime, datetime]:
        """SQLite's clock is the host's, in UTC, as CURRENT_TIMESTAMP writes it."""
        value: Any = conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        naive = datetime.fromisoformat(str(value))
        return naive.replace(tzinfo=UTC), naive

    def relation_bytes(self, conn: Connection, table: TableClause) -> int:
        """Pages of the table and its indexes (dbstat), or 0 when SQLite lacks dbstat."""
        name = getattr(table, "name", "")
        query = text(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = :name "
            "OR name IN (SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :name)"
        )
        try:
            with conn.begin_nested():
                return int(conn.execute(query, {"name": name}).scalar_one())
        except sa_exc.OperationalError:
            return 0

    def check_ages(self, conn: Connection, rt: RowTable) -> None:
        """Ages stored as numbers (epoch seconds, Julian days) cannot be compared with a text
        cutoff: the rule fails by name rather than never finding those rows expired."""
        age = rt.table.c[rt.age]
        query = select(func.count()).where(age.is_not(None), func.typeof(age) != "text")
        odd = int(conn.execute(query.select_from(rt.table)).scalar_one())
        if odd:
            raise RuleError(
                f'rule "{rt.rule}": age_column: {odd} rows of {rt.configured} hold a "{rt.age}" '
                "that is not an ISO timestamp text (numbers are not supported)"
            )

    def walker(self, conn: Connection, rt: RowTable, source: TableClause) -> Walker | None:
        """rowid ranges; a WITHOUT ROWID table is walked by its primary key instead."""
        columns = rt.key_columns(source)
        if len(columns) == 1 and isinstance(columns[0].type, Integer):
            # An INTEGER PRIMARY KEY is the rowid itself.
            return int_range_walker(conn, source, columns[0], self.sizer("keys"))
        ddl = conn.execute(
            text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"),
            {"name": getattr(source, "name", "")},
        ).scalar()
        if ddl is None or "WITHOUT ROWID" in " ".join(str(ddl).upper().split()):
            return super().walker(conn, rt, source)
        return int_range_walker(conn, source, ROWID, self.sizer("keys"))

    @contextmanager
    def read_only(self, conn: Connection) -> Iterator[Connection]:
        """query_only: SQLite itself refuses writes while the plan runs."""
        with conn.begin():
            conn.exec_driver_sql("PRAGMA query_only = ON")
            try:
                yield conn
            finally:
                conn.exec_driver_sql("PRAGMA query_only = OFF")

    def classify(self, exc: BaseException) -> str | None:
        """A busy database (the application holds the write lock) is a timeout."""
        orig = getattr(exc, "orig", None)
        if isinstance(orig, sqlite3.OperationalError) and (
            "locked" in str(orig) or "busy" in str(orig)
        ):
            return TIMEOUT
        return super().classify(exc)

    def explain(self, exc: BaseException, rule: str, configured: str) -> RuleError | None:
        """No such table or column: the schema changed under the rule; a foreign key blocked."""
        orig = getattr(exc, "orig", None)
        message = str(orig) if isinstance(orig, sqlite3.Error) else ""
        if message.startswith(("no such table", "no such column")):
            return RuleError(
                f'rule "{rule}": table: {configured} or one of its columns changed during the run '
                "(renamed or dropped?)"
            )
        if "FOREIGN KEY constraint failed" in message:
            return RuleError(
                f'rule "{rule}": cascade: a foreign key blocked the delete from {configured}; '
                "list its table in cascade"
            )
        return None
