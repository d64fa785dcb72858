"""`retentiond plan` and `retentiond apply`: what every rule would remove, and removing it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from sqlalchemy import select

from retentiond import humanize
from retentiond.commands.common import open_state, sign_checkpoint
from retentiond.config import Config, Rule
from retentiond.engine import Plan
from retentiond.errors import RetentiondError, UsageError
from retentiond.lease import Lease, LeaseBook, lease_ttl, utcnow
from retentiond.lease_keeper import LeaseKeeper
from retentiond.runner import Runner, RunReport, owner_id
from retentiond.state.models import run

log = logging.getLogger(__name__)


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
        "run_id": report.run_id or None,  # none when the rule was not run
        "ledger_seq": report.ledger_seq,
        "items": outcome.items if outcome else 0,
        "bytes": outcome.bytes if outcome else 0,
        "method": outcome.method if outcome else None,
        "remaining_expired": outcome.remaining_expired if outcome else None,
        "message": report.message,
        "seconds": round(report.seconds, 3),
    }


def apply(config_path: Path | None, rule: str | None, as_json: bool, out: TextIO) -> int:
    """One pass of every rule (or one) now, with every guard, each under its rule's lease.

    Exit 4 if a rule was refused; a rule that another process holds is not run and counts as
    failed; SIGTERM ends the running rule after its batch, starts no other and exits 143.
    """
    loaded, engine = open_state(config_path)
    runner = Runner(loaded, engine)
    config = loaded.config
    rules = selected_rules(config, rule)
    book = LeaseBook(engine, owner_id())
    book.ensure(r.name for r in config.rules)
    termination = _Termination()
    reports: list[RunReport] = []
    with termination.installed():
        _settle_others(runner, book, config, {r.name for r in rules})
        for item in rules:
            if termination.requested:
                break
            reports.append(_apply_rule(runner, book, item, termination))
    sign_checkpoint(engine, config)
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
    if termination.requested:
        log.warning(
            "stopped by SIGTERM after %d of %d rule(s); no other started", len(reports), len(rules)
        )
        return 143
    refused = sum(r.result == "refused" for r in reports)
    failed = sum(r.result in ("failure", "busy") for r in reports)
    if refused:
        return 4
    return _exit_code(failed, len(reports))


def _ttl(config: Config, rule: Rule) -> timedelta:
    """The lease TTL a daemon would use for the rule (half its interval, 5 to 60 s)."""
    return lease_ttl(rule.schedule or config.daemon.schedule, utcnow())


def _apply_rule(
    runner: Runner, book: LeaseBook, rule: Rule, termination: _Termination
) -> RunReport:
    """Run `rule` under its lease, or report it busy when a daemon or another apply holds it."""
    ttl = _ttl(runner.loaded.config, rule)
    lease = book.claim(rule.name, ttl)
    if lease is None:
        holder = book.holders().get(rule.name, (None, None, None))[0] or "another process"
        log.warning(
            "rule %s: not run: %s is running it (a daemon or another apply); nothing was removed",
            rule.name,
            holder,
        )
        return RunReport(rule.name, "busy", "", None, None, f"not run: held by {holder}", 0.0)
    stop = termination.watch(threading.Event())
    with LeaseKeeper(book, lease, ttl, on_lost=stop.set) as keeper:
        _settle(runner, rule.name, lease)
        report = runner.apply(rule, stop)
    if keeper.lost:
        report = dataclasses.replace(report, message="lease lost: stopped after its batch")
    return report


def _settle(runner: Runner, name: str, lease: Lease) -> None:
    """Reconcile the interrupted runs of a rule whose lease this process holds."""
    runner.reconcile(rules={name}, gone_owners=lease.gone_owners())


def _settle_others(runner: Runner, book: LeaseBook, config: Config, selected: set[str]) -> None:
    """Reconcile the interrupted runs of the rules not selected, each under its lease.

    A rule held elsewhere is left to its holder, which settles it before its next run.
    """
    with runner.state.connect() as conn:
        names: set[str] = set(
            conn.execute(
                select(run.c.rule).where(run.c.status.in_(("running", "unsettled")))
            ).scalars()
        )
    configured = {r.name: r for r in config.rules}
    for name in sorted(names - selected):
        if name not in configured:
            runner.reconcile(rules={name})  # logs that the rule is no longer configured
            continue
        lease = book.claim(name, _ttl(config, configured[name]))
        if lease is None:
            continue
        try:
            _settle(runner, name, lease)
        finally:
            book.release(lease)


class _Termination:
    """SIGTERM during `apply`: the running rule ends its batch (and records it), no other starts."""

    def __init__(self) -> None:
        self.requested = False
        self.current = threading.Event()

    def _on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        self.current.set()

    def watch(self, stop: threading.Event) -> threading.Event:
        """Make `stop` the event SIGTERM sets (already set when SIGTERM came before)."""
        self.current = stop
        if self.requested:
            stop.set()
        return stop

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handler in force for the block (only the main thread can install one)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)
