"""`retentiond plan` and `retentiond apply`: what every rule would remove, and removing it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, TextIO

from retentiond import humanize
from retentiond.commands.common import open_state, sign_checkpoint
from retentiond.config import Config, Rule
from retentiond.engine import Plan
from retentiond.errors import RetentiondError, UsageError
from retentiond.runner import Runner, RunReport


def selected_rules(config: Config, name: str | None) -> list[Rule]:
    """The enabled rules, or the one named (exit 2 for an unknown name)."""
    if name is None:
        return [r for r in config.rules if r.enabled]
    try:
        return [config.rule(name)]
    except KeyError:
        known = ", ".join(r.name for r in config.rules) or "none"
        raise UsageError(f'--rule: no rule named "{name}" (rules: {known})') from None


def plan_json(plan: Plan) -> dict[str, Any]:
    """A plan as JSON-ready data."""
    return {
        "rule": plan.rule,
        "action": plan.action,
        "target": plan.target,
        "method": plan.method,
        "cutoff": plan.cutoff.isoformat() if plan.cutoff else None,
        "clock": plan.clock,
        "total_items": plan.total_items,
        "expired_items": plan.expired_items,
        "held_items": plan.held_items,
        "bytes": plan.bytes,
        "oldest_age_seconds": plan.oldest_age_seconds,
        "details": dict(plan.details),
    }


def _exit_code(failed: int, total: int) -> int:
    if failed == 0:
        return 0
    return 1 if failed == total else 4


def plan(config_path: Path | None, rule: str | None, as_json: bool, out: TextIO) -> int:
    """Show what every rule (or one) would remove now; writes nothing anywhere."""
    loaded, engine = open_state(config_path)
    runner = Runner(loaded, engine)
    plans: list[Plan] = []
    errors: list[tuple[str, str]] = []
    rules = selected_rules(loaded.config, rule)
    for item in rules:
        try:
            plans.append(runner.plan(item))
        except RetentiondError as exc:
            errors.append((item.name, str(exc)))
        except Exception as exc:
            errors.append((item.name, type(exc).__name__))
    if as_json:
        data = {
            "plans": [plan_json(p) for p in plans],
            "errors": [{"rule": r, "error": e} for r, e in errors],
        }
        print(json.dumps(data, indent=2), file=out)
    else:
        rows = [
            (
                p.rule,
                p.action,
                p.expired_items,
                p.held_items,
                humanize.size(p.bytes),
                humanize.age(p.oldest_age_seconds),
                p.method,
            )
            for p in plans
        ]
        headers = ("RULE", "ACTION", "EXPIRED", "HELD", "SIZE", "OLDEST", "METHOD")
        print(humanize.table(headers, rows), file=out)
        for name, error in errors:
            print(f"{name}: cannot plan: {error}", file=out)
    return _exit_code(len(errors), len(rules))


def report_json(report: RunReport) -> dict[str, Any]:
    """A run report as JSON-ready data."""
    outcome = report.outcome
    return {
        "rule": report.rule,
        "result": report.result,
        "run_id": report.run_id,
        "ledger_seq": report.ledger_seq,
        "items": outcome.items if outcome else 0,
        "bytes": outcome.bytes if outcome else 0,
        "method": outcome.method if outcome else None,
        "remaining_expired": outcome.remaining_expired if outcome else None,
        "message": report.message,
        "seconds": round(report.seconds, 3),
    }


def apply(config_path: Path | None, rule: str | None, as_json: bool, out: TextIO) -> int:
    """One pass of every rule (or one) now, with every guard; exit 4 if a rule was refused."""
    loaded, engine = open_state(config_path)
    runner = Runner(loaded, engine)
    runner.reconcile()
    reports = [runner.apply(r, threading.Event()) for r in selected_rules(loaded.config, rule)]
    sign_checkpoint(engine, loaded.config)
    if as_json:
        print(json.dumps([report_json(r) for r in reports], indent=2), file=out)
    else:
        rows = [
            (
                r.rule,
                r.result,
                r.outcome.items if r.outcome else 0,
                humanize.size(r.outcome.bytes if r.outcome else 0),
                r.outcome.remaining_expired if r.outcome else "-",
                r.message or "",
            )
            for r in reports
        ]
        headers = ("RULE", "RESULT", "REMOVED", "SIZE", "OVERDUE", "NOTE")
        print(humanize.table(headers, rows), file=out)
    refused = sum(r.result == "refused" for r in reports)
    failed = sum(r.result == "failure" for r in reports)
    if refused:
        return 4
    return _exit_code(failed, len(reports))
