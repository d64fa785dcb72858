"""A directory that is a copy (`path` + `since` + `retain`, action drop): removed whole, as one item.

The copy is reached component by component with O_NOFOLLOW and emptied bottom-up through directory
descriptors, like any files rule: a symlink inside it is unlinked (the link, never its target), a
mount point inside it is not crossed (the copy then stays, reported as not fully removed).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as day_start
from pathlib import Path, PurePosixPath
from typing import Any

from retentiond.duration import Duration
from retentiond.engine import BatchJournal, Outcome, Plan, Target, TargetContext
from retentiond.errors import RuleError
from retentiond.stores.files.removal import Done, Removal, Result, remove_file
from retentiond.stores.files.selection import hold_prefixes, holds_touch_dir
from retentiond.stores.files.walk import (
    DirHandle,
    Root,
    Tally,
    open_rule_root,
    open_subdir,
    present_keys,
    walk,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyRule:
    """A directory-copy rule, its path split into components."""

    name: str
    store: str
    root: Path
    parts: tuple[str, ...]
    since: date
    retain: Duration
    holds: tuple[str, ...]
    overwrite: bool
    prune_empty_dirs: bool

    @property
    def rel(self) -> str:
        """The copy's path relative to the root."""
        return "/".join(self.parts)

    def deadline(self) -> datetime:
        """When the copy expires: `since` (midnight UTC) plus `retain`."""
        return self.retain.add_to(datetime.combine(self.since, day_start.min, UTC))


@dataclass
class Measure:
    """Size of a copy; counts only."""

    files: int = 0
    bytes: int = 0


