"""`retentiond run` and `retentiond status`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import func, select

from retentiond import humanize
from retentiond.commands.common import open_state
from retentiond.lease import LeaseBook
from retentiond.runner import as_utc
from retentiond.state.models import ledger_checkpoint, ledger_entry, rule_state


def run(config_path: Path | None) -> int:
    """Run the daemon (schedules, reloads, metrics) until SIGTERM."""
    from retentiond.daemon import run_daemon

    return run_daemon(config_path)


def _running_on(
    lease: tuple[str | None, datetime | None, datetime | None] | None, now: datetime
) -> str | None:
    """The daemon (host:pid) holding the rule's lease now, if any."""
    if lease is None:
        return None
    owner, _, expires = lease
    return owner if expires is not None and expires > now else None


def _iso(moment: datetime | None) -> str | None:
    moment = as_utc(moment)
    return moment.isoformat() if moment else None


def status(config_path: Path | None, as_json: bool, out: TextIO) -> int:
    """Each rule's last run, result, next run and overdue items; the ledger's last checkpoint."""
    loaded, engine = open_state(config_path)
    cfg = loaded.config
    now = datetime.now(UTC)
    leases = LeaseBook(engine, owner="status").holders()
    with engine.connect() as conn:
        states = {row.rule: row for row in conn.execute(select(rule_state))}
        entries = conn.execute(select(func.count()).select_from(ledger_entry)).scalar_one()
        last = conn.execute(
            select(ledger_checkpoint).order_by(ledger_checkpoint.c.id.desc()).limit(1)
        ).first()
    rules: list[dict[str, Any]] = []
    for rule in cfg.rules:
        row = states.get(rule.name)
        schedule = rule.schedule or cfg.daemon.schedule
        rules.append(
            {
                "rule": rule.name,
                "enabled": rule.enabled,
                "last_run": _iso(row.last_run_at) if row else None,
                "result": row.last_result if row else None,
                "last_success": _iso(row.last_success_at) if row else None,
                "next_run": schedule.next_after(now).isoformat() if rule.enabled else None,
                "overdue_items": row.overdue_items if row else None,
                "held_items": row.held_items if row else None,
                "running_on": _running_on(leases.get(rule.name), now),
            }
        )
    ledger = {
        "entries": entries,
        "checkpoint_size": last.tree_size if last else None,
        "checkpoint_time": _iso(last.created_at) if last else None,
    }
    if as_json:
        print(json.dumps({"rules": rules, "ledger": ledger}, indent=2), file=out)
        return 0
    table = [
        (
            r["rule"],
            f"running on {r['running_on']}" if r["running_on"] else (r["result"] or "never run"),
            r["last_run"] or "-",
            r["next_run"] or "disabled",
            "-" if r["overdue_items"] is None else r["overdue_items"],
        )
        for r in rules
    ]
    print(
        humanize.table(("RULE", "LAST RESULT", "LAST RUN", "NEXT RUN", "OVERDUE"), table), file=out
    )
    checkpoint = (
        f"checkpoint at size {ledger['checkpoint_size']}, {ledger['checkpoint_time']}"
        if last
        else "no checkpoint yet"
    )
    print(f"\nledger: {entries} entries; {checkpoint}", file=out)
    return 0
