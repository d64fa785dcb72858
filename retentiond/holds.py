"""Holds: exemptions that beat every rule, from the config and from the state database."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from sqlalchemy import select
from sqlalchemy.engine import Connection

from retentiond.config.model import Config, Hold, Rule
from retentiond.engine import HoldSpec
from retentiond.state.models import hold as hold_table


def _active_until(until: date | datetime | None, today: date) -> bool:
    if until is None:
        return True
    last_day = until.date() if isinstance(until, datetime) else until
    return last_day >= today


def _same_table(held: str, ruled: str | None) -> bool:
    # "results" and "public.results" may name the same table: when either side has no schema,
    # the names alone decide, so a hold never misses its table (a hold beats every rule).
    if ruled is None:
        return False
    held_schema, _, held_name = held.rpartition(".")
    rule_schema, _, rule_name = ruled.rpartition(".")
    if held_name != rule_name:
        return False
    return not held_schema or not rule_schema or held_schema == rule_schema


def _applies(spec: HoldSpec, rule: Rule) -> bool:
    if spec.rule is not None:
        return spec.rule == rule.name
    if spec.table is not None:
        return _same_table(spec.table, rule.table)
    return True  # a path hold without a rule applies to every files rule


def _from_config(index: int, held: Hold) -> HoldSpec:
    return HoldSpec(
        reason=held.reason,
        rule=held.rule,
        table=held.table,
        where={k: tuple(v) for k, v in held.where.items()} if held.where else None,
        path_prefix=held.path,
        source=f"config:{index}",
    )


def state_holds(conn: Connection, now: datetime) -> list[HoldSpec]:
    """Holds added with `retentiond hold add` that are neither released nor past their end."""
    rows = conn.execute(select(hold_table).where(hold_table.c.released_at.is_(None))).all()
    specs = []
    for row in rows:
        if not _active_until(row.until, now.astimezone(UTC).date()):
            continue
        where = json.loads(row.where_json) if row.where_json else None
        specs.append(
            HoldSpec(
                reason=row.reason,
                rule=row.rule,
                table=row.table_name,
                where={k: tuple(v) for k, v in where.items()} if where else None,
                path_prefix=row.path_prefix,
                source=f"state:{row.id}",
            )
        )
    return specs


def holds_for_rule(
    config: Config, rule: Rule, conn: Connection | None, now: datetime
) -> tuple[HoldSpec, ...]:
    """Every active hold that applies to `rule` (config holds first, then state holds)."""
    today = now.astimezone(UTC).date()
    specs = [
        _from_config(i, h) for i, h in enumerate(config.holds) if _active_until(h.until, today)
    ]
    if conn is not None:
        specs += state_holds(conn, now)
    return tuple(s for s in specs if _applies(s, rule))
