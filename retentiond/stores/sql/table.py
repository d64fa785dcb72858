"""The table a row rule works on: reflected from the catalog, its keys, holds and predicate.

Every name used in a statement comes from reflection (safety rule 4): a rule's table, age column,
masked columns and hold columns are looked up in the catalog and used only as SQLAlchemy objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Column,
    ColumnElement,
    MetaData,
    Table,
    TableClause,
    and_,
    false,
    func,
    inspect,
    or_,
    true,
    tuple_,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.types import Date, DateTime

from retentiond.engine import HoldSpec
from retentiond.errors import RuleError
from retentiond.stores.sql.catalog import split_table


@dataclass(frozen=True)
class HoldFilter:
    """One hold on rows: a row is kept when any listed column holds one of the listed values."""

    source: str
    values: tuple[tuple[str, tuple[Any, ...]], ...]  # (column name, values kept)


@dataclass(frozen=True)
class RowTable:
    """A row rule's table as the catalog describes it, with what the rule selects in it."""

    rule: str
    action: str  # delete or mask
    configured: str  # the table as written in the config (for messages and the ledger)
    table: Table
    pk: tuple[str, ...]
    age: str
    masked: tuple[str, ...]
    holds: tuple[HoldFilter, ...]
    whole_hold: bool  # a hold without `where` keeps every row of the rule
    aware: bool  # the age column carries a time zone
    text_ages: bool = False  # SQLite: ages are ISO text; values of another type never compare

    def key_columns(self, source: TableClause) -> list[ColumnElement[Any]]:
        """The primary-key columns of `source` (the table or one of its partitions)."""
        return [source.c[name] for name in self.pk]

    def expired(self, source: TableClause, cutoff: datetime) -> ColumnElement[bool]:
        """Rows older than the cutoff (and, for mask, with something left to mask)."""
        older: ColumnElement[bool] = source.c[self.age] < cutoff
        if self.text_ages:
            # SQLite orders any number before any text: an epoch integer in a timestamp column
            # would look older than every cutoff. Only text timestamps are compared.
            older = and_(func.typeof(source.c[self.age]) == "text", older)
        if self.action == "mask":
            return and_(older, or_(*[source.c[c].is_not(None) for c in self.masked]))
        return older

    def held(self, source: TableClause) -> ColumnElement[bool]:
        """Rows a hold keeps; NULL key columns are not held (NULL IN (...) is never true)."""
        if self.whole_hold:
            return true()
        tests = [source.c[col].in_(vals) for h in self.holds for col, vals in h.values]
        return or_(false(), *tests)

    def unheld(self, source: TableClause) -> ColumnElement[bool]:
        """Rows no hold keeps, written so that a NULL key column counts as not held."""
        if self.whole_hold:
            return false()
        tests = [
            or_(source.c[col].is_(None), source.c[col].not_in(vals))
            for h in self.holds
            for col, vals in h.values
        ]
        return and_(true(), *tests)

    def selects(self, source: TableClause, cutoff: datetime) -> ColumnElement[bool]:
        """The rule's predicate: expired and not held; every statement that removes carries it."""
        return and_(self.expired(source, cutoff), self.unheld(source))


def _problem(rule: str, key: str, reason: str) -> RuleError:
    return RuleError(f'rule "{rule}": {key}: {reason}')


def reflect_table(conn: Connection, qualified: str, rule: str, key: str = "table") -> Table:
    """Reflect `schema.table` from the catalog; a missing table is a RuleError naming the key."""
    schema, name = split_table(qualified)
    try:
        return Table(name, MetaData(), schema=schema, autoload_with=conn)
    except sa_exc.NoSuchTableError:
        raise _problem(
            rule, key, f'table "{qualified}" does not exist (renamed or dropped?)'
        ) from None


def _column(table: Table, name: str, rule: str, key: str, configured: str) -> Column[Any]:
    if name not in table.c:
        raise _problem(rule, key, f'column "{name}" does not exist in {configured} (dropped?)')
    return table.c[name]


def _coerce(value: int | str, column: Column[Any], where: str, rule: str) -> Any:
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return value
    try:
        if kind is int and isinstance(value, str):
            return int(value)
        if kind is str and isinstance(value, int):
            return str(value)
        if kind is Decimal:
            return Decimal(str(value))
        if kind is UUID and isinstance(value, str):
            return UUID(value)
    except ValueError:
        raise _problem(rule, where, f'a value does not fit column "{column.name}"') from None
    return value


def _hold_filters(
    table: Table, holds: Iterable[HoldSpec], rule: str, configured: str
) -> tuple[tuple[HoldFilter, ...], bool]:
    filters: list[HoldFilter] = []
    whole = False
    for spec in holds:
        if spec.path_prefix is not None and spec.where is None:
            continue  # a files hold: nothing to keep here
        if spec.where is None:
            whole = True
            continue
        values = []
        for col_name, kept in spec.where.items():
            where = f"hold {spec.source}: where.{col_name}"
            column = _column(table, col_name, rule, where, configured)
            values.append((col_name, tuple(_coerce(v, column, where, rule) for v in kept)))
        filters.append(HoldFilter(source=spec.source, values=tuple(values)))
    return tuple(filters), whole


