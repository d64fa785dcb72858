"""`retentiond hold add|list|release`: legal holds kept in the state database.

Every change is a ledger entry. Key values of a hold are personal data: they stay in the state
database and reach the ledger only as a keyed digest.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import insert, select, update

from retentiond import humanize
from retentiond.commands.common import open_state, sign_checkpoint
from retentiond.config.model import Hold, check_identifier
from retentiond.errors import UsageError
from retentiond.ledger.digest import KeyDigest, row_item
from retentiond.ledger.store import append_entry
from retentiond.runner import Runner
from retentiond.state.models import hold as hold_table


def _parse_where(items: list[str]) -> dict[str, list[int | str]] | None:
    if not items:
        return None
    where: dict[str, list[int | str]] = {}
    for item in items:
        column, sep, values = item.partition("=")
        if not sep or not values:
            raise UsageError(f'--where: "{column}=..." needs COLUMN=V1,V2')
        try:
            check_identifier(column)
        except ValueError as exc:
            raise UsageError(f"--where: {exc}") from None
        where.setdefault(column, []).extend(
            int(v) if v.strip().lstrip("-").isdigit() else v.strip() for v in values.split(",")
        )
    return where


def _parse_until(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f'--until: "{text}" is not a date (YYYY-MM-DD)') from None


def _where_digest(key: bytes, where: dict[str, list[int | str]] | None, path: str | None) -> str:
    digest = KeyDigest(key)
    for column, values in sorted((where or {}).items()):
        digest.update(row_item([column, v]) for v in values)
    if path is not None:
        digest.add(path.encode())
    return digest.hexdigest()


def add(
    config_path: Path | None,
    rule: str | None,
    table: str | None,
    where: list[str],
    path: str | None,
    reason: str,
    until: str | None,
    out: TextIO,
) -> int:
    """Add a hold; it applies from the next run on and is recorded in the ledger."""
    loaded, engine = open_state(config_path)
    try:
        spec = Hold(
            rule=rule,
            table=table,
            where=_parse_where(where),
            path=path,
            reason=reason,
            until=_parse_until(until),
        )
    except ValueError as exc:
        raise UsageError(f"hold: {exc}") from None
    if rule is not None and rule not in {r.name for r in loaded.config.rules}:
        raise UsageError(f'--rule: no rule named "{rule}"')
    key = Runner(loaded, engine).commitment_key
    now = datetime.now(UTC)
    with engine.begin() as conn:
        hold_id = conn.execute(
            insert(hold_table).values(
                rule=spec.rule,
                table_name=spec.table,
                where_json=json.dumps(spec.where, sort_keys=True) if spec.where else None,
                path_prefix=spec.path,
                reason=spec.reason,
                until=datetime.combine(spec.until, datetime.min.time(), UTC)
                if spec.until
                else None,
                created_at=now,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        seq = append_entry(
            conn,
            {
                "kind": "hold",
                "event": "added",
                "hold_id": hold_id,
                "rule": spec.rule,
                "target": spec.table,
                "reason": spec.reason,
                "until": spec.until.isoformat() if spec.until else None,
                "digest": _where_digest(key, spec.where, spec.path),
                "count": sum(len(v) for v in (spec.where or {}).values())
                or (1 if spec.path else 0),
            },
        )
        conn.execute(update(hold_table).where(hold_table.c.id == hold_id).values(created_seq=seq))
    sign_checkpoint(engine, loaded.config)
    print(f"hold {hold_id} added (ledger entry {seq})", file=out)
    return 0


def list_holds(config_path: Path | None, as_json: bool, out: TextIO) -> int:
    """List holds: those in the config and those added with `hold add`."""
    loaded, engine = open_state(config_path)
    rows: list[dict[str, Any]] = []
    for index, held in enumerate(loaded.config.holds):
        rows.append(
            {
                "id": f"config:{index}",
                "rule": held.rule,
                "table": held.table,
                "keys": sum(len(v) for v in (held.where or {}).values()),
                "path": held.path is not None,
                "reason": held.reason,
                "until": held.until.isoformat() if held.until else None,
                "released": False,
            }
        )
    with engine.connect() as conn:
        for row in conn.execute(select(hold_table).order_by(hold_table.c.id)):
            where = json.loads(row.where_json) if row.where_json else {}
            rows.append(
                {
                    "id": row.id,
                    "rule": row.rule,
                    "table": row.table_name,
                    "keys": sum(len(v) for v in where.values()),
                    "path": row.path_prefix is not None,
                    "reason": row.reason,
                    "until": row.until.date().isoformat() if row.until else None,
                    "released": row.released_at is not None,
                }
            )
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
        return 0
    table = [
        (
            r["id"],
            r["rule"] or "*",
            r["table"] or "-",
            r["keys"],
            "yes" if r["path"] else "no",
            r["until"] or "-",
            "released" if r["released"] else "active",
            r["reason"],
        )
        for r in rows
    ]
    headers = ("ID", "RULE", "TABLE", "KEYS", "PATH", "UNTIL", "STATE", "REASON")
    print(humanize.table(headers, table), file=out)
    return 0


def release(config_path: Path | None, hold_id: int, reason: str, out: TextIO) -> int:
    """Release a hold added with `hold add` (config holds end by editing the config)."""
    loaded, engine = open_state(config_path)
    with engine.begin() as conn:
        row = conn.execute(select(hold_table).where(hold_table.c.id == hold_id)).first()
        if row is None:
            raise UsageError(f"hold {hold_id}: no such hold (see `retentiond hold list`)")
        if row.released_at is not None:
            raise UsageError(f"hold {hold_id}: already released")
        seq = append_entry(
            conn,
            {
                "kind": "hold",
                "event": "released",
                "hold_id": hold_id,
                "rule": row.rule,
                "target": row.table_name,
                "reason": reason,
            },
        )
        conn.execute(
            update(hold_table)
            .where(hold_table.c.id == hold_id)
            .values(released_at=datetime.now(UTC), released_seq=seq)
        )
    sign_checkpoint(engine, loaded.config)
    print(f"hold {hold_id} released (ledger entry {seq})", file=out)
    return 0


def dispatch(config_path: Path | None, args: argparse.Namespace, out: TextIO) -> int:
    """Route `hold add|list|release`."""
    match args.hold_command:
        case "add":
            return add(
                config_path,
                args.rule,
                args.table,
                args.where,
                args.path,
                args.reason,
                args.until,
                out,
            )
        case "list":
            return list_holds(config_path, args.json, out)
        case "release":
            return release(config_path, args.hold_id, args.reason, out)
    raise AssertionError(args.hold_command)
