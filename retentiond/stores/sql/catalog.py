"""Check the identifiers a rule names against the database catalog (safety rule 4).

Nothing here builds SQL text: tables and columns are looked up with SQLAlchemy's inspector, and only
names found in the catalog are ever used, as quoted SQLAlchemy objects.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from retentiond.config.model import Hold, Rule


def split_table(qualified: str) -> tuple[str | None, str]:
    """`schema.table` -> ("schema", "table"); `table` -> (None, "table")."""
    schema, _, table = qualified.rpartition(".")
    return (schema or None), table


def rule_problems(
    conn: Connection, rule: Rule, where: str, holds: Iterable[tuple[str, Hold]] = ()
) -> list[tuple[str, str]]:
    """(key path, reason) for every table or column of `rule` that the catalog does not have."""
    inspector = inspect(conn)
    problems: list[tuple[str, str]] = []
    if rule.schema_name is not None and rule.schema_name not in inspector.get_schema_names():
        problems.append((f"{where}.schema", f'schema "{rule.schema_name}" does not exist'))
    if rule.table is None:
        return problems
    schema, table = split_table(rule.table)
    if not inspector.has_table(table, schema=schema):
        problems.append((f"{where}.table", f'table "{rule.table}" does not exist'))
        return problems
    columns = {c["name"]: c for c in inspector.get_columns(table, schema=schema)}
    named = [("age_column", rule.age_column)] if rule.age_column else []
    named += [(f"columns[{i}]", c) for i, c in enumerate(rule.columns)]
    for key, column in named:
        if column not in columns:
            problems.append((f"{where}.{key}", f'column "{column}" does not exist in {rule.table}'))
    for i, column in enumerate(rule.columns):
        if column in columns and not columns[column].get("nullable", True):
            problems.append(
                (f"{where}.columns[{i}]", f'column "{column}" is NOT NULL and cannot be masked')
            )
    for i, dependent in enumerate(rule.cascade):
        dep_schema, dep_table = split_table(dependent)
        if not inspector.has_table(dep_table, schema=dep_schema):
            problems.append((f"{where}.cascade[{i}]", f'table "{dependent}" does not exist'))
    for hold_where, held in holds:
        for column in held.where or {}:
            if column not in columns:
                problems.append(
                    (
                        f"{hold_where}.where.{column}",
                        f'column "{column}" does not exist in {rule.table}',
                    )
                )
    return problems
