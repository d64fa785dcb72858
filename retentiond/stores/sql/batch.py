"""One batch of a purge: a short transaction that removes, records and commits (safety rules 1, 10).

Each statement that removes rows carries the batch's range AND the rule's predicate AND the holds,
and returns the keys it removed. Before the transaction commits, those exact keys reach the journal:
inside the same transaction when the state database is the target's own database, otherwise as a
write-ahead record committed in the state database first and completed after the target's commit.
An interrupted batch is thus either rolled back (its keys are still present) or recorded.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, TableClause, and_, delete, select, update
from sqlalchemy.engine import Connection, Engine
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from retentiond.engine import BatchJournal
from retentiond.errors import RuleError, describe_error
from retentiond.stores.sql.cascade import (
    BatchMismatch,
    CascadeNode,
    referred_columns,
    remove_dependents,
)
from retentiond.stores.sql.dialect import (
    TIMEOUT,
    WRITE_OPTION,
    ContainerDrop,
    ContainerFallback,
    SqlDialect,
)
from retentiond.stores.sql.table import RowTable, encode_keys, key_match
from retentiond.stores.sql.walk import BatchSizer

_ATTEMPTS = 6
_DROP_ATTEMPTS = 3  # an exclusive lock the application keeps refusing: fall back sooner
_RESOLVE_ATTEMPTS = 9  # about 8 s for the target to come back after a failed commit
_CHUNK = 1000

PresenceCheck = Callable[[Connection, Sequence[bytes]], set[bytes]]


class UnresolvedCommit(RuleError):
    """A commit failed and the target stayed unreachable: what it removed is settled later."""

    def __init__(self, cause: str) -> None:
        super().__init__(
            f"the target database was lost during a commit and stayed unreachable ({cause}); "
            "the batch is settled from what is left when the run is reconciled"
        )


@dataclass
class Totals:
    """What the batches of one run removed, for the outcome and its details."""

    items: int = 0
    bytes: int = 0
    batches: int = 0
    retries: int = 0
    longest_s: float = 0.0
    containers: int = 0
    skipped: int = 0  # ranges left to the next run: the application kept their rows locked
    dependents: dict[str, int] = field(default_factory=dict)

    def add(self, items: int, nbytes: int, elapsed_s: float) -> None:
        """Count one committed batch."""
        self.items += items
        self.bytes += nbytes
        self.batches += 1
        self.longest_s = max(self.longest_s, elapsed_s)


_SWITCH_S = 0.0005  # GIL hand-over while a completer digests: the statement thread waits less
_switching_lock = threading.Lock()
_switching_users = 0
_switching_saved = 0.0


def _fast_switching(enter: bool) -> None:
    """Shorten the interpreter's thread switch interval while any completer runs.

    The completer's digest loop holds the GIL for whole switch intervals (5 ms by default); the
    thread waiting for the database's answer would otherwise wait that long to read it, per batch.
    """
    global _switching_users, _switching_saved
    with _switching_lock:
        if enter:
            if _switching_users == 0:
                _switching_saved = sys.getswitchinterval()
                sys.setswitchinterval(_SWITCH_S)
            _switching_users += 1
        else:
            _switching_users -= 1
            if _switching_users == 0:
                sys.setswitchinterval(_switching_saved)


class Completer:
    """Completes committed batches in a background thread, in order.

    Completing a batch (digesting its keys, committing to the state database) is the slowest part
    of a purge in Python; done here, it overlaps the next batch's statement, during which the main
    thread only waits for the database. A batch is completed only after its target commit, so a
    crash at any moment leaves at worst a pending write-ahead, which reconciliation settles. The
    queue is short, so memory stays bounded whatever the table size.
    """

    def __init__(self, journal: BatchJournal) -> None:
        self.journal = journal
        self.failure: BaseException | None = None
        self._queue: queue.Queue[tuple[int, list[bytes], int, int | None] | None] = queue.Queue(2)
        self._thread = threading.Thread(target=self._work, name="journal-complete", daemon=True)
        _fast_switching(True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if self.failure is None:
                try:
                    self.journal.complete(*job)
                except BaseException as exc:  # re-raised in the main thread
                    self.failure = exc

    def submit(self, batch_id: int, keys: list[bytes], nbytes: int, items: int | None) -> None:
        """Queue a committed batch for completion; raises a failure of an earlier one."""
        self.check()
        self._queue.put((batch_id, keys, nbytes, items))

    def check(self) -> None:
        """Raise the failure of a completion, if any."""
        if self.failure is not None:
            raise self.failure

    def close(self) -> None:
        """Complete every queued batch, then stop; raises a failure of any of them."""
        self._queue.put(None)
        self._thread.join()
        _fast_switching(False)
        self.check()


class Recorder:
    """Commits batches together with their journal records, and retries transient failures."""

    def __init__(
        self, engine: Engine, dialect: SqlDialect, journal: BatchJournal, present: PresenceCheck
    ) -> None:
        self.engine = engine
        self.dialect = dialect
        self.journal = journal
        self.present = present
        self.totals = Totals()
        self.completer: Completer | None = None
        self._per_drop_s = 0.0

    def __enter__(self) -> Recorder:
        self.completer = Completer(self.journal)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        completer, self.completer = self.completer, None
        if completer is None:
            return
        try:
            completer.close()
        except BaseException:
            if exc_type is None:
                raise  # otherwise the error already leaving the run is the one to report

    def connect(self) -> Connection:
        """A connection for a writing transaction (SQLite takes its write lock at BEGIN)."""
        return self.engine.connect().execution_options(**{WRITE_OPTION: True})

    def retrying(self, sizer: BatchSizer | None, attempts: int = _ATTEMPTS) -> Retrying:
        """Retry transient errors with backoff; a timeout also shrinks the next batch."""

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, BatchMismatch) or self.dialect.classify(exc) is not None

        def before_sleep(state: RetryCallState) -> None:
            self.totals.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            if sizer is not None and exc is not None and self.dialect.classify(exc) == TIMEOUT:
                sizer.shrink()

        return Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.05, max=5.0),
            retry=retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,
        )

    def commit(self, conn: Connection, keys: list[bytes], nbytes: int, items: int | None) -> None:
        """Record `keys` and commit; the record and the deletion never part (safety rule 10)."""
        if self.journal.colocated:
            self.journal.record_in(conn, keys, nbytes, items)
            conn.commit()
            return
        batch_id = self.journal.write_ahead(keys, items)
        try:
            conn.commit()
        except Exception:
            self._resolve(batch_id, keys, nbytes, items)
            raise
        if self.completer is not None:
            self.completer.submit(batch_id, keys, nbytes, items)
        else:
            self.journal.complete(batch_id, keys, nbytes, items)

    def _present_now(self, keys: Sequence[bytes]) -> set[bytes]:
        with self.engine.connect() as conn:
            return self.present(conn, keys)

    def _resolve(self, batch_id: int, keys: list[bytes], nbytes: int, items: int | None) -> None:
        """After a failed commit, record what is gone before the batch may be retried.

        A retry while this is unknown would remove the same keys under another batch, and the
        pending one, settled later from what is left, would count them a second time. A target
        that stays unreachable (a server restarting for longer) stops the run instead: the
        write-ahead stays pending for the reconciliation, and nothing is retried."""
        try:
            still: set[bytes] = Retrying(
                stop=stop_after_attempt(_RESOLVE_ATTEMPTS),
                wait=wait_exponential(multiplier=0.05, max=2.0),
                reraise=True,
            )(self._present_now, keys)
        except Exception as exc:
            raise UnresolvedCommit(describe_error(exc)) from None
        gone = [k for k in keys if k not in still]
        whole = len(gone) == len(keys)
        share = nbytes * len(gone) // max(1, len(keys))
        self.journal.complete(batch_id, gone, share, items if whole else None)

    def _drop_attempt(self, drop: ContainerDrop) -> int:
        keys = [k.encode() for k in drop.keys]
        with self.connect() as conn:
            started = time.monotonic()
            conn.begin()
            rows, nbytes = drop.measure(conn)
            if self.journal.colocated and not self.dialect.ddl_commits:
                drop.remove(conn)
                self.journal.record_in(conn, keys, nbytes, rows)
                conn.commit()
            else:
                # Recorded before the drop runs: where DDL commits by itself (MySQL), the drop is
                # durable the moment it returns.
                batch_id = self.journal.write_ahead(keys, rows)
                try:
                    drop.remove(conn)
                    conn.commit()
                except Exception:
                    self._resolve(batch_id, keys, nbytes, rows)
                    raise
                self.journal.complete(batch_id, keys, nbytes, rows)
            self.totals.add(rows, nbytes, time.monotonic() - started)
        self.totals.containers += 1
        return rows

    def drop(self, drop: ContainerDrop) -> int:
        """Drop a whole container; returns the rows it held."""
        rows: int = self.retrying(None, _DROP_ATTEMPTS)(self._drop_attempt, drop)
        return rows

    def _group_attempt(
        self, drops: Sequence[ContainerDrop], budget_s: float
    ) -> tuple[int, list[ContainerDrop]]:
        # Several partitions in one transaction, as many as fit in the time budget: the parent's
        # exclusive lock is held no longer than one batch, and one commit serves them all. Each
        # partition has its own savepoint, so one that must be kept rolls back alone.
        names: list[bytes] = []
        rows = nbytes = used = 0
        kept: list[ContainerDrop] = []
        # How many fit: the partitions' own work (detach, count, drop, as timed in earlier
        # groups, starting with one) fills the budget. The commit (journal record, WAL flush,
        # unlinked files) is paid once per group whatever its size: dividing it among the
        # partitions would let a slow disk hold every group to one partition and one commit each.
        fit = max(1, int(budget_s / self._per_drop_s)) if self._per_drop_s else 1
        with self.connect() as conn:
            started = time.monotonic()
            conn.begin()
            for drop in drops[:fit]:
                used += 1
                savepoint = conn.begin_nested()
                try:
                    count, size = drop.measure(conn)
                    drop.remove(conn)
                except ContainerFallback:
                    savepoint.rollback()
                    kept.append(drop)
                    continue
                savepoint.commit()
                names += [k.encode() for k in drop.keys]
                rows += count
                nbytes += size
            measured = time.monotonic()
            if names:
                self.commit(conn, names, nbytes, rows)
                self.totals.add(rows, nbytes, time.monotonic() - started)
                self.totals.containers += len(names)
            else:
                conn.commit()
            self._per_drop_s = max(1e-4, (measured - started) / used)
        return used, kept

    def drop_group(
        self, drops: Sequence[ContainerDrop], budget_s: float
    ) -> tuple[int, list[ContainerDrop]]:
        """Drop the first partitions of `drops` that fit in one budgeted transaction; returns how
        many were handled and those that must be walked row by row instead."""
        result: tuple[int, list[ContainerDrop]] = self.retrying(None, _DROP_ATTEMPTS)(
            self._group_attempt, drops, budget_s
        )
        return result


class BatchRunner(Recorder):
    """Removes what a row rule selects, one range of the table per short transaction."""

    def __init__(
        self,
        engine: Engine,
        dialect: SqlDialect,
        journal: BatchJournal,
        present: PresenceCheck,
        rt: RowTable,
        cascade: tuple[CascadeNode, ...],
        cutoff: datetime,
        row_bytes: int,
    ) -> None:
        super().__init__(engine, dialect, journal, present)
        self.rt = rt
        self.cascade = cascade
        self.cutoff = cutoff
        self.row_bytes = max(0, row_bytes)

    def _statement(self, source: TableClause, where: ColumnElement[bool]) -> Any:
        if self.rt.action == "mask":
            return update(source).where(where).values({c: None for c in self.rt.masked})
        return delete(source).where(where)

    def _remove_direct(
        self, conn: Connection, source: TableClause, where: ColumnElement[bool]
    ) -> list[bytes]:
        return self.dialect.removed_keys(
            conn, self._statement(source, where), self.rt.key_columns(source)
        )

    def _remove_locked(
        self,
        conn: Connection,
        source: TableClause,
        where: ColumnElement[bool],
        counts: dict[str, int],
    ) -> list[bytes]:
        # No RETURNING (MySQL), or dependents to delete first: lock the selected rows, then remove
        # exactly those, checking that each statement touched as many rows as were locked.
        pk = self.rt.key_columns(source)
        extra = [c for c in referred_columns(self.cascade) if c not in self.rt.pk]
        names = list(self.rt.pk) + extra
        wanted = pk + [source.c[c] for c in extra]
        rows = [tuple(r) for r in conn.execute(select(*wanted).where(where).with_for_update())]
        if not rows:
            return []
        keys: list[bytes] = []
        for node in self.cascade:
            positions = [names.index(c) for c in node.fk.referred]
            parents = [tuple(r[p] for p in positions) for r in rows]
            keys += remove_dependents(conn, node, parents, counts)
        width = len(pk)
        for start in range(0, len(rows), _CHUNK):
            chunk = [r[:width] for r in rows[start : start + _CHUNK]]
            result = conn.execute(self._statement(source, and_(where, key_match(pk, chunk))))
            if result.rowcount != len(chunk):
                raise BatchMismatch(self.rt.configured)
        return keys + encode_keys(rows, width)

    def _direct(self) -> bool:
        action = self.rt.action
        returning = (
            self.dialect.update_returning if action == "mask" else self.dialect.delete_returning
        )
        return returning and not self.cascade

    def _attempt(self, source: TableClause, scope: ColumnElement[bool]) -> tuple[int, float]:
        where = and_(scope, self.rt.selects(source, self.cutoff))
        counts: dict[str, int] = {}
        with self.connect() as conn:
            started = time.monotonic()
            conn.begin()
            if self._direct():
                keys = self._remove_direct(conn, source, where)
            else:
                keys = self._remove_locked(conn, source, where, counts)
            nbytes = len(keys) * self.row_bytes
            if keys:
                self.commit(conn, keys, nbytes, None)
            else:
                conn.commit()
            elapsed = time.monotonic() - started
        self.totals.add(len(keys), nbytes, elapsed)
        for name, count in counts.items():
            self.totals.dependents[name] = self.totals.dependents.get(name, 0) + count
        return len(keys), elapsed

    def remove(
        self, source: TableClause, scope: ColumnElement[bool], sizer: BatchSizer | None
    ) -> tuple[int, float]:
        """Remove what the rule selects within `scope`: (rows, seconds the transaction took)."""
        result: tuple[int, float] = self.retrying(sizer)(self._attempt, source, scope)
        return result