def build_row_table(
    conn: Connection, rule: Any, holds: Sequence[HoldSpec], text_ages: bool = False
) -> RowTable:
    """Reflect a delete or mask rule's table and check every name it uses against the catalog."""
    configured = rule.table
    table = reflect_table(conn, configured, rule.name)
    age = _column(table, rule.age_column, rule.name, "age_column", configured)
    if not isinstance(age.type, (Date, DateTime)):
        raise _problem(rule.name, "age_column", f'column "{age.name}" is not a date or timestamp')
    masked = []
    for i, name in enumerate(rule.columns):
        column = _column(table, name, rule.name, f"columns[{i}]", configured)
        if not column.nullable:
            raise _problem(rule.name, f"columns[{i}]", f'column "{name}" is NOT NULL')
        if column.primary_key or name == age.name:
            raise _problem(rule.name, f"columns[{i}]", f'column "{name}" cannot be masked')
        masked.append(name)
    if rule.action == "mask" and not masked:
        raise _problem(rule.name, "columns", "a mask rule needs at least one column")
    pk = tuple(c.name for c in table.primary_key.columns)
    if not pk:
        raise _problem(rule.name, "table", f"{configured} has no primary key")
    filters, whole = _hold_filters(table, holds, rule.name, configured)
    aware = bool(getattr(age.type, "timezone", False))
    return RowTable(
        rule=rule.name,
        action=rule.action,
        configured=configured,
        table=table,
        pk=pk,
        age=age.name,
        masked=tuple(masked),
        holds=filters,
        whole_hold=whole,
        aware=aware,
        text_ages=text_ages,
    )


def has_table(conn: Connection, qualified: str) -> bool:
    """True when `schema.table` exists in the catalog."""
    schema, name = split_table(qualified)
    return bool(inspect(conn).has_table(name, schema=schema))


# Keys: a row is the canonical JSON array of its primary-key values; a row of a cascaded table is
# [qualified table, [key values]], which no primary key can look like (a key value is never a list).


# One encoder for every key: json.dumps with options would build a new one per call.
_KEY_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def encode_key(values: Sequence[Any]) -> bytes:
    """The canonical bytes of one primary key (JSON array, compact, UTF-8, str() of the rest)."""
    return _KEY_ENCODER.encode(list(values)).encode()


def _quoted_str(value: Any) -> str:
    return str(_QUOTE(str(value)))


# The JSON text of key values of these exact types, byte for byte what _KEY_ENCODER writes (its
# string quoting is this same function; other types go through str()): a composite key is then
# joined from its parts without setting up the encoder once per row.
_QUOTE: Any = json.encoder.encode_basestring
_PARTS: dict[type, Any] = {int: int.__repr__, str: _QUOTE, datetime: _quoted_str, date: _quoted_str}


def encode_keys(rows: Iterable[Sequence[Any]], width: int) -> list[bytes]:
    """Canonical bytes of many keys; keys of integers, text and timestamps take a fast path with
    the same bytes."""
    out: list[bytes] = []
    if width == 1:
        for row in rows:
            value = row[0]
            if type(value) is int:
                out.append(b"[%d]" % value)
            else:
                out.append(encode_key((value,)))
        return out
    parts = _PARTS
    for row in rows:
        values = tuple(row)[:width]
        try:
            text = ",".join([parts[type(v)](v) for v in values])
        except KeyError:
            out.append(encode_key(values))
            continue
        out.append(f"[{text}]".encode())
    return out


def encode_dependent_keys(qualified: str, rows: Iterable[Sequence[Any]], width: int) -> list[bytes]:
    """Keys of rows removed from a cascaded table."""
    return [encode_key([qualified, list(tuple(row)[:width])]) for row in rows]


def decode_key(key: bytes) -> tuple[str | None, list[Any]] | None:
    """(cascaded table or None, key values) of row key bytes; None when `key` names a container."""
    if not key.startswith(b"["):
        return None
    values = json.loads(key)
    if len(values) == 2 and isinstance(values[0], str) and isinstance(values[1], list):
        return values[0], values[1]
    return None, values


def _parse_value(value: Any, column: ColumnElement[Any]) -> Any:
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return value
    if not isinstance(value, str) or kind is str:
        return value
    parsers: Mapping[type, Any] = {
        datetime: datetime.fromisoformat,
        date: date.fromisoformat,
        Decimal: Decimal,
        UUID: UUID,
        int: int,
    }
    parse = parsers.get(kind)
    return parse(value) if parse else value


def key_match(columns: Sequence[ColumnElement[Any]], keys: Sequence[Sequence[Any]]) -> Any:
    """A condition selecting exactly these keys (decoded values, parsed to the columns' types)."""
    parsed = [tuple(_parse_value(v, c) for v, c in zip(k, columns, strict=True)) for k in keys]
    if len(columns) == 1:
        return columns[0].in_([p[0] for p in parsed])
    return tuple_(*columns).in_(parsed)
