"""Leases: each scheduled slot of a rule runs once across every daemon sharing a state database.

One `rule_lease` row per rule keeps the last slot taken, who took it and until when the lease is
held. Taking a slot is a compare-and-set: the row is read, and the UPDATE that takes it repeats every
value that was read in its WHERE clause, so of several daemons racing for a slot exactly one changes
the row (PostgreSQL re-checks the clause after waiting for a concurrent update; SQLite serialises
writers). The same statements work on SQLite, where a single daemon is assumed, and on PostgreSQL.

A slot once taken is never taken again, even if its daemon dies during the run: the next slot is
taken by whoever is alive. A held lease is renewed by its daemon while the rule runs; one that
expired without being released names a daemon that died (or lost the state database), whose
interrupted run the next holder reconciles. Expiry is judged by the local clocks of the daemons,
which must be kept in sync (NTP); leases last seconds to a minute, much longer than any sane skew.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from croniter import croniter
from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from retentiond.schedule import Schedule
from retentiond.state.models import rule_lease

Clock = Callable[[], datetime]

MIN_TTL = timedelta(seconds=5)
MAX_TTL = timedelta(seconds=60)
_TRIES = 3  # compare-and-set rounds before a contended lease is reported busy


def utcnow() -> datetime:
    """The local clock, in UTC."""
    return datetime.now(UTC)


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every lease time is written in UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def latest_slot(schedule: Schedule, now: datetime) -> datetime:
    """The last slot of `schedule` at or before `now`: the one a daemon looking now may owe."""
    if schedule.interval is not None:
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return epoch + ((now - epoch) // schedule.interval) * schedule.interval
    # croniter's get_prev is strict; a microsecond later makes a slot falling exactly now count.
    start = now.astimezone(UTC) + timedelta(microseconds=1)
    previous: datetime = croniter(schedule.cron, start).get_prev(datetime)
    return previous


def owner_gone(owner: str | None) -> bool:
    """True when `owner` (host:pid) is a process of this host that no longer exists.

    Its lease is then abandoned now, whatever its expiry says: a daemon restarted after a crash
    settles what its predecessor left at once. Another host's daemon is never judged from here.
    """
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, as another user
    return False


def lease_ttl(schedule: Schedule, now: datetime) -> timedelta:
    """How long a lease lasts unrenewed: half an interval, between 5 s and 60 s.

    Half an interval lets another daemon take the next slot on time when the holder died mid-run.
    """
    if schedule.interval is not None:
        interval = schedule.interval
    else:
        first = schedule.next_after(now)
        interval = schedule.next_after(first) - first
    return max(MIN_TTL, min(MAX_TTL, interval / 2))


@dataclass(frozen=True)
class Lease:
    """A rule held by this daemon until `expires_at` unless renewed."""

    rule: str
    owner: str
    slot: datetime | None
    expires_at: datetime
    # The daemon whose lease had expired without release when this one was taken: it died (or lost
    # the state database) and may have left a run open.
    abandoned_by: str | None = None

    def gone_owners(self) -> set[str]:
        """Owners whose runs of this rule, still open, are not running: the holder's own (a
        holder runs a rule once at a time, so an open run in its name was cut short, by a lost
        state database) and the abandoning daemon's."""
        return {self.owner} | ({self.abandoned_by} if self.abandoned_by else set())


@dataclass(frozen=True)
class Attempt:
    """The answer to a request for a slot: taken (with its lease), done by someone, or busy."""

    outcome: Literal["taken", "done", "busy"]
    lease: Lease | None = None
    holder: str | None = None  # who holds or last held the rule


def _same(column: Any, value: Any) -> ColumnElement[bool]:
    """`column` still holds `value` (NULL-safe), the compare half of compare-and-set."""
    result: ColumnElement[bool] = column.is_(None) if value is None else column == value
    return result


