"""`retentiond run`: the scheduling daemon, its lifecycle and its main loop.

Signal handlers only set flags and wake the loop; the loop sleeps in an interruptible wait (a pipe
that handlers and finished workers write to) until the next slot, renewal, ping or heartbeat. Each
rule runs in a worker thread under a lease (see lease.py), at most once at a time and at most
`max_parallel_rules` at once. Exceptions are caught at two boundaries only: the worker's (one run)
and the loop's cycle, so that nothing short of a stop request ends the daemon.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select as io_select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from retentiond import __version__
from retentiond.commands.common import open_state, sign_checkpoint
from retentiond.config import Config, LoadedConfig, Rule, load_config
from retentiond.config.model import FilesStore
from retentiond.config.secrets import redacted
from retentiond.errors import ConfigError, RetentiondError, describe_error
from retentiond.lease import Lease, LeaseBook, latest_slot, lease_ttl, utcnow
from retentiond.ledger.signing import load_signer_key
from retentiond.ledger.store import append_entry, read_head
from retentiond.logs import setup_logging
from retentiond.metrics import ItemKind, Metrics, MetricsServer, RuleSnapshot, serve_metrics
from retentiond.runner import Runner, RunReport, as_utc, owner_id
from retentiond.schedule import Schedule
from retentiond.state.models import ledger_checkpoint, rule_state, run
from retentiond.systemd import Notifier, watchdog_interval

log = logging.getLogger(__name__)

HEARTBEAT = 5.0  # longest sleep of the main loop: bounds how stale /healthz and gauges may get
REFRESH = 15.0  # seconds between two reads of rule_state and the ledger for the gauges
STOP_GRACE = 20.0  # seconds workers get to end their batch after SIGTERM
BUSY_RETRY = 5.0  # seconds before asking again for a lease that another daemon holds
ERROR_PAUSE = 2.0  # shortest sleep after a failed cycle (the state database is down...)


def item_kind(config: Config, rule: Rule) -> ItemKind:
    """Which deletion counter a rule feeds: rows, files or copies."""
    if rule.action == "shred":
        return "copies"
    return "files" if isinstance(config.stores.get(rule.store or ""), FilesStore) else "rows"


def rule_schedule(config: Config, rule: Rule) -> Schedule:
    """The rule's schedule, or the daemon's default."""
    return rule.schedule or config.daemon.schedule


@dataclass
class _Running:
    """A run in progress in a worker thread."""

    rule: Rule
    lease: Lease
    ttl: timedelta
    stop: threading.Event
    renewed: float  # monotonic time of the last renewal
    thread: threading.Thread | None = None
    done: bool = False
    # Held while the lease is renewed or released, so that a release never uses a stale lease.
    guard: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Plan:
    """When the main loop next looks at a rule."""

    check_at: datetime
    waiting: bool = False  # due, but every worker is busy


@dataclass
class _Tally:
    """Results of this daemon's runs since it started, for the status line."""

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("success", "failure", "refused"), 0)
    )
    last: str = ""


