"""The run journal: batches recorded in the state database so no committed deletion goes unrecorded.

Two ways to record a batch (see engine.BatchJournal): in the target's own transaction when the state
database is the target database (`record_in`), or write-ahead otherwise: the candidate keys are
committed first (`write_ahead`), the target deletes, then the batch is completed (`complete`). A batch
left pending by a crash is settled at the next start from what is still present in the target.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Connection, Engine

from retentiond.ledger.digest import KeyDigest
from retentiond.state.models import run_batch

_LEN = struct.Struct(">I")


def encode_keys(keys: Sequence[bytes]) -> bytes:
    """Length-prefixed concatenation of keys (keys may hold any byte, newlines included)."""
    # map/zip/chain run in C: no Python frame and no intermediate bytes object per key.
    return b"".join(chain.from_iterable(zip(map(_LEN.pack, map(len, keys)), keys, strict=True)))


def decode_keys(blob: bytes) -> list[bytes]:
    """The keys of `encode_keys`."""
    keys: list[bytes] = []
    offset = 0
    while offset < len(blob):
        (size,) = _LEN.unpack_from(blob, offset)
        offset += _LEN.size
        keys.append(blob[offset : offset + size])
        offset += size
    return keys


@dataclass(frozen=True)
class Totals:
    """What a run's completed batches add up to."""

    items: int
    bytes: int
    digest: str
    pending: int  # batches written ahead and never completed


@contextmanager
def _relaxed(conn: Connection) -> Iterator[None]:
    """One transaction on the state database committed without flushing to disk.

    Only a completion may be: its write-ahead was committed durably before the target's commit,
    so a completion lost to a power failure leaves the batch pending, and reconciliation settles
    it exactly from what is left in the target. Any later durable commit (the next write-ahead,
    the run's ledger entry) flushes the log up to itself, completions included, in order.
    """
    backend = conn.dialect.name
    if backend == "sqlite":
        # WAL mode: NORMAL syncs at checkpoints, not at each commit. SQLite refuses to change
        # the level inside a transaction, hence the commits around each pragma.
        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
        conn.commit()
        try:
            with conn.begin():
                yield
        finally:
            try:
                conn.exec_driver_sql("PRAGMA synchronous=FULL")
                conn.commit()
            except Exception:
                # A pooled connection must never go back with weaker durability.
                conn.invalidate()
                raise
        return
    with conn.begin():
        if backend == "postgresql":
            conn.execute(text("SET LOCAL synchronous_commit = off"))
        yield


class StateJournal:
    """A BatchJournal writing to the state database for one run."""

    def __init__(self, engine: Engine, run_id: str, commitment_key: bytes, colocated: bool) -> None:
        self._engine = engine
        self._run_id = run_id
        self._key = commitment_key
        self._colocated = colocated

    @property
    def run_id(self) -> str:
        """The run whose batches this journal records (targets name it in their own entries)."""
        return self._run_id

    @property
    def colocated(self) -> bool:
        """True when the state database is the target database."""
        return self._colocated

    def _done_values(
        self, removed: Sequence[bytes], nbytes: int, items: int | None
    ) -> dict[str, Any]:
        digest = KeyDigest(self._key)
        digest.update(removed)
        return {
            "state": "done",
            "candidates": None,
            "items": digest.count if items is None else items,
            "bytes": nbytes,
            "digest": digest.hexdigest(),
        }

    def write_ahead(self, keys: Sequence[bytes], items: int | None = None) -> int:
        """Commit the candidate keys of the next batch; returns its id.

        `items` is how many rows the keys stand for when a key names a container (a table copy);
        it is what a reconciled batch counts when all its candidates are gone.
        """
        with self._engine.begin() as conn:
            result = conn.execute(
                insert(run_batch).values(
                    run_id=self._run_id,
                    state="pending",
                    candidates=encode_keys(keys),
                    items=len(keys) if items is None else items,
                    bytes=0,
                    created_at=datetime.now(UTC),
                )
            )
            batch_id = result.inserted_primary_key
            assert batch_id is not None
            return int(batch_id[0])

    def complete(
        self, batch_id: int, removed: Sequence[bytes], nbytes: int, items: int | None = None
    ) -> None:
        """Record what a written-ahead batch really removed (committed without waiting for the
        disk: see _relaxed)."""
        values = self._done_values(removed, nbytes, items)
        with self._engine.connect() as conn, _relaxed(conn):
            conn.execute(update(run_batch).where(run_batch.c.id == batch_id).values(**values))

    def record_in(
        self, connection: Any, removed: Sequence[bytes], nbytes: int, items: int | None = None
    ) -> None:
        """Record a batch inside the target's transaction (colocated state database only)."""
        if not self._colocated:
            raise RuntimeError("record_in needs the state database in the target database")
        connection.execute(
            insert(run_batch).values(
                run_id=self._run_id,
                created_at=datetime.now(UTC),
                **self._done_values(removed, nbytes, items),
            )
        )


@dataclass(frozen=True)
class PendingBatch:
    """A batch written ahead and never completed: its candidates and the items they stand for."""

    batch_id: int
    candidates: list[bytes]
    items: int

    def settle(self, present: set[bytes]) -> tuple[list[bytes], int]:
        """(removed keys, removed items) given which candidates are still present."""
        removed = [k for k in self.candidates if k not in present]
        if len(removed) == len(self.candidates):
            return removed, self.items
        return removed, len(removed)


def pending_batches(conn: Connection, run_id: str) -> Iterator[PendingBatch]:
    """Every batch of a run that was written ahead and never completed."""
    rows = conn.execute(
        select(run_batch.c.id, run_batch.c.candidates, run_batch.c["items"]).where(
            run_batch.c.run_id == run_id, run_batch.c.state == "pending"
        )
    ).all()
    for row in rows:
        yield PendingBatch(row.id, decode_keys(row.candidates or b""), row.items)


def run_totals(conn: Connection, run_id: str, commitment_key: bytes) -> Totals:
    """Add up the completed batches of a run."""
    rows = conn.execute(
        select(
            run_batch.c.state, run_batch.c["items"], run_batch.c.bytes, run_batch.c.digest
        ).where(run_batch.c.run_id == run_id)
    ).all()
    total = KeyDigest(commitment_key)
    items = nbytes = pending = 0
    for row in rows:
        if row.state != "done":
            pending += 1
            continue
        # Items and keys differ for containers (a dropped table is one key, many rows).
        total.merge(KeyDigest.restore(commitment_key, row.digest, 0))
        items += row.items
        nbytes += row.bytes
    return Totals(items=items, bytes=nbytes, digest=total.hexdigest(), pending=pending)
