"""PostgreSQL: batches over physical ranges of the heap, whole-partition drops, session limits.

A purge walks the heap once in ranges of pages (`ctid >= '(p,0)' AND ctid < '(q,0)'`, a TID range
scan since PostgreSQL 14) sized by the time budget, so each page is read and written once and no
batch wades through the dead index entries of the previous ones. A table partitioned by range on
the age column loses its wholly expired partitions by DETACH and DROP, each in a short transaction
under lock_timeout, so the application never queues behind the purge for long.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    Table,
    TableClause,
    and_,
    bindparam,
    cast,
    column,
    event,
    func,
    literal,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.types import UserDefinedType

from retentiond.errors import RuleError
from retentiond.stores.sql.dialect import (
    TIMEOUT,
    TRANSIENT,
    ContainerDrop,
    ContainerFallback,
    ForeignKeyRef,
    Layout,
    SqlDialect,
    sqlstate_of,
)
from retentiond.stores.sql.table import RowTable
from retentiond.stores.sql.walk import BatchSizer, Walker

_TIMEOUTS = {"55P03", "57014"}  # lock_not_available, query_canceled (statement_timeout)
_TRANSIENT = {"40001", "40P01", "57P01", "57P02", "57P03", "53300"}
_BOUND = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$", re.DOTALL)

_OID = text(
    "SELECT c.oid, c.relkind FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = coalesce(:schema, current_schema()) AND c.relname = :name"
)
_PAGES = text(
    "SELECT pg_catalog.pg_relation_size(CAST(:oid AS oid)) / current_setting('block_size')::bigint"
)
_TOTAL_BYTES = text(
    "SELECT coalesce((SELECT sum(pg_catalog.pg_total_relation_size(t.relid)) "
    "FROM pg_catalog.pg_partition_tree(CAST(CAST(:oid AS oid) AS regclass)) t), "
    "pg_catalog.pg_total_relation_size(CAST(:oid AS oid)))"
)
_PARTITION_KEY = text(
    "SELECT pt.partstrat, pt.partnatts, a.attname FROM pg_catalog.pg_partitioned_table pt "
    "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0] "
    "WHERE pt.partrelid = CAST(:oid AS oid)"
)
_CHILDREN = text(
    "SELECT n.nspname, c.relname, c.relkind, pg_catalog.pg_get_expr(c.relpartbound, c.oid), c.oid "
    "FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE i.inhparent = CAST(:oid AS oid) ORDER BY c.relname"
)
_LEAVES = text(
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_partition_tree(CAST(CAST(:oid AS oid) AS regclass)) t "
    "JOIN pg_catalog.pg_class c ON c.oid = t.relid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE t.isleaf ORDER BY c.relname"
)
_REFERENCING = text(
    "SELECT con.conname, cn.nspname, cc.relname, "
    "ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(num, ord) "
    "  JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num "
    "  ORDER BY k.ord), "
    "ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(num, ord) "
    "  JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num "
    "  ORDER BY k.ord) "
    "FROM pg_catalog.pg_constraint con "
    "JOIN pg_catalog.pg_class cc ON cc.oid = con.conrelid "
    "JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace "
    "WHERE con.contype = 'f' AND con.confrelid = CAST(:oid AS oid) AND con.conparentid = 0 "
    "ORDER BY con.conname"
)


class _Tid(UserDefinedType[str]):
    """PostgreSQL's tuple identifier type, for comparisons with the ctid system column."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "TID"


# ctid is a fixed system column name, never user input.
CTID = literal_column("ctid", _Tid())


def _tid(page: int) -> ColumnElement[Any]:
    return cast(bindparam(None, f"({page},0)", type_=String()), _Tid())


class DetachPartition(ExecutableDDLElement):
    """ALTER TABLE parent DETACH PARTITION child, both names quoted by SQLAlchemy."""

    def __init__(self, parent: TableClause, child: TableClause) -> None:
        self.parent = parent
        self.child = child