class Daemon:
    """One daemon process: config, state database, leases, workers, metrics, systemd."""

    def __init__(
        self,
        config_path: Path | None,
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.owner = owner_id()
        self.metrics = Metrics()
        self.server: MetricsServer | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop_requested = False
        self._reload_requested = False
        self._running: dict[str, _Running] = {}
        self._plans: dict[str, _Plan] = {}
        self._lock = threading.Lock()  # guards _running entries changed by workers
        self._checkpoint_lock = threading.Lock()
        self._tally = _Tally()
        self._last_tick = time.monotonic()
        self._next_refresh = 0.0
        self._next_ping = 0.0
        self._next_checkpoint: datetime | None = None
        self._watchdog = watchdog_interval()
        self._last_failure: tuple[str, float] = ("", 0.0)
        self.loaded: LoadedConfig
        self.engine: Engine
        self.runner: Runner
        self.leases: LeaseBook

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check config, state database and keys; reconcile; serve metrics; then READY=1."""
        self.loaded, self.engine = open_state(self.config_path)
        config = self.loaded.config
        if logging.getLogger().level != logging.DEBUG:
            setup_logging(level=config.daemon.log_level)
        self.runner = Runner(self.loaded, self.engine)
        load_signer_key(config.ledger.signing_key_file)
        self.leases = LeaseBook(self.engine, self.owner, self.clock)
        self.leases.ensure(r.name for r in config.rules)
        self.metrics.set_rules({r.name: item_kind(config, r) for r in config.rules})
        self._reconcile_at_start()
        if config.metrics.enabled:
            self.server = serve_metrics(config.metrics, self.metrics, self.healthy)
        self._record_config("load")
        self.metrics.config_loaded(True, self.clock())
        self._schedule_all()
        self._refresh()
        log.info(
            "retentiond %s started as %s: %d rules, state database %s",
            __version__,
            self.owner,
            len(config.rules),
            redacted(self.engine.url),
        )
        self.notifier.ready(self._status_line())

    def install_signals(self) -> None:
        """SIGTERM and SIGINT stop, SIGHUP reloads: the handlers only set a flag and wake the loop."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, _signum: int, _frame: FrameType | None) -> None:
        self._stop_requested = True
        self.wake()

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_requested = True
        self.wake()

    def request_stop(self) -> None:
        """Ask the loop to stop (what SIGTERM does)."""
        self._on_stop(signal.SIGTERM, None)

    def wake(self) -> None:
        """Interrupt the loop's sleep (safe from signal handlers and other threads)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def serve(self) -> int:
        """The main loop, until a stop request; returns the exit code."""
        while not self._stop_requested:
            failed = False
            try:
                self._cycle()
            except Exception as exc:  # the cycle's boundary: log, go on
                failed = True
                self._log_failure(exc)
            # The loop is alive even when the state database is not: the watchdog and /healthz
            # watch the loop, the metrics and alerts watch the rest.
            self._last_tick = time.monotonic()
            if self._watchdog is not None and self._last_tick >= self._next_ping:
                self.notifier.watchdog()
                self._next_ping = self._last_tick + self._watchdog
            pause = self._sleep_seconds()
            self._sleep(max(pause, ERROR_PAUSE) if failed else pause)
        return self._shutdown()

    def _log_failure(self, exc: BaseException) -> None:
        """Log a failed cycle; the same failure again only once a minute, not every cycle."""
        text = describe_error(exc)
        if isinstance(exc, SQLAlchemyError):
            # Every database the cycle touches is the state database.
            text = f"the state database failed: {text}; retrying"
        now = time.monotonic()
        if text != self._last_failure[0] or now - self._last_failure[1] >= 60:
            log.error("main loop: %s", text)
            log.debug("main loop failure details", exc_info=True)
            self._last_failure = (text, now)

    def _shutdown(self) -> int:
        self.notifier.stopping()
        with self._lock:
            running = list(self._running.values())
        for item in running:
            item.stop.set()  # the target ends its current batch, the runner records it
        log.info("stopping: waiting for %d run(s) to end their batch", len(running))
        deadline = time.monotonic() + STOP_GRACE
        for item in running:
            if item.thread is not None:
                item.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [item.rule.name for item in running if item.thread and item.thread.is_alive()]
        if stuck:
            log.error("stopping with unfinished runs (reconciled at next start): %s", stuck)
        else:
            with contextlib.suppress(Exception):
                self._checkpoint()
        if self.server is not None:
            self.server.stop()
        self.notifier.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        log.info("stopped")
        return 0

    # --- the main loop -----------------------------------------------------------------------

    def _cycle(self) -> None:
        if self._reload_requested:
            self._reload_requested = False
            self._reload()
        self._reap()
        self._renew()
        self._schedule()
        now = self.clock()
        if self._next_checkpoint is not None and now >= self._next_checkpoint:
            self._checkpoint()
        if time.monotonic() >= self._next_refresh:
            self._refresh()
        self.notifier.status(self._status_line())

    def _sleep_seconds(self) -> float:
        now = self.clock()
        mono = time.monotonic()
        bounds = [HEARTBEAT, self._next_refresh - mono]
        if self._watchdog is not None:
            bounds.append(self._next_ping - mono)
        with self._lock:
            for item in self._running.values():
                bounds.append(item.renewed + item.ttl.total_seconds() / 3 - mono)
        for plan in self._plans.values():
            if not plan.waiting:
                bounds.append((plan.check_at - now).total_seconds())
        if self._next_checkpoint is not None:
            bounds.append((self._next_checkpoint - now).total_seconds())
        return max(0.0, min(bounds))

    def _sleep(self, seconds: float) -> None:
        if self._stop_requested or self._reload_requested:
            return
        try:
            readable, _, _ = io_select.select([self._wake_r], [], [], seconds)
        except InterruptedError:
            return
        if readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass

    def healthy(self) -> tuple[bool, str]:
        """For /healthz: False when the main loop has not completed a cycle for too long."""
        limit = max(60.0, 3 * HEARTBEAT, 2 * (self._watchdog or 0))
        stalled = time.monotonic() - self._last_tick
        if stalled > limit:
            return False, f"main loop stalled for {stalled:.0f}s"
        return True, "ok"

    # --- scheduling and workers --------------------------------------------------------------

    def _schedule_all(self) -> None:
        """Look at every enabled rule now: a slot missed while the daemon was down runs at once."""
        now = self.clock()
        self._plans = {r.name: _Plan(now) for r in self.loaded.config.rules if r.enabled}

    def _schedule(self) -> None:
        config = self.loaded.config
        now = self.clock()
        due = [
            (plan.check_at, name)
            for name, plan in self._plans.items()
            if plan.check_at <= now and name not in self._running
        ]
        for _, name in sorted(due):
            plan = self._plans[name]
            if len(self._running) >= config.daemon.max_parallel_rules:
                plan.waiting = True
                continue
            plan.waiting = False
            rule = config.rule(name)
            schedule = rule_schedule(config, rule)
            slot = latest_slot(schedule, now)
            ttl = lease_ttl(schedule, now)
            attempt = self.leases.take(name, slot, ttl)
            if attempt.outcome == "taken" and attempt.lease is not None:
                plan.check_at = schedule.next_after(slot)
                self._launch(rule, attempt.lease, ttl)
            elif attempt.outcome == "done":
                plan.check_at = schedule.next_after(now)
            else:
                retry = min(BUSY_RETRY, ttl.total_seconds() / 2)
                plan.check_at = now + timedelta(seconds=retry)
                log.debug("rule %s: held by %s, retrying", name, attempt.holder)

    def _launch(self, rule: Rule, lease: Lease, ttl: timedelta) -> None:
        item = _Running(rule, lease, ttl, threading.Event(), time.monotonic())
        item.thread = threading.Thread(
            target=self._work, args=(item, self.runner), name=f"rule-{rule.name}", daemon=True
        )
        with self._lock:
            self._running[rule.name] = item
        log.debug("rule %s: slot %s taken", rule.name, _short(lease.slot))
        item.thread.start()

    def _work(self, item: _Running, runner: Runner) -> None:
        """One run in a worker thread: reconcile what a dead daemon left, run, count, checkpoint."""
        name = item.rule.name
        try:
            self._settle(runner, name, item.lease)
            report = runner.apply(item.rule, item.stop)  # records its own failures
            self.metrics.observe_run(report)
            self._count(report)
            self._checkpoint()
        except Exception as exc:  # the run's boundary: one rule never stops others
            log.error("rule %s: %s", name, describe_error(exc))
            log.debug("rule %s failure details", name, exc_info=True)
        finally:
            with item.guard:
                item.done = True  # under the guard: no renewal starts after this
                with contextlib.suppress(Exception):
                    self.leases.release(item.lease)
            self._next_refresh = 0.0  # show the new rule_state at once
            self.wake()

    def _count(self, report: RunReport) -> None:
        with self._lock:
            self._tally.counts[report.result] = self._tally.counts.get(report.result, 0) + 1
            self._tally.last = f"{report.rule} {report.result}"

    def _reap(self) -> None:
        with self._lock:
            finished = [n for n, item in self._running.items() if item.done]
            for name in finished:
                del self._running[name]
            idle = not self._running
        if finished and idle:
            _trim_memory()

    def _renew(self) -> None:
        mono = time.monotonic()
        with self._lock:
            due = [
                i
                for i in self._running.values()
                if not i.done and mono - i.renewed >= i.ttl.total_seconds() / 3
            ]
        for item in due:
            with item.guard:
                if item.done:
                    continue  # finished meanwhile: its lease is released, not renewed
                renewed = self.leases.renew(item.lease, item.ttl)
                if renewed is None:
                    log.error("rule %s: lease lost; the run stops after its batch", item.rule.name)
                    item.stop.set()
                    item.renewed = float("inf")
                else:
                    item.lease, item.renewed = renewed, time.monotonic()

    # --- checkpoints, gauges, ledger ---------------------------------------------------------

    def _checkpoint(self) -> None:
        """Sign a checkpoint of the ledger now; the next one is due an interval later at most."""
        with self._checkpoint_lock:
            config = self.loaded.config
            sign_checkpoint(self.engine, config)
            interval = config.ledger.checkpoint_interval
            self._next_checkpoint = interval.add_to(self.clock())

    def _refresh(self) -> None:
        """Read rule_state and the ledger into the gauges (shared by every daemon and restarts)."""
        self._next_refresh = time.monotonic() + REFRESH
        with self.engine.connect() as conn:
            states = conn.execute(select(rule_state)).all()
            head = read_head(conn)
            newest = conn.execute(select(func.max(ledger_checkpoint.c.created_at))).scalar()
        snapshots = [
            RuleSnapshot(
                rule=row.rule,
                last_result=row.last_result,
                last_run_at=as_utc(row.last_run_at),
                last_success_at=as_utc(row.last_success_at),
                overdue_items=row.overdue_items,
                oldest_item_age_seconds=row.oldest_item_age_seconds,
                held_items=row.held_items,
            )
            for row in states
        ]
        now = self.clock()
        self.metrics.update_rules(snapshots, now)
        checkpoint = as_utc(newest)
        self.metrics.update_ledger(head.tree_size if head else 0, checkpoint)
        if self._next_checkpoint is None:
            interval = self.loaded.config.ledger.checkpoint_interval
            self._next_checkpoint = interval.add_to(checkpoint) if checkpoint else now

    def _record_config(self, action: str) -> None:
        """A `config` ledger entry: which config file (by its hash) is in force from now on."""
        with self.engine.begin() as conn:
            append_entry(
                conn,
                {
                    "kind": "config",
                    "action": action,
                    "config_hash": f"sha256:{self.loaded.digest}",
                    "reason": f"daemon {action}",
                },
            )

    def _reconcile_at_start(self) -> None:
        """Settle runs that a dead daemon left open, each under its rule's lease."""
        with self.engine.connect() as conn:
            rules: set[str] = set(
                conn.execute(select(run.c.rule).where(run.c.status == "running")).scalars()
            )
        config = self.loaded.config
        for name in sorted(rules):
            try:
                rule = config.rule(name)
            except KeyError:
                log.error("an interrupted run of rule %s: the rule is no longer configured", name)
                continue
            lease = self.leases.claim(name, lease_ttl(rule_schedule(config, rule), self.clock()))
            if lease is None:
                continue  # another daemon holds the rule; it settles the run before its next one
            try:
                self._settle(self.runner, name, lease)
            finally:
                self.leases.release(lease)

    @staticmethod
    def _settle(runner: Runner, name: str, lease: Lease) -> None:
        """Reconcile the interrupted runs of a rule whose lease this daemon holds.

        A failure is logged, not raised: the run goes ahead (and records its own failure when the
        store is down), and settling is tried again before the next run.
        """
        try:
            settled = runner.reconcile(rules={name}, gone_owners=lease.gone_owners())
        except Exception as exc:  # the reconcile's boundary
            log.error(
                "rule %s: cannot reconcile an interrupted run yet: %s", name, describe_error(exc)
            )
            return
        if settled:
            log.warning("rule %s: %d interrupted run(s) reconciled", name, len(settled))

    # --- reload ------------------------------------------------------------------------------

    def _reload(self) -> None:
        """Validate the new config first; an invalid one keeps the old running."""
        self.notifier.reloading()
        old = self.loaded
        try:
            loaded = load_config(self.config_path)
            for key in ("state_url", "state_password_file"):
                if getattr(loaded.config.daemon, key) != getattr(old.config.daemon, key):
                    raise ConfigError(
                        [f"{loaded.path.name}: daemon.{key}: changing it needs a restart"]
                    )
            runner = Runner(loaded, self.engine)
            load_signer_key(loaded.config.ledger.signing_key_file)
            server = self.server
            if loaded.config.metrics != old.config.metrics:
                server = self._reconfigure_server(loaded.config)
        except (RetentiondError, OSError) as exc:
            lines = exc.messages if isinstance(exc, ConfigError) else [describe_error(exc)]
            for line in lines:
                log.error("reload refused, the running config is kept: %s", line)
            self.metrics.config_loaded(False, self.clock())
            self.notifier.reloaded(self._status_line())
            return
        self.loaded, self.runner, self.server = loaded, runner, server
        config = loaded.config
        self.leases.ensure(r.name for r in config.rules)
        self.metrics.set_rules({r.name: item_kind(config, r) for r in config.rules})
        changed = {
            r.name for r in config.rules if r.enabled and _rule_or_none(old.config, r.name) != r
        }
        now = self.clock()
        self._plans = {
            r.name: self._plans.get(r.name, _Plan(now)) if r.name not in changed else _Plan(now)
            for r in config.rules
            if r.enabled
        }
        self._next_checkpoint = None
        if loaded.digest != old.digest:
            self._record_config("reload")
        self.metrics.config_loaded(True, now)
        log.info("config reloaded: %d rules", len(config.rules))
        self.notifier.reloaded(self._status_line())

    def _reconfigure_server(self, config: Config) -> MetricsServer | None:
        """The metrics endpoint of a new config (unchanged when the new one cannot be served)."""
        if not config.metrics.enabled:
            if self.server is not None:
                self.server.stop()
            return None
        if self.server is None:
            return serve_metrics(config.metrics, self.metrics, self.healthy)
        self.server.reconfigure(config.metrics)
        return self.server

    # --- the status line ---------------------------------------------------------------------

    def _status_line(self) -> str:
        """One line for systemd's STATUS=: rules, what runs, what comes next, results so far."""
        with self._lock:
            running = sorted(n for n, i in self._running.items() if not i.done)
            counts = dict(self._tally.counts)
            last = self._tally.last
        upcoming = [(p.check_at, n) for n, p in self._plans.items() if n not in running]
        parts = [f"{len(self._plans)} rules"]
        if running:
            parts.append("running " + ", ".join(running))
        if upcoming:
            when, name = min(upcoming)
            parts.append(f"next {name} at {_short(when)}")
        parts.append(
            f"since start {counts['success']} ok, {counts['failure']} failed, "
            f"{counts['refused']} refused" + (f" (last: {last})" if last else "")
        )
        return "; ".join(parts)


def _rule_or_none(config: Config, name: str) -> Rule | None:
    try:
        return config.rule(name)
    except KeyError:
        return None


def _short(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _trim_memory() -> None:
    """Free what finished runs left, and hand the heap back to the system.

    Engines and their connections sit in reference cycles until a full collection; glibc keeps
    freed heap for itself otherwise, and the daemon runs for months.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def run_daemon(config_path: Path | None) -> int:
    """Start the daemon and serve until SIGTERM; returns the exit code."""
    daemon = Daemon(config_path)
    daemon.install_signals()
    daemon.start()
    return daemon.serve()
