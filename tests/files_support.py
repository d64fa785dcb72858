"""Helpers of the files-rule tests: seeding real trees, binding rules, an in-memory journal."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retentiond.config.model import FilesStore, Rule
from retentiond.engine import HoldSpec, Outcome, Plan, Target, TargetContext
from retentiond.stores.files.target import make_files_target

DAY = 86400.0


def seed(root: Path, rel: str | bytes, age_days: float = 0.0, data: bytes = b"lab data\n") -> Path:
    """Create the file `rel` under `root` (parents too) with an mtime `age_days` in the past."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(rel))))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age_days:
        moment = time.time() - age_days * DAY
        os.utime(path, (moment, moment))
    return path


def tree(root: Path) -> set[bytes]:
    """Every entry under `root` (files, links, directories) as a relative path in bytes."""
    base = os.fsencode(root)
    found: set[bytes] = set()
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), base))
    return found


def bind(root: Path, holds: Sequence[HoldSpec] = (), **rule: Any) -> Target:
    """The target of a files rule on `root` (glob **/*.csv, retain 30d, unless given)."""
    fields: dict[str, Any] = {"name": "transfer-exports", "store": "transfer", "action": "delete"}
    if rule.get("action", "delete") == "delete":
        fields.update(glob="**/*.csv", retain="30d")
    fields.update(rule)
    context = TargetContext(
        rule=Rule.model_validate(fields),
        store_name="transfer",
        store=FilesStore(kind="files", root=root),
        holds=tuple(holds),
        daemon=None,
        state_url=None,
    )
    return make_files_target(context)


@dataclass
class MemoryJournal:
    """A BatchJournal keeping batches in memory; hooks run inside write_ahead (between the scan
    and the unlinks), and `crash` makes `complete` fail as a kill would, after the deletions."""

    before_delete: Callable[[list[bytes]], None] | None = None
    crash: bool = False
    pending: dict[int, list[bytes]] = field(default_factory=dict)
    done: dict[int, tuple[list[bytes], int]] = field(default_factory=dict)
    colocated: bool = False

    def write_ahead(self, keys: Sequence[bytes], items: int | None = None) -> int:
        batch_id = len(self.pending) + 1
        self.pending[batch_id] = list(keys)
        if self.before_delete is not None:
            self.before_delete(list(keys))
        return batch_id

    def complete(
        self, batch_id: int, removed: Sequence[bytes], nbytes: int, items: int | None = None
    ) -> None:
        if self.crash:
            raise KeyboardInterrupt("killed between the unlinks and complete")
        assert batch_id in self.pending and batch_id not in self.done
        assert set(removed) <= set(self.pending[batch_id]), "removed a file never written ahead"
        self.done[batch_id] = (list(removed), nbytes)

    def record_in(
        self, connection: Any, removed: Sequence[bytes], nbytes: int, items: int | None = None
    ) -> None:
        raise AssertionError("a files target never records inside a database transaction")

    @property
    def removed(self) -> list[bytes]:
        """Every key the batches reported removed, in order."""
        return [key for keys, _ in self.done.values() for key in keys]

    @property
    def nbytes(self) -> int:
        """Bytes the batches reported removed."""
        return sum(n for _, n in self.done.values())


def apply(
    target: Target, journal: MemoryJournal | None = None
) -> tuple[Plan, Outcome, MemoryJournal]:
    """Plan then execute, as the runner does (without its guards)."""
    journal = journal or MemoryJournal()
    plan = target.plan()
    outcome = target.execute(plan, journal, threading.Event())
    return plan, outcome, journal