class DropRelation(ExecutableDDLElement):
    """DROP TABLE of a table known only from the catalog (a partition), quoted by SQLAlchemy."""

    def __init__(self, relation: TableClause) -> None:
        self.relation = relation


@compiles(DetachPartition, "postgresql")
def _detach_sql(element: DetachPartition, compiler: DDLCompiler, **kw: Any) -> str:
    fmt = compiler.preparer.format_table
    return f"ALTER TABLE {fmt(element.parent)} DETACH PARTITION {fmt(element.child)}"


@compiles(DropRelation)
def _drop_sql(element: DropRelation, compiler: DDLCompiler, **kw: Any) -> str:
    return f"DROP TABLE {compiler.preparer.format_table(element.relation)}"


class CtidWalker:
    """Ranges of heap pages [p, p + n), up to the table's size when the walk started."""

    def __init__(self, pages: int, sizer: BatchSizer) -> None:
        self.sizer = sizer
        self._pages = pages
        self._next = 0
        self._end = 0

    def next_scope(self, conn: Connection) -> ColumnElement[bool] | None:
        """The next range of pages, or None past the last page."""
        if self._next >= self._pages:
            return None
        self._end = self._next + self.sizer.current()
        return and_(_tid(self._next) <= CTID, _tid(self._end) > CTID)

    def advance(self, removed: int) -> None:
        """Move past the last range."""
        self._next = self._end


def _unquote(value: str) -> str | None:
    value = value.strip()
    if value.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    if value.startswith("'") and value.endswith("'"):
        return value[1:-1].replace("''", "'")
    return value


def relation_of(name: str, schema: str | None, like: Table) -> TableClause:
    """A catalog-named relation with the columns of `like` (a partition of it)."""
    return table(name, *[column(c.name, c.type) for c in like.c], schema=schema)