class LeaseBook:
    """The leases of one daemon (`owner`, host:pid) in one state database."""

    def __init__(self, engine: Engine, owner: str, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.owner = owner
        self.clock = clock

    def ensure(self, rules: Iterable[str]) -> None:
        """Create the lease rows of `rules` that do not exist yet (idempotent, race-safe)."""
        names = sorted(set(rules))
        with self.engine.connect() as conn:
            existing: set[str] = set(conn.execute(select(rule_lease.c.rule)).scalars())
        missing = [{"rule": name} for name in names if name not in existing]
        if not missing:
            return
        dialect = self.engine.dialect.name
        with self.engine.begin() as conn:
            if dialect == "postgresql":
                conn.execute(postgresql.insert(rule_lease).values(missing).on_conflict_do_nothing())
                return
            if dialect == "sqlite":
                conn.execute(sqlite.insert(rule_lease).values(missing).on_conflict_do_nothing())
                return
        for row in missing:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(rule_lease).values(row))
            except IntegrityError:
                pass  # another daemon created it meanwhile

    def _read(self, rule: str) -> Any:
        with self.engine.connect() as conn:
            row = conn.execute(select(rule_lease).where(rule_lease.c.rule == rule)).one_or_none()
        if row is None:
            self.ensure([rule])
            with self.engine.connect() as conn:
                row = conn.execute(select(rule_lease).where(rule_lease.c.rule == rule)).one()
        return row

    def _held(self, owner: str | None, expires: datetime | None, now: datetime) -> bool:
        """Someone holds the lease: not released, not expired, and not a dead local daemon."""
        if expires is None or expires <= now:
            return False
        return owner == self.owner or not owner_gone(owner)

    def _swap(self, row: Any, values: dict[str, Any]) -> bool:
        """Write `values` if the row still holds what was read; True when this daemon won."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(rule_lease)
                .where(
                    rule_lease.c.rule == row.rule,
                    _same(rule_lease.c.owner, row.owner),
                    _same(rule_lease.c.slot, row.slot),
                    _same(rule_lease.c.expires_at, row.expires_at),
                )
                .values(**values)
            )
            return result.rowcount == 1

    def take(self, rule: str, slot: datetime, ttl: timedelta) -> Attempt:
        """Take `slot` of `rule` unless it, or a later slot, was taken, or a live lease holds it."""
        for _ in range(_TRIES):
            row = self._read(rule)
            taken = _utc(row.slot)
            if taken is not None and taken >= slot:
                return Attempt("done", holder=row.owner)
            now = self.clock()
            expires = _utc(row.expires_at)
            if self._held(row.owner, expires, now):
                return Attempt("busy", holder=row.owner)
            until = now + ttl
            if self._swap(row, {"owner": self.owner, "slot": slot, "expires_at": until}):
                abandoned = row.owner if expires is not None and row.owner != self.owner else None
                return Attempt("taken", Lease(rule, self.owner, slot, until, abandoned))
        return Attempt("busy")

    def claim(self, rule: str, ttl: timedelta) -> Lease | None:
        """Hold `rule` without taking a slot (to reconcile its interrupted runs); None when busy."""
        for _ in range(_TRIES):
            row = self._read(rule)
            now = self.clock()
            expires = _utc(row.expires_at)
            if self._held(row.owner, expires, now):
                return None
            until = now + ttl
            if self._swap(row, {"owner": self.owner, "expires_at": until}):
                abandoned = row.owner if expires is not None and row.owner != self.owner else None
                return Lease(rule, self.owner, _utc(row.slot), until, abandoned)
        return None

    def _set_expiry(self, lease: Lease, expires_at: datetime | None) -> bool:
        """Change the expiry of a lease still held as `lease` says; False when it was lost."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(rule_lease)
                .where(
                    rule_lease.c.rule == lease.rule,
                    rule_lease.c.owner == self.owner,
                    rule_lease.c.expires_at == lease.expires_at,
                )
                .values(expires_at=expires_at)
            )
        return result.rowcount == 1

    def renew(self, lease: Lease, ttl: timedelta) -> Lease | None:
        """Extend a held lease; None when it was lost (expired and taken by another daemon)."""
        until = self.clock() + ttl
        if not self._set_expiry(lease, until):
            return None
        return Lease(lease.rule, lease.owner, lease.slot, until, lease.abandoned_by)

    def release(self, lease: Lease) -> bool:
        """Give a lease back (the slot stays taken); False when it had been lost meanwhile."""
        return self._set_expiry(lease, None)

    def holders(self) -> dict[str, tuple[str | None, datetime | None, datetime | None]]:
        """rule -> (owner, last slot taken, lease expiry or None when released), for `status`."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(rule_lease)).all()
        return {r.rule: (r.owner, _utc(r.slot), _utc(r.expires_at)) for r in rows}
