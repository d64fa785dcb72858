"""What differs between PostgreSQL, MySQL/MariaDB and SQLite, with generic defaults.

A dialect knows its server's clock, its session limits (lock and statement timeouts), how to walk a
table cheaply, how to find the foreign keys that reference a table, and which of its errors are
transient. The generic code in target.py and batch.py never needs to know which database it talks to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, Table, TableClause, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from retentiond.errors import RuleError
from retentiond.stores.sql.table import RowTable, encode_keys
from retentiond.stores.sql.walk import BatchSizer, KeysetWalker, Walker, int_range_walker

TRANSIENT = "transient"
TIMEOUT = "timeout"  # a lock or statement timeout: retry with a smaller batch
# Execution option of connections whose transactions write (SQLite starts them with BEGIN IMMEDIATE).
WRITE_OPTION = "retentiond_write"


@dataclass(frozen=True)
class ForeignKeyRef:
    """A foreign key of another table that references the purged table."""

    name: str
    schema: str | None
    table: str
    columns: tuple[str, ...]  # in the referencing table
    referred: tuple[str, ...]  # in the referenced table

    @property
    def qualified(self) -> str:
        """The referencing table as `schema.table` (or `table`)."""
        return f"{self.schema}.{self.table}" if self.schema else self.table


class ContainerFallback(Exception):
    """A container cannot be dropped whole after all (it holds rows the rule must keep)."""


@dataclass(frozen=True)
class ContainerDrop:
    """A whole container (a partition, a table or schema copy) dropped instead of row by row.

    `measure` runs first in the drop's transaction: it locks or detaches the container, counts its
    rows and may raise ContainerFallback; `remove` then drops it. Between the two, the count reaches
    the journal, so a drop is recorded before it can commit.
    """

    keys: tuple[str, ...]  # qualified names: what the ledger digests
    source: TableClause | None  # a partition, walked row by row if the drop falls back
    measure: Callable[[Connection], tuple[int, int]]  # (rows, bytes)
    remove: Callable[[Connection], None]


@dataclass(frozen=True)
class Layout:
    """How a table is purged: containers dropped whole, then sources walked row by row."""

    method: str
    drops: tuple[ContainerDrop, ...]
    sources: tuple[TableClause, ...]


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error wrapped by SQLAlchemy, when the driver gives one."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


class SqlDialect:
    """Generic behaviour; each database overrides what it does better or differently."""

    name = "sql"
    key_method = "pk-ranges"
    text_ages = False  # see RowTable.text_ages
    split_counts = False  # plan counts: one scan, or an index-friendly query per count

    def __init__(self, engine: Engine, daemon: Any) -> None:
        self.engine = engine
        self.daemon = daemon

    def splits_counts(self, conn: Connection, table: TableClause) -> bool:
        """True when the plan counts with one query per count (see split_counts)."""
        return self.split_counts

    @staticmethod
    def engine_options(daemon: Any) -> dict[str, Any]:
        """Extra create_engine options (connect arguments, isolation level)."""
        return {}

    def install(self) -> None:
        """Register the engine events that set session limits on every new connection."""

    @property
    def delete_returning(self) -> bool:
        """True when DELETE ... RETURNING gives the removed keys in the same statement."""
        return bool(self.engine.dialect.delete_returning)

    @property
    def update_returning(self) -> bool:
        """True when UPDATE ... RETURNING gives the changed keys in the same statement."""
        return bool(self.engine.dialect.update_returning)

    @property
    def ddl_commits(self) -> bool:
        """True when DDL commits the transaction by itself (MySQL): drops use the write-ahead."""
        return False

    def removed_keys(
        self, conn: Connection, statement: Any, key: list[ColumnElement[Any]]
    ) -> list[bytes]:
        """Run a DELETE or UPDATE with RETURNING of the key; the canonical bytes of each key."""
        rows = conn.execute(statement.returning(*key)).all()
        return encode_keys(rows, len(key))

    def check_ages(self, conn: Connection, rt: RowTable) -> None:
        """Raise a RuleError when the age column holds values the predicate cannot compare."""

    def count_after_purge(self, conn: Connection, query: Any) -> int:
        """Run the post-check count (a table that just lost many rows)."""
        return int(conn.execute(query).scalar_one())

    def server_now(self, conn: Connection) -> tuple[datetime, datetime]:
        """The server's clock: (aware now, naive now in the clock naive columns are written in)."""
        raise NotImplementedError

    def relation_bytes(self, conn: Connection, table: TableClause) -> int:
        """Bytes the table (with its indexes) takes on disk; 0 when unknown."""
        return 0

    def referencing(self, conn: Connection, table: Table) -> list[ForeignKeyRef]:
        """Foreign keys of other tables (or this one) that reference `table`."""
        inspector = inspect(conn)
        default = inspector.default_schema_name
        target = (table.schema or default, table.name)
        found: list[ForeignKeyRef] = []
        for schema in inspector.get_schema_names():
            for (owner_schema, owner), fks in inspector.get_multi_foreign_keys(
                schema=schema
            ).items():
                for fk in fks:
                    if (fk.get("referred_schema") or default, fk["referred_table"]) != target:
                        continue
                    found.append(
                        ForeignKeyRef(
                            name=fk.get("name")
                            or f"{owner}({','.join(fk['constrained_columns'])})",
                            schema=None if owner_schema in (None, default) else owner_schema,
                            table=owner,
                            columns=tuple(fk["constrained_columns"]),
                            referred=tuple(fk["referred_columns"]),
                        )
                    )
        return found

    def layout(self, conn: Connection, rt: RowTable, cutoff: datetime, cascades: bool) -> Layout:
        """The containers to drop and the tables to walk; generic: walk the table itself."""
        return Layout(self.key_method, (), (rt.table,))

    def sizer(self, unit: str) -> BatchSizer:
        """A batch sizer for walks in `unit` (pages, keys or rows), aiming at the budget."""
        budget = self.daemon.batch_budget_ms / 1000.0
        if unit == "pages":
            return BatchSizer(size=16, low=1, high=1 << 20, budget_s=budget)
        return BatchSizer(size=500, low=10, high=1 << 22, budget_s=budget)

    def walker(self, conn: Connection, rt: RowTable, source: TableClause) -> Walker | None:
        """A walk over `source` by key ranges (integer arithmetic when the key is one integer)."""
        columns = rt.key_columns(source)
        if len(columns) == 1 and isinstance(columns[0].type, Integer):
            return int_range_walker(conn, source, columns[0], self.sizer("keys"))
        return KeysetWalker(source, columns, self.sizer("rows"))

    @contextmanager
    def read_only(self, conn: Connection) -> Iterator[Connection]:
        """A transaction in which the database itself refuses writes (safety rule 7)."""
        with conn.begin():
            yield conn

    def classify(self, exc: BaseException) -> str | None:
        """TRANSIENT, TIMEOUT, or None for an error that retrying will not cure."""
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return TRANSIENT
        return None

    def explain(self, exc: BaseException, rule: str, configured: str) -> RuleError | None:
        """A RuleError for a failure we recognise (schema changed, foreign key), else None."""
        return None