class PostgresDialect(SqlDialect):
    """PostgreSQL 12 and later (TID range scans from 14)."""

    name = "postgresql"

    def install(self) -> None:
        """Every connection gets the daemon's lock and statement timeouts."""
        lock_ms = f"{int(self.daemon.lock_timeout_ms)}ms"
        statement_ms = f"{int(self.daemon.statement_timeout_ms)}ms"

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # force_custom_plan: a prepared batch statement must be planned for its own range,
            # not with a generic plan that ignores the bounds.
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, false), "
                "set_config('statement_timeout', %s, false), "
                "set_config('plan_cache_mode', 'force_custom_plan', false), "
                "set_config('application_name', 'retentiond', false)",
                (lock_ms, statement_ms),
            )
            cursor.close()
            dbapi_connection.commit()

        event.listen(self.engine, "connect", on_connect)

    def removed_keys(
        self, conn: Connection, statement: Any, key: list[ColumnElement[Any]]
    ) -> list[bytes]:
        """One integer key comes back as one array (array_agg over the RETURNING rows): the
        driver then builds one value, not a row per removed key."""
        if len(key) != 1 or not isinstance(key[0].type, Integer):
            return super().removed_keys(conn, statement, key)
        removed = statement.returning(key[0]).cte("removed")
        values = conn.execute(select(func.array_agg(removed.c[0]))).scalar() or []
        return [b"[%d]" % v for v in values]

    def count_after_purge(self, conn: Connection, query: Any) -> int:
        """A sequential scan: right after a purge, an index on the age column still points at
        every deleted row, and following it would visit each dead row again."""
        with conn.begin():
            conn.execute(text("SELECT set_config('statement_timeout', '0', true)"))
            conn.execute(text("SELECT set_config('enable_indexscan', 'off', true)"))
            conn.execute(text("SELECT set_config('enable_bitmapscan', 'off', true)"))
            conn.execute(text("SELECT set_config('enable_indexonlyscan', 'off', true)"))
            return int(conn.execute(query).scalar_one())

    def server_now(self, conn: Connection) -> tuple[datetime, datetime]:
        """now() and localtimestamp: the same instant, aware and in the session's time zone."""
        row: Any = conn.execute(text("SELECT now(), localtimestamp")).one()
        return row[0], row[1]

    def _oid(self, conn: Connection, source: TableClause) -> tuple[int, str] | None:
        schema = getattr(source, "schema", None)
        row = conn.execute(_OID, {"schema": schema, "name": getattr(source, "name", "")}).first()
        return None if row is None else (int(row[0]), str(row[1]))

    def splits_counts(self, conn: Connection, table: TableClause) -> bool:
        """A partitioned table is counted by two queries: the expired rows with pruning on the
        age column (only the partitions before the cutoff are read), the total by count(*) alone
        (index-only scans), instead of one scan evaluating the predicate on every row."""
        found = self._oid(conn, table)
        return found is not None and found[1] == "p"

    def relation_bytes(self, conn: Connection, table: TableClause) -> int:
        """Heap, indexes and TOAST of the table and all its partitions."""
        found = self._oid(conn, table)
        if found is None:
            return 0
        return int(conn.execute(_TOTAL_BYTES, {"oid": found[0]}).scalar_one())

    def referencing(self, conn: Connection, table: Table) -> list[ForeignKeyRef]:
        """Foreign keys referencing `table`, from pg_constraint (one per constraint, not per
        partition)."""
        found = self._oid(conn, table)
        if found is None:
            return []
        default = conn.execute(text("SELECT current_schema()")).scalar()
        refs = []
        rows: Any = conn.execute(_REFERENCING, {"oid": found[0]})
        for name, schema, owner, cols, referred in rows:
            refs.append(
                ForeignKeyRef(
                    name=name,
                    schema=None if schema == default else schema,
                    table=owner,
                    columns=tuple(cols),
                    referred=tuple(referred),
                )
            )
        return refs

    def walker(self, conn: Connection, rt: RowTable, source: TableClause) -> Walker | None:
        """Heap page ranges on PostgreSQL 14+, key ranges before."""
        version = self.engine.dialect.server_version_info or (0,)
        found = self._oid(conn, source)
        if version < (14,) or found is None or found[1] != "r":
            return super().walker(conn, rt, source)
        pages = int(conn.execute(_PAGES, {"oid": found[0]}).scalar_one())
        return CtidWalker(pages, self.sizer("pages")) if pages else None

    def _leaves(self, conn: Connection, oid: int, like: Table) -> list[TableClause]:
        rows: Any = conn.execute(_LEAVES, {"oid": oid})
        return [relation_of(n, s, like) for s, n in rows]

    def _expiry(
        self, conn: Connection, rt: RowTable, bounds: list[str], cutoff: datetime
    ) -> list[tuple[bool, bool]]:
        """(wholly expired, wholly unexpired) of each partition bound, compared by the server in
        one statement (each bound cast to the age column's type)."""
        age_type = rt.table.c[rt.age].type
        at = literal(cutoff, age_type)
        tests: list[ColumnElement[Any]] = []
        for bound in bounds:
            match = _BOUND.match(bound)
            # A DEFAULT partition (no bounds) can hold anything: never wholly either.
            low, high = (
                (_unquote(match.group(1)), _unquote(match.group(2))) if match else (None, None)
            )
            never = literal(False)
            tests.append(cast(literal(high, String()), age_type) <= at if high else never)
            tests.append(cast(literal(low, String()), age_type) >= at if low else never)
        if not tests:
            return []
        flags = list(conn.execute(select(*tests)).one())
        return [(bool(flags[i]), bool(flags[i + 1])) for i in range(0, len(flags), 2)]

    def _drop_of(
        self, parent: Table, child: TableClause, oid: int, rt: RowTable, cutoff: datetime
    ) -> ContainerDrop:
        def measure(conn: Connection) -> tuple[int, int]:
            nbytes = int(conn.execute(_TOTAL_BYTES, {"oid": oid}).scalar_one())
            conn.execute(DetachPartition(parent, child))
            # Detached, nothing new can arrive: count it in the same transaction. Its bounds lie
            # wholly before the cutoff and a range partition holds no NULL key, so without holds
            # every row is selected and one count(*) (an index-only scan) is exact; with holds,
            # check that every row is one the rule selects before dropping it.
            if not rt.holds and not rt.whole_hold:
                total = conn.execute(select(func.count()).select_from(child)).scalar_one()
                return int(total), nbytes
            counts = select(func.count(), func.count().filter(rt.selects(child, cutoff)))
            total, selected = conn.execute(counts.select_from(child)).one()
            if total != selected:
                raise ContainerFallback(child.name)
            return int(total), nbytes

        def remove(conn: Connection) -> None:
            conn.execute(DropRelation(child))

        qualified = f"{child.schema}.{child.name}" if child.schema else child.name
        return ContainerDrop(keys=(qualified,), source=child, measure=measure, remove=remove)

    def layout(self, conn: Connection, rt: RowTable, cutoff: datetime, cascades: bool) -> Layout:
        """Wholly expired range partitions are dropped; partitions wholly newer than the cutoff
        are skipped; the rest (and any plain table) are walked by heap ranges."""
        found = self._oid(conn, rt.table)
        version = self.engine.dialect.server_version_info or (0,)
        method = "ctid-ranges" if version >= (14,) else self.key_method
        if found is None or found[1] != "p":
            return Layout(method, (), (rt.table,))
        key = conn.execute(_PARTITION_KEY, {"oid": found[0]}).first()
        by_age = key is not None and key[0] == "r" and key[1] == 1 and key[2] == rt.age
        drops: list[ContainerDrop] = []
        sources: list[TableClause] = []
        children: Any = conn.execute(_CHILDREN, {"oid": found[0]}).all()
        bounds = [str(c[3] or "") for c in children]
        ages = self._expiry(conn, rt, bounds, cutoff) if by_age else [(False, False)] * len(bounds)
        for (schema, name, relkind, _bound, oid), (expired, fresh) in zip(
            children, ages, strict=True
        ):
            child = relation_of(name, schema, rt.table)
            if fresh:
                continue
            if expired and rt.action == "delete" and not cascades and relkind in ("r", "p"):
                drops.append(self._drop_of(rt.table, child, int(oid), rt, cutoff))
            elif relkind == "p":
                sources += self._leaves(conn, int(oid), rt.table)
            else:
                sources.append(child)
        if drops:
            method = f"partition-drop+{method}"
        return Layout(method, tuple(drops), tuple(sources))

    @contextmanager
    def read_only(self, conn: Connection) -> Iterator[Connection]:
        """A READ ONLY transaction: the server refuses any write the plan might attempt."""
        with conn.begin():
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            # A plan's counts read the whole table and take no lock an application needs (only
            # DDL waits for them): the statement timeout, meant for writes, does not apply.
            conn.execute(text("SELECT set_config('statement_timeout', '0', true)"))
            yield conn

    def classify(self, exc: BaseException) -> str | None:
        """Lock and statement timeouts shrink the batch; conflicts and lost connections retry."""
        state = sqlstate_of(exc)
        if state in _TIMEOUTS:
            return TIMEOUT
        if state in _TRANSIENT or (state or "").startswith("08"):
            return TRANSIENT
        if state is None and isinstance(exc, sa_exc.OperationalError):
            # No SQLSTATE: the server was never reached or went away (restarting, refusing
            # connections); the batch's transaction is gone with it, so trying again is safe.
            return TRANSIENT
        return super().classify(exc)

    def explain(self, exc: BaseException, rule: str, configured: str) -> RuleError | None:
        """Undefined table or column: the schema changed under the rule; foreign key violation:
        a constraint the rule does not cover (named, never the row)."""
        state = sqlstate_of(exc)
        if state in ("42P01", "42703"):
            return RuleError(
                f'rule "{rule}": table: {configured} or one of its columns changed during the run '
                "(renamed or dropped?)"
            )
        if state == "23503":
            diag = getattr(getattr(exc, "orig", None), "diag", None)
            name = getattr(diag, "constraint_name", None) or "?"
            return RuleError(
                f'rule "{rule}": cascade: foreign key "{name}" blocked the delete from {configured}; '
                "list its table in cascade"
            )
        return None
