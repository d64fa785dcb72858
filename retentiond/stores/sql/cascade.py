"""Foreign keys that reference a purged table: listed dependents are deleted, others are errors.

Safety rule 5: no surprise cascades. Every foreign key that references the rule's table (directly or
through a listed dependent) must name a table listed in the rule's `cascade`; the dependent rows of
exactly the rows being purged are deleted first, in the same transaction, whatever ON DELETE says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, delete, inspect, select, tuple_
from sqlalchemy.engine import Connection

from retentiond.errors import RuleError
from retentiond.stores.sql.catalog import split_table
from retentiond.stores.sql.dialect import ForeignKeyRef, SqlDialect
from retentiond.stores.sql.table import encode_dependent_keys, key_match, reflect_table

_CHUNK = 1000  # keys per IN list: well under every database's limit on bound parameters
_MAX_DEPTH = 8


class BatchMismatch(Exception):
    """A statement touched a different number of rows than were locked for it; the batch retries."""


@dataclass(frozen=True)
class CascadeNode:
    """A listed dependent table, the foreign key that ties it to its parent, and its own dependents."""

    fk: ForeignKeyRef
    table: Table
    qualified: str
    pk: tuple[str, ...]
    children: tuple[CascadeNode, ...]


def _normal(qualified: str, default: str | None) -> tuple[str | None, str]:
    schema, name = split_table(qualified)
    return (schema or default), name


def build_cascade(
    conn: Connection,
    dialect: SqlDialect,
    rule: Any,
    table: Table,
    configured: str,
    depth: int = 0,
) -> tuple[CascadeNode, ...]:
    """The tree of dependents to delete before rows of `table`; RuleError for an unlisted one."""
    default = inspect(conn).default_schema_name
    listed = {_normal(c, default) for c in rule.cascade}
    me = (table.schema or default, table.name)
    nodes = []
    for ref in dialect.referencing(conn, table):
        owner = _normal(ref.qualified, default)
        if owner == me:
            raise RuleError(
                f'rule "{rule.name}": table: foreign key "{ref.name}" of {configured} references '
                "the table itself; self-referencing tables cannot be purged safely"
            )
        if owner not in listed:
            raise RuleError(
                f'rule "{rule.name}": cascade: foreign key "{ref.name}" of {ref.qualified} '
                f"references {configured}; list {ref.qualified} in cascade to delete its rows too"
            )
        if depth >= _MAX_DEPTH:
            raise RuleError(
                f'rule "{rule.name}": cascade: dependents nest deeper than {_MAX_DEPTH}'
            )
        child = reflect_table(conn, ref.qualified, rule.name, key="cascade")
        pk = tuple(c.name for c in child.primary_key.columns)
        if not pk:
            raise RuleError(f'rule "{rule.name}": cascade: {ref.qualified} has no primary key')
        grandchildren = build_cascade(conn, dialect, rule, child, ref.qualified, depth + 1)
        nodes.append(CascadeNode(ref, child, ref.qualified, pk, grandchildren))
    return tuple(nodes)


def referred_columns(nodes: Sequence[CascadeNode]) -> list[str]:
    """Columns of the parent whose values the dependents reference."""
    names: list[str] = []
    for node in nodes:
        names += [c for c in node.fk.referred if c not in names]
    return names


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def remove_dependents(
    conn: Connection,
    node: CascadeNode,
    parent_values: Sequence[tuple[Any, ...]],
    counts: dict[str, int],
) -> list[bytes]:
    """Delete the rows of `node` that reference these parent values (and their own dependents).

    Rows are locked first, so the delete removes exactly the rows whose keys are returned.
    """
    values = [v for v in parent_values if all(x is not None for x in v)]
    if not values:
        return []
    fk_cols = [node.table.c[c] for c in node.fk.columns]
    pk_cols = [node.table.c[c] for c in node.pk]
    wanted = list(node.pk) + [c for c in referred_columns(node.children) if c not in node.pk]
    rows: list[tuple[Any, ...]] = []
    for chunk in _chunks(values):
        match = (
            fk_cols[0].in_([v[0] for v in chunk])
            if len(fk_cols) == 1
            else tuple_(*fk_cols).in_([tuple(v) for v in chunk])
        )
        query = select(*[node.table.c[c] for c in wanted]).where(match).with_for_update()
        rows += [tuple(r) for r in conn.execute(query)]
    if not rows:
        return []
    keys: list[bytes] = []
    for child in node.children:
        positions = [wanted.index(c) for c in child.fk.referred]
        keys += remove_dependents(
            conn, child, [tuple(r[p] for p in positions) for r in rows], counts
        )
    width = len(node.pk)
    for chunk in _chunks(rows):
        result = conn.execute(
            delete(node.table).where(key_match(pk_cols, [r[:width] for r in chunk]))
        )
        if result.rowcount != len(chunk):
            raise BatchMismatch(node.qualified)
    keys += encode_dependent_keys(node.qualified, rows, width)
    counts[node.qualified] = counts.get(node.qualified, 0) + len(rows)
    return keys
