"""One pass of one rule: plan, guards, journaled execution, post-check, ledger entry, rule state.

Errors are caught here, at the run's boundary, and nowhere deeper: one failing rule never stops the
others (safety rule 6), and what a failed run did commit is still written to the ledger.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import URL, Connection, Engine

from retentiond import keystore
from retentiond.config import LoadedConfig, Rule, rule_hash
from retentiond.config.model import FilesStore, SqlStore
from retentiond.config.secrets import store_url
from retentiond.engine import Outcome, Plan, Target, TargetContext
from retentiond.errors import ClockError, RetentiondError, describe_error
from retentiond.holds import holds_for_rule
from retentiond.journal import StateJournal, pending_batches, run_totals
from retentiond.lease import owner_gone
from retentiond.ledger.store import append_entry, newest_entry_time
from retentiond.state.models import rule_state, run
from retentiond.stores.registry import make_target

log = logging.getLogger(__name__)

_ENTRY_KIND = {"delete": "purge", "mask": "purge", "drop": "drop", "shred": "shred"}


@dataclass(frozen=True)
class RunReport:
    """How one run ended, for the command line, the daemon and the metrics."""

    rule: str
    result: str  # success, failure, refused; busy: held by another process, not run (apply)
    run_id: str
    plan: Plan | None
    outcome: Outcome | None
    message: str
    seconds: float
    ledger_seq: int | None = None


def owner_id() -> str:
    """host:pid of this process, recorded on runs so that an interrupted one can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _target_url(loaded: LoadedConfig, rule: Rule) -> URL | None:
    store = loaded.config.stores.get(rule.store or "")
    return store_url(store, rule.store or "") if isinstance(store, SqlStore) else None


def colocated(state: URL, target: URL | None) -> bool:
    """True when the state database is the target database (same server, same database)."""
    if target is None or state.get_backend_name() != target.get_backend_name():
        return False
    if state.get_backend_name() == "sqlite":
        return bool(state.database) and state.database == target.database
    return (state.host, state.port, state.database) == (target.host, target.port, target.database)


def guard_refusal(rule: Rule, plan: Plan) -> str | None:
    """Why the guards refuse this plan (safety rule 3), or None when it may run."""
    limit = rule.effective_max_fraction
    if plan.total_items and plan.expired_items > plan.total_items * limit:
        return (
            f"would remove {plan.expired_items} of {plan.total_items} items, more than "
            f"max_fraction {limit:g}"
        )
    if rule.max_items is not None and plan.expired_items > rule.max_items:
        return f"would remove {plan.expired_items} items, more than max_items {rule.max_items}"
    return None


def _base_fields(loaded: LoadedConfig, rule: Rule, run_id: str) -> dict[str, Any]:
    return {
        "rule": rule.name,
        "rule_hash": rule_hash(rule),
        "store": rule.store,
        "target": _target_text(rule),
        "run_id": run_id,
        "action": rule.action,
    }


def _target_text(rule: Rule) -> str:
    """The target as configured: a table, schema, glob or path; never a key or a value."""
    if rule.action == "shred":
        return "sealed copies"
    return (
        rule.table
        or (f"schema {rule.schema_name}" if rule.schema_name else None)
        or rule.glob
        or rule.path
        or ""
    )


