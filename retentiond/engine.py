"""The contract between the runner and the stores: plans, outcomes and the batch journal.

A target (one rule bound to one store) first builds a read-only `Plan`; the runner checks the guards
against it; only then does the target `execute` the plan, reporting every committed batch to the
journal so that an interrupted run can be reconciled and its ledger entry written exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Plan:
    """What one rule would remove now; built without writing anything to the target."""

    rule: str
    action: str  # delete, mask, drop, shred
    target: str  # the target as configured (table, glob, "sealed copies"), never a key or value
    method: (
        str  # how it would be removed: "ctid-ranges", "pk-ranges", "partition-drop", "unlink"...
    )
    cutoff: datetime | None  # items older than this are expired (None for copies and shreds)
    clock: str  # where the cutoff's "now" came from: "database" or "local"
    total_items: int  # size of the whole target, the denominator of max_fraction
    expired_items: int  # what the run would remove (holds already subtracted)
    held_items: int  # expired items that a hold keeps
    bytes: int  # estimate of the bytes the run would remove
    oldest_age_seconds: float | None  # age of the oldest expired item, None when nothing expired
    details: Mapping[str, Any] = field(default_factory=dict)  # extra facts, never personal data


@dataclass(frozen=True)
class Outcome:
    """What a run really removed, as the journal recorded it."""

    items: int
    bytes: int
    digest: str  # keyed digest of the removed keys or paths (see ledger.digest)
    method: str
    errors: int = 0  # items that could not be removed (permission denied...), the run went on
    remaining_expired: int = 0  # post-check: expired, unheld items still present
    details: Mapping[str, Any] = field(default_factory=dict)


class BatchJournal(Protocol):
    """Where a target reports its batches so that no committed deletion goes unrecorded."""

    # `items`: how many rows the keys stand for when a key names a container (a dropped partition
    # or table copy is one key, its qualified name, but many rows). None means one item per key.
    # A reconciled batch whose candidates are all gone counts the `items` given to `write_ahead`.

    def write_ahead(self, keys: Sequence[bytes], items: int | None = None) -> int:
        """Record the candidate keys of the next batch before deleting them; returns a batch id."""
        ...

    def complete(
        self, batch_id: int, removed: Sequence[bytes], nbytes: int, items: int | None = None
    ) -> None:
        """Record what the batch announced by `write_ahead` really removed."""
        ...

    def record_in(
        self, connection: Any, removed: Sequence[bytes], nbytes: int, items: int | None = None
    ) -> None:
        """Record a batch through the target's own connection, inside its transaction.

        Only valid when `colocated` is true: the state database is the target's database, so the
        deletion and its record commit or vanish together.
        """
        ...

    @property
    def colocated(self) -> bool:
        """True when the state database lives in the target database itself."""
        ...


class Target(Protocol):
    """One rule bound to its store."""

    def plan(self) -> Plan:
        """Inspect the store and say what would be removed; never writes to the target."""
        ...

    def execute(self, plan: Plan, journal: BatchJournal, stop: threading.Event) -> Outcome:
        """Remove what `plan` selected, re-checking the predicate and holds in every statement.

        Stops between batches when `stop` is set. Raises on failure; batches already reported to the
        journal stay recorded.
        """
        ...

    def still_present(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of these keys (from an interrupted batch) still exist; used to reconcile."""
        ...


@dataclass(frozen=True)
class HoldSpec:
    """One active hold, from the config or the state database, as the stores apply it."""

    reason: str
    rule: str | None = None  # None: every rule
    table: str | None = None  # schema.table the `where` applies to
    where: Mapping[str, tuple[int | str, ...]] | None = None  # column -> key values kept
    path_prefix: str | None = None  # relative path prefix kept under a files store root
    source: str = "config"  # "config" or "state:<id>"


@dataclass(frozen=True)
class TargetContext:
    """Everything a store needs to build the target of one rule."""

    rule: Any  # retentiond.config.model.Rule (Any avoids an import cycle with the config package)
    store_name: str | None
    store: Any  # SqlStore, FilesStore, or None for shred rules
    holds: tuple[HoldSpec, ...]  # the holds that apply to this rule
    daemon: Any  # retentiond.config.model.DaemonSection: budgets and timeouts
    state_url: Any  # sqlalchemy URL of the state database (to detect colocation)
    kek_file: Any = None  # Path of [keys] kek_file: the keystore that shred rules destroy keys in
    state_engine: Any = None  # the runner's state Engine, shared so a run opens no second pool
