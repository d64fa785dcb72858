"""Leases on SQLite and PostgreSQL: each slot taken once, dead holders replaced, renewals lost."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from retentiond.lease import MAX_TTL, MIN_TTL, LeaseBook, latest_slot, lease_ttl
from retentiond.schedule import parse_schedule
from retentiond.state.db import create_state_engine, upgrade
from retentiond.state.models import rule_lease

T0 = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
TTL = timedelta(seconds=30)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated state database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    engine = create_state_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_a_slot_is_taken_once_and_a_later_one_after_release(state: sa.Engine) -> None:
    clock = Clock(T0)
    a, b = LeaseBook(state, "host-a:1", clock), LeaseBook(state, "host-b:2", clock)
    a.ensure(["lab-results"])

    first = a.take("lab-results", T0, TTL)
    assert first.outcome == "taken" and first.lease is not None
    assert first.lease.abandoned_by is None
    # Held: the other daemon is told it is busy, even for a later slot.
    assert b.take("lab-results", T0 + timedelta(hours=1), TTL).outcome == "busy"
    assert a.release(first.lease)
    # Released, the slot stays done for everyone.
    assert b.take("lab-results", T0, TTL).outcome == "done"
    assert a.take("lab-results", T0, TTL).outcome == "done"
    later = b.take("lab-results", T0 + timedelta(hours=1), TTL)
    assert later.outcome == "taken" and later.lease is not None
    assert later.lease.abandoned_by is None  # a released lease names no dead daemon
    assert b.holders()["lab-results"][0] == "host-b:2"


def test_an_expired_lease_is_taken_over_and_names_the_dead_daemon(state: sa.Engine) -> None:
    clock = Clock(T0)
    a, b = LeaseBook(state, "host-a:1", clock), LeaseBook(state, "host-b:2", clock)
    held = a.take("r", T0, TTL).lease
    assert held is not None
    clock.now = T0 + TTL + timedelta(seconds=1)  # host-a died without releasing
    attempt = b.take("r", T0 + timedelta(minutes=1), TTL)
    assert attempt.outcome == "taken" and attempt.lease is not None
    assert attempt.lease.abandoned_by == "host-a:1"
    # The dead daemon's renewal (had it survived) would find its lease gone.
    assert a.renew(held, TTL) is None
    assert not a.release(held)
    assert b.renew(attempt.lease, TTL) is not None


def test_renewal_keeps_a_lease_past_its_first_expiry(state: sa.Engine) -> None:
    clock = Clock(T0)
    a, b = LeaseBook(state, "host-a:1", clock), LeaseBook(state, "host-b:2", clock)
    lease = a.take("r", T0, TTL).lease
    assert lease is not None
    clock.now = T0 + TTL / 2
    renewed = a.renew(lease, TTL)
    assert renewed is not None and renewed.expires_at == clock.now + TTL
    clock.now = T0 + TTL + timedelta(seconds=1)  # past the first expiry, not the renewed one
    assert b.take("r", T0 + timedelta(minutes=1), TTL).outcome == "busy"
    assert b.claim("r", TTL) is None


def test_claim_holds_a_rule_without_taking_a_slot(state: sa.Engine) -> None:
    clock = Clock(T0)
    a, b = LeaseBook(state, "host-a:1", clock), LeaseBook(state, "host-b:2", clock)
    done = a.take("r", T0, TTL).lease
    assert done is not None and a.release(done)
    claim = b.claim("r", TTL)
    assert claim is not None and claim.slot == T0
    assert a.take("r", T0 + timedelta(minutes=1), TTL).outcome == "busy"
    assert b.release(claim)
    # The claim consumed no slot: the next slot is still free.
    assert a.take("r", T0 + timedelta(minutes=1), TTL).outcome == "taken"


def test_racing_daemons_take_each_slot_exactly_once(state: sa.Engine) -> None:
    clock = Clock(T0)
    books = [LeaseBook(state, f"host-{i}:{i}", clock) for i in range(6)]
    books[0].ensure(["r"])
    slots = [T0 + timedelta(seconds=10 * i) for i in range(15)]
    winners: dict[datetime, list[str]] = {slot: [] for slot in slots}
    for slot in slots:
        barrier = threading.Barrier(len(books))

        def race(
            book: LeaseBook, slot: datetime = slot, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            attempt = book.take("r", slot, TTL)
            if attempt.outcome == "taken" and attempt.lease is not None:
                winners[slot].append(book.owner)
                book.release(attempt.lease)

        threads = [threading.Thread(target=race, args=(book,)) for book in books]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(len(owners) <= 1 for owners in winners.values()), winners
    # Losers are told "busy" while the winner holds the lease, so a slot may go unclaimed in a
    # race, but never twice, and the last slot was taken by someone.
    with state.connect() as conn:
        assert conn.execute(sa.select(rule_lease.c.slot)).scalar_one().replace(tzinfo=UTC) in slots


def test_latest_slot_of_intervals_and_cron() -> None:
    every = parse_schedule("every 10s")
    assert latest_slot(every, T0 + timedelta(seconds=25)) == T0 + timedelta(seconds=20)
    assert latest_slot(every, T0) == T0  # a slot falling exactly now is owed now
    cron = parse_schedule("0 3 * * *")
    assert latest_slot(cron, T0) == datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    assert latest_slot(cron, datetime(2026, 11, 28, 3, 0, tzinfo=UTC)) == datetime(
        2026, 11, 28, 3, 0, tzinfo=UTC
    )
    assert latest_slot(cron, datetime(2026, 11, 28, 2, 59, tzinfo=UTC)) == datetime(
        2026, 11, 27, 3, 0, tzinfo=UTC
    )


def test_lease_ttl_is_half_an_interval_within_bounds() -> None:
    assert lease_ttl(parse_schedule("every 10s"), T0) == MIN_TTL
    assert lease_ttl(parse_schedule("every 30s"), T0) == timedelta(seconds=15)
    assert lease_ttl(parse_schedule("every 6h"), T0) == MAX_TTL
    assert lease_ttl(parse_schedule("*/1 * * * *"), T0) == timedelta(seconds=30)


def test_a_lease_of_a_dead_local_daemon_is_taken_at_once(state: sa.Engine) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # a process that has exited: its pid names nobody
    dead = f"{socket.gethostname()}:{child.pid}"
    clock = Clock(T0)
    crashed = LeaseBook(state, dead, clock)
    assert crashed.take("r", T0, TTL).outcome == "taken"
    # Still within its TTL, but its owner is a process of this host that no longer exists.
    restarted = LeaseBook(state, "restarted:1", clock)
    claim = restarted.claim("r", TTL)
    assert claim is not None and claim.abandoned_by == dead
    # A live owner on another host is never judged from here: its lease holds until it expires.
    other = LeaseBook(state, "elsewhere.example:1", clock)
    assert restarted.release(claim)
    assert other.take("r", T0 + timedelta(minutes=1), TTL).outcome == "taken"
    assert restarted.claim("r", TTL) is None