def as_utc(moment: datetime | None) -> datetime | None:
    """An aware UTC datetime (SQLite hands back naive ones for timezone-aware columns)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _save_rule_state(conn: Connection, rule: Rule, report: RunReport, success: bool) -> None:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "config_hash": rule_hash(rule),
        "last_run_id": report.run_id,
        "last_run_at": now,
        "last_result": report.result,
    }
    if success:
        values["last_success_at"] = now
    if report.outcome is not None:
        values["overdue_items"] = report.outcome.remaining_expired
    elif report.plan is not None:
        # A refused or failed run vouches for no removal: all that the plan found expired is overdue.
        values["overdue_items"] = report.plan.expired_items
    if report.plan is not None:
        values["held_items"] = report.plan.held_items
        values["oldest_item_age_seconds"] = report.plan.oldest_age_seconds
    changed = conn.execute(
        update(rule_state).where(rule_state.c.rule == rule.name).values(**values)
    )
    if changed.rowcount == 0:
        conn.execute(insert(rule_state).values(rule=rule.name, **values))


class Runner:
    """Runs rules of one loaded config against one state database."""

    def __init__(self, loaded: LoadedConfig, state: Engine) -> None:
        self.loaded = loaded
        self.state = state
        with state.connect() as conn:
            self.commitment_key = keystore.commitment_key(conn, loaded.config.keys.kek_file)

    def context(self, rule: Rule, conn: Connection, now: datetime) -> TargetContext:
        """The TargetContext of `rule` with the holds active now."""
        cfg = self.loaded.config
        return TargetContext(
            rule=rule,
            store_name=rule.store,
            store=cfg.stores.get(rule.store or ""),
            holds=holds_for_rule(cfg, rule, conn, now),
            daemon=cfg.daemon,
            state_url=self.state.url,
            kek_file=cfg.keys.kek_file,
            state_engine=self.state,
        )

    def target(self, rule: Rule) -> Target:
        """Bind `rule` to its store, with the holds active now."""
        now = datetime.now(UTC)
        with self.state.connect() as conn:
            if (
                isinstance(self.loaded.config.stores.get(rule.store or ""), FilesStore)
                or rule.action == "shred"
            ):
                newest = as_utc(newest_entry_time(conn))
                if newest is not None and now < newest:
                    raise ClockError(
                        f"rule {rule.name}: the local clock ({_iso(now)}) is earlier than the newest "
                        f"ledger entry ({_iso(newest)}); refusing to age files by a clock that went back"
                    )
            return make_target(self.context(rule, conn, now))

    def plan(self, rule: Rule) -> Plan:
        """What `rule` would remove now (read only)."""
        return self.target(rule).plan()

    def _error_entry(self, rule: Rule, run_id: str, exc: BaseException) -> int:
        # Only our own messages are recorded: a driver's message may quote row values.
        message = str(exc) if isinstance(exc, RetentiondError) else "see the daemon's log"
        with self.state.begin() as conn:
            return append_entry(
                conn,
                {
                    **_base_fields(self.loaded, rule, run_id),
                    "kind": "error",
                    "error": type(exc).__name__,
                    "message": message,
                },
            )

    def apply(self, rule: Rule, stop: threading.Event | None = None) -> RunReport:
        """One full pass of `rule`; never raises for a failure of the rule itself."""
        stop = stop or threading.Event()
        run_id = str(uuid.uuid4())
        started = time.monotonic()
        plan: Plan | None = None
        try:
            target = self.target(rule)
            plan = target.plan()
            refusal = guard_refusal(rule, plan)
            if refusal is not None:
                return self._refuse(rule, run_id, plan, refusal, started)
            return self._execute(rule, run_id, target, plan, stop, started)
        except Exception as exc:
            log.error("rule %s failed: %s", rule.name, describe_error(exc))
            log.debug(
                "rule %s failure details", rule.name, exc_info=not isinstance(exc, RetentiondError)
            )
            report = RunReport(
                rule.name,
                "failure",
                run_id,
                plan,
                None,
                str(exc) if isinstance(exc, RetentiondError) else type(exc).__name__,
                time.monotonic() - started,
            )
            return self._record_failure(rule, report, exc)

    def _record_failure(self, rule: Rule, report: RunReport, exc: BaseException) -> RunReport:
        """The failure's ledger entry and rule state; when the state database itself is what
        failed, a log line instead: an open run is reconciled once the database is back."""
        try:
            report = dataclasses.replace(
                report, ledger_seq=self._error_entry(rule, report.run_id, exc)
            )
            with self.state.begin() as conn:
                _save_rule_state(conn, rule, report, success=False)
        except Exception as lost:
            log.error(
                "rule %s: the failure cannot be recorded, the state database failed: %s; an open "
                "run is reconciled when it is back",
                rule.name,
                describe_error(lost),
            )
        return report

    def _refuse(self, rule: Rule, run_id: str, plan: Plan, why: str, started: float) -> RunReport:
        log.warning("rule %s refused: %s", rule.name, why)
        with self.state.begin() as conn:
            seq = append_entry(
                conn,
                {
                    **_base_fields(self.loaded, rule, run_id),
                    "kind": "refused",
                    "reason": why,
                    "cutoff": _iso(plan.cutoff),
                    "count": plan.expired_items,
                    "total": plan.total_items,
                    "method": plan.method,
                },
            )
            report = RunReport(
                rule.name, "refused", run_id, plan, None, why, time.monotonic() - started, seq
            )
            _save_rule_state(conn, rule, report, success=False)
        return report

    def _execute(
        self,
        rule: Rule,
        run_id: str,
        target: Target,
        plan: Plan,
        stop: threading.Event,
        started: float,
    ) -> RunReport:
        with self.state.begin() as conn:
            conn.execute(
                insert(run).values(
                    run_id=run_id,
                    rule=rule.name,
                    status="running",
                    owner=owner_id(),
                    started_at=datetime.now(UTC),
                    cutoff=plan.cutoff,
                    plan_json=json.dumps(_plan_json(plan), sort_keys=True),
                )
            )
        journal = StateJournal(
            self.state,
            run_id,
            self.commitment_key,
            colocated(self.state.url, _target_url(self.loaded, rule)),
        )
        failure: BaseException | None = None
        outcome: Outcome | None = None
        try:
            outcome = target.execute(plan, journal, stop)
        except Exception as exc:
            failure = exc
        try:
            # A batch whose commit failed or whose completion was lost is still pending: what it
            # removed is known only from what is left, and must be counted before the entry.
            self._settle_pending(target, run_id)
        except Exception:
            with self.state.begin() as conn:
                conn.execute(update(run).where(run.c.run_id == run_id).values(status="unsettled"))
            log.error("rule %s: run %s left unsettled; it is reconciled later", rule.name, run_id)
            raise
        seq = self.finish_run(rule, run_id, plan, outcome, interrupted=False)
        if failure is not None:
            raise failure
        assert outcome is not None
        report = RunReport(
            rule.name, "success", run_id, plan, outcome, "", time.monotonic() - started, seq
        )
        with self.state.begin() as conn:
            _save_rule_state(conn, rule, report, success=True)
        log.info(
            "rule %s: removed %d items (%d bytes) by %s",
            rule.name,
            outcome.items,
            outcome.bytes,
            outcome.method,
        )
        return report

    def finish_run(
        self, rule: Rule, run_id: str, plan: Plan, outcome: Outcome | None, interrupted: bool
    ) -> int:
        """Write the run's ledger entry from its journal and close the run, in one transaction."""
        with self.state.begin() as conn:
            totals = run_totals(conn, run_id, self.commitment_key)
            fields = {
                **_base_fields(self.loaded, rule, run_id),
                "kind": _ENTRY_KIND[rule.action],
                "cutoff": _iso(plan.cutoff),
                "clock": plan.clock,
                "count": totals.items,
                "bytes": totals.bytes,
                "digest": totals.digest,
                "method": outcome.method if outcome else plan.method,
            }
            if outcome is not None:
                fields["remaining_expired"] = outcome.remaining_expired
                if outcome.errors:
                    fields["errors"] = outcome.errors
            if interrupted:
                fields["interrupted"] = True
            if rule.legal_basis:
                fields["legal_basis"] = rule.legal_basis
            own = tuple(outcome.details.get("ledger_seqs", ())) if outcome else ()
            # A shred appends its entries in the transactions that destroy the keys (safety rule
            # 10: the state database records its own deletions in the same transaction).
            seq = own[-1] if own else append_entry(conn, fields)
            conn.execute(
                update(run)
                .where(run.c.run_id == run_id)
                .values(
                    status="reconciled" if interrupted else ("done" if outcome else "failed"),
                    finished_at=datetime.now(UTC),
                    ledger_seq=seq,
                )
            )
        return seq

    def _settle_pending(self, target: Target, run_id: str) -> None:
        """Complete every batch of a run written ahead but never completed, from what is left."""
        journal = StateJournal(self.state, run_id, self.commitment_key, False)
        with self.state.connect() as conn:
            pending = list(pending_batches(conn, run_id))
        for batch in pending:
            removed, items = batch.settle(target.still_present(batch.candidates))
            journal.complete(batch.batch_id, removed, 0, items)

    def reconcile(
        self, rules: Collection[str] | None = None, gone_owners: Collection[str] = ()
    ) -> list[str]:
        """Settle runs interrupted by a crash: complete pending batches, write their ledger entries.

        `rules` limits this to runs of those rules (the daemon passes the rules whose lease it
        holds, so that two daemons never settle one run); `gone_owners` names owners on other hosts
        known to be dead (their lease expired unreleased).
        """
        settled: list[str] = []
        with self.state.connect() as conn:
            open_runs = conn.execute(
                select(run).where(run.c.status.in_(("running", "unsettled")))
            ).all()
        for row in open_runs:
            if rules is not None and row.rule not in rules:
                continue
            # An unsettled run has stopped executing; a running one may still be, unless its owner
            # is gone.
            alive = row.owner not in gone_owners and not owner_gone(row.owner)
            if row.status == "running" and alive:
                continue
            try:
                rule = self.loaded.config.rule(row.rule)
            except KeyError:
                log.error(
                    "interrupted run %s of rule %s: the rule is no longer configured",
                    row.run_id,
                    row.rule,
                )
                continue
            try:
                self._settle_pending(self.target(rule), row.run_id)
            except Exception as exc:
                log.error(
                    "rule %s: run %s cannot be settled yet (%s)",
                    rule.name,
                    row.run_id,
                    type(exc).__name__,
                )
                continue
            plan = Plan(**{**json.loads(row.plan_json), "cutoff": as_utc(row.cutoff)})
            self.finish_run(rule, row.run_id, plan, None, interrupted=True)
            settled.append(row.run_id)
            log.warning("rule %s: interrupted run %s reconciled", rule.name, row.run_id)
        return settled


def _plan_json(plan: Plan) -> dict[str, Any]:
    data = dataclasses.asdict(plan)
    data["cutoff"] = None  # stored in its own column with its time zone
    data["details"] = dict(plan.details)
    return data
