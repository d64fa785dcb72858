"""MySQL and MariaDB: batches over primary-key ranges, short lock waits, READ COMMITTED.

InnoDB stores rows in primary-key order, so a purge walks the key in ranges sized by the time
budget. READ COMMITTED keeps the purge from taking gap locks that would block the application's
inserts; MariaDB returns the removed keys with DELETE ... RETURNING, MySQL locks the selected rows
first and deletes exactly those.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, TableClause, event, text
from sqlalchemy.engine import Connection

from retentiond.errors import RuleError
from retentiond.stores.sql.dialect import TIMEOUT, TRANSIENT, ForeignKeyRef, SqlDialect

# Lock wait timeout, deadlock; MariaDB and MySQL statement timeouts; lost connections.
_TIMEOUTS = {1205, 1969, 3024}
_TRANSIENT = {1213, 2003, 2006, 2013, 1927}

_REFERENCING = text(
    "SELECT CONSTRAINT_NAME, TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, REFERENCED_COLUMN_NAME "
    "FROM information_schema.KEY_COLUMN_USAGE "
    "WHERE REFERENCED_TABLE_SCHEMA = coalesce(:schema, DATABASE()) AND REFERENCED_TABLE_NAME = :name "
    "ORDER BY TABLE_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION"
)
_BYTES = text(
    "SELECT coalesce(DATA_LENGTH, 0) + coalesce(INDEX_LENGTH, 0) FROM information_schema.TABLES "
    "WHERE TABLE_SCHEMA = coalesce(:schema, DATABASE()) AND TABLE_NAME = :name"
)


def _code(exc: BaseException) -> int | None:
    args = getattr(getattr(exc, "orig", None), "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class MysqlDialect(SqlDialect):
    """MySQL 8 and MariaDB 10.5+."""

    name = "mysql"
    key_method = "pk-ranges"
    split_counts = True  # InnoDB counts from a secondary index; a full scan reads every row

    @staticmethod
    def engine_options(daemon: Any) -> dict[str, Any]:
        """READ COMMITTED: no gap locks, so the application's inserts never wait for a purge."""
        return {"isolation_level": "READ COMMITTED"}

    @property
    def ddl_commits(self) -> bool:
        """MySQL commits before and after DDL: a drop cannot share a transaction with its record."""
        return True

    def install(self) -> None:
        """Every connection gets the daemon's lock and statement timeouts."""
        lock_s = max(1, math.ceil(self.daemon.lock_timeout_ms / 1000))
        statement_s = self.daemon.statement_timeout_ms / 1000

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", (lock_s,))
            cursor.execute("SET SESSION lock_wait_timeout = %s", (lock_s,))
            cursor.execute("SELECT VERSION()")
            version = str(cursor.fetchone()[0])
            if "mariadb" in version.lower():
                cursor.execute("SET SESSION max_statement_time = %s", (statement_s,))
            else:
                cursor.execute("SET SESSION max_execution_time = %s", (int(statement_s * 1000),))
            cursor.close()

        event.listen(self.engine, "connect", on_connect)

    def server_now(self, conn: Connection) -> tuple[datetime, datetime]:
        """UTC_TIMESTAMP and NOW: DATETIME and TIMESTAMP columns read in the session's zone."""
        row: Any = conn.execute(text("SELECT UTC_TIMESTAMP(6), NOW(6)")).one()
        utc, local = row
        return utc.replace(tzinfo=UTC), local

    def relation_bytes(self, conn: Connection, table: TableClause) -> int:
        """Data and index length from information_schema (InnoDB's estimate)."""
        params = {"schema": getattr(table, "schema", None), "name": getattr(table, "name", "")}
        value = conn.execute(_BYTES, params).scalar()
        return int(value or 0)

    def referencing(self, conn: Connection, table: Table) -> list[ForeignKeyRef]:
        """Foreign keys referencing `table`, from information_schema."""
        default = conn.execute(text("SELECT DATABASE()")).scalar()
        grouped: dict[tuple[str, str, str], tuple[list[str], list[str]]] = {}
        rows: Any = conn.execute(_REFERENCING, {"schema": table.schema, "name": table.name})
        for name, schema, owner, col, referred in rows:
            cols, refs = grouped.setdefault((schema, owner, name), ([], []))
            cols.append(col)
            refs.append(referred)
        return [
            ForeignKeyRef(
                name=name,
                schema=None if schema == default else schema,
                table=owner,
                columns=tuple(cols),
                referred=tuple(refs),
            )
            for (schema, owner, name), (cols, refs) in grouped.items()
        ]

    @contextmanager
    def read_only(self, conn: Connection) -> Iterator[Connection]:
        """A READ ONLY transaction: the server refuses any write the plan might attempt."""
        # A plan's counts read the whole table without locking it: no statement timeout.
        self._statement_limit(conn, 0)
        conn.exec_driver_sql("START TRANSACTION READ ONLY")
        try:
            yield conn
        finally:
            conn.rollback()
            self._statement_limit(conn, self.daemon.statement_timeout_ms / 1000)

    def _statement_limit(self, conn: Connection, seconds: float) -> None:
        if self.engine.dialect.is_mariadb:  # type: ignore[attr-defined]
            conn.execute(text("SET SESSION max_statement_time = :s"), {"s": seconds})
        else:
            conn.execute(text("SET SESSION max_execution_time = :s"), {"s": int(seconds * 1000)})
        conn.commit()

    def count_after_purge(self, conn: Connection, query: Any) -> int:
        """The post-check count reads the whole table without locking it: no statement timeout."""
        self._statement_limit(conn, 0)
        try:
            return int(conn.execute(query).scalar_one())
        finally:
            conn.rollback()
            self._statement_limit(conn, self.daemon.statement_timeout_ms / 1000)

    def classify(self, exc: BaseException) -> str | None:
        """Lock and statement timeouts shrink the batch; deadlocks and lost connections retry."""
        code = _code(exc)
        if code in _TIMEOUTS:
            return TIMEOUT
        if code in _TRANSIENT:
            return TRANSIENT
        return super().classify(exc)

    def explain(self, exc: BaseException, rule: str, configured: str) -> RuleError | None:
        """Missing table or column: the schema changed under the rule; a foreign key blocked."""
        code = _code(exc)
        if code in (1146, 1054):
            return RuleError(
                f'rule "{rule}": table: {configured} or one of its columns changed during the run '
                "(renamed or dropped?)"
            )
        if code == 1451:
            return RuleError(
                f'rule "{rule}": cascade: a foreign key blocked the delete from {configured}; '
                "run `retentiond check --connect` and list its table in cascade"
            )
        return None