class CopyTarget:
    """A directory-copy rule bound to its store root."""

    def __init__(self, rule: CopyRule) -> None:
        self.rule = rule

    def _open(self) -> Root:
        return open_rule_root(self.rule.root, self.rule.name, self.rule.store)

    def _chain(self, root: Root, tally: Tally) -> list[DirHandle] | None:
        """Open every directory from the root's child down to the copy; None if it is gone."""
        chain: list[DirHandle] = []
        handle = root.handle
        for name in self.rule.parts:
            vanished = tally.vanished
            child = open_subdir(root, handle, name, tally)
            if child is None:
                for opened in chain:
                    opened.release()
                if tally.vanished > vanished:
                    return None
                raise RuleError(
                    f"rule {self.rule.name}: path is a symlink, not a directory, on another file "
                    "system or unreadable; refusing to touch it"
                )
            chain.append(child)
            handle = child
        return chain

    def _measure(self, root: Root, top: DirHandle, tally: Tally) -> Measure:
        measure = Measure()
        for visit in walk(Root(top, root.dev, root.mount), (), None, tally):
            if visit.leaving:
                continue
            for chunk in visit.chunks():
                for entry in chunk:
                    try:
                        st = os.stat(entry.name, dir_fd=visit.handle.fd, follow_symlinks=False)
                    except OSError:
                        tally.errors += 1
                        continue
                    if stat.S_ISREG(st.st_mode):
                        measure.files += 1
                        measure.bytes += st.st_size
        return measure

    def plan(self) -> Plan:
        """Whether the copy is past its deadline, and its size; reads only."""
        now = datetime.now(UTC)
        deadline = self.rule.deadline()
        tally = Tally()
        root = self._open()
        try:
            chain = self._chain(root, tally)
            measure = Measure()
            if chain is not None:
                try:
                    measure = self._measure(root, chain[-1], tally)
                finally:
                    for handle in chain:
                        handle.release()
        finally:
            root.handle.release()
        present = chain is not None
        expired = present and now >= deadline
        held = expired and holds_touch_dir(self.rule.holds, self.rule.rel)
        made = datetime.combine(self.rule.since, day_start.min, UTC)
        return Plan(
            rule=self.rule.name,
            action="drop",
            target=self.rule.rel,
            method=self._method(),
            cutoff=None,
            clock="local",
            total_items=1 if present else 0,
            expired_items=1 if expired and not held else 0,
            held_items=1 if held else 0,
            bytes=measure.bytes if expired and not held else 0,
            oldest_age_seconds=(now - made).total_seconds() if expired and not held else None,
            details={
                "present": present,
                "deadline": deadline.isoformat(),
                "files": measure.files,
                "size": measure.bytes,
                "skipped_other_filesystems": tally.other_fs,
                "errors": tally.errors,
            },
        )

    def _method(self) -> str:
        return "overwrite+remove-tree" if self.rule.overwrite else "remove-tree"

    def execute(self, plan: Plan, journal: BatchJournal, stop: threading.Event) -> Outcome:
        """Remove the whole copy, if the plan found it expired and no hold touches it."""
        if plan.expired_items == 0:
            return Outcome(items=0, bytes=0, digest="", method=self._method())
        if datetime.now(UTC) < self.rule.deadline() or holds_touch_dir(
            self.rule.holds, self.rule.rel
        ):
            raise RuleError(f"rule {self.rule.name}: the copy is no longer due; nothing removed")
        tally = Tally()
        root = self._open()
        done = Done(removed=[])
        chain: list[DirHandle] | None = None
        gone = False
        try:
            chain = self._chain(root, tally)
            if chain is None:
                return Outcome(items=0, bytes=0, digest="", method=self._method())
            key = os.fsencode(self.rule.rel)
            batch_id = journal.write_ahead([key])
            try:
                emptied = self._empty(root, chain[-1], done, tally, stop)
                gone = emptied and self._rmdir(chain, len(chain) - 1, root)
            finally:
                journal.complete(batch_id, [key] if gone else [], done.nbytes)
            if gone and self.rule.prune_empty_dirs:
                for index in range(len(chain) - 2, -1, -1):
                    if not self._rmdir(chain, index, root):
                        break
        finally:
            for handle in chain or ():
                handle.release()
            root.handle.release()
        # A mount point inside the copy keeps it from going: reported as an error of the run.
        errors = done.errors + tally.errors + tally.other_fs
        if not gone:
            log.warning(
                "rule %s: the copy was not removed completely (%d errors, %d mount points)",
                self.rule.name,
                errors,
                tally.other_fs,
            )
        return Outcome(
            items=1 if gone else 0,
            bytes=done.nbytes,
            digest="",
            method=self._method(),
            errors=errors,
            remaining_expired=0 if gone else 1,
            details=self._details(done, tally, gone, stop.is_set()),
        )

    def _details(self, done: Done, tally: Tally, gone: bool, stopped: bool) -> dict[str, Any]:
        return {
            "removed_whole": gone,
            "stopped": stopped,
            "skipped_other_filesystems": tally.other_fs,
            "hardlinks_not_overwritten": done.not_overwritten,
            "error_codes": dict(done.error_codes or {}),
        }

    def _empty(
        self, root: Root, top: DirHandle, done: Done, tally: Tally, stop: threading.Event
    ) -> bool:
        """Remove everything under `top`, bottom-up; True when nothing is left in it."""
        how = Removal(os.stat, _never_young, 0, root.dev, root.mount, self.rule.overwrite)
        left = 0
        for visit in walk(Root(top, root.dev, root.mount), (), None, tally, every_entry=True):
            handle = visit.handle
            if visit.leaving:
                if handle is not top and handle.parent is not None:
                    try:
                        os.rmdir(handle.name, dir_fd=handle.parent.fd)
                    except OSError:
                        left += 1
                continue
            if stop.is_set():
                return False
            for chunk in visit.chunks():
                left += sum(not self._remove_entry(handle.fd, entry, how, done) for entry in chunk)
        done.removed = []
        return left == 0 and tally.other_fs == 0 and tally.unreadable_dirs == 0

    def _remove_entry(self, fd: int, entry: os.DirEntry[str], how: Removal, done: Done) -> bool:
        """Remove one entry of the copy (a link or special file is unlinked, never followed)."""
        if entry.is_file(follow_symlinks=False):
            try:
                ino = os.stat(entry.name, dir_fd=fd, follow_symlinks=False).st_ino
            except FileNotFoundError:
                return True
            except OSError:
                ino = -1  # remove_file meets the same error and counts it
            result = remove_file(fd, entry.name, ino, how, done, b"")
            return result is Result.REMOVED or result is Result.VANISHED
        try:
            os.unlink(entry.name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            done.errors += 1
            done.count_error(errno.errorcode.get(exc.errno or 0, "OSError"))
            return False
        return True

    def _rmdir(self, chain: list[DirHandle], index: int, root: Root) -> bool:
        """Remove the emptied directory chain[index] from its parent, if it is still the same one."""
        handle = chain[index]
        parent_fd = chain[index - 1].fd if index > 0 else root.handle.fd
        try:
            st = os.stat(handle.name, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != (root.dev, handle.ino):
                return False
            os.rmdir(handle.name, dir_fd=parent_fd)
        except OSError:
            return False
        return True

    def still_present(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of these copy paths still exist; unknown counts as present."""
        return present_keys(self._open(), keys)


def _never_young(_st: Any) -> int:
    # Every file of an expired copy goes, whatever its own times: the copy expired as a whole.
    return -1


def make_copy_target(context: TargetContext) -> Target:
    """The target of a drop rule on a files store."""
    rule = context.rule
    if rule.path is None or rule.since is None or rule.retain is None:
        raise RuleError(f"rule {rule.name}: a files drop rule needs path, since and retain")
    root = Path(context.store.root)
    parts = tuple(p for p in rule.path.split("/") if p not in ("", "."))
    if not parts or ".." in parts:
        raise RuleError(f"rule {rule.name}: path must name a directory under the store root")
    return CopyTarget(
        CopyRule(
            name=rule.name,
            store=context.store_name or "",
            root=root,
            parts=parts,
            since=rule.since,
            retain=rule.retain,
            holds=hold_prefixes(context.holds, PurePosixPath(root)),
            overwrite=rule.overwrite,
            prune_empty_dirs=rule.prune_empty_dirs,
        )
    )
