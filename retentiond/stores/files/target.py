"""File rules: expired files under a store root, found by a safe walk and unlinked in journaled batches.

`plan` walks the tree once and counts (it never writes); `execute` walks it again and removes, in
batches announced to the journal before anything is unlinked. Nothing is held in memory per file
beyond the current batch, so a tree of millions of files costs what one batch costs.

The post-check (files still overdue after the run) is counted during the removing walk itself: every
expired, unheld file the walk met and did not remove (an error, a cap, a replacement) is one. A second
full walk would double the run's cost to learn only about files created behind the walk while it ran,
which the next run finds anyway.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

from retentiond.duration import Duration
from retentiond.engine import BatchJournal, Outcome, Plan, Target, TargetContext
from retentiond.errors import RuleError
from retentiond.stores.files.copies import make_copy_target
from retentiond.stores.files.globs import GlobError
from retentiond.stores.files.removal import Done, Removal, Result, remove_file
from retentiond.stores.files.selection import DirView, Selection, make_selection
from retentiond.stores.files.stats import (
    StatLike,
    age_reader,
    birth_stat,
    statx_available,
)
from retentiond.stores.files.survey import Aging, Survey, classify, survey_split, worker_count
from retentiond.stores.files.walk import (
    DirHandle,
    Root,
    Visit,
    open_rule_root,
    present_keys,
    walk,
)

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BATCH_FILES = 4096  # files per journal batch: two state-database commits amortised over these
_BATCH_DIRS = 64  # directories a batch may keep open (each file is unlinked through its directory)
# Unlinking waits on the file system's journal far more than on the CPU: two threads keep the disk
# busy while the other waits, without taking more than the machine's share.
_UNLINK_THREADS = 2
_PARALLEL_FROM = 64  # smaller batches are not worth a thread hand-off


def to_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime, exactly (no float rounding)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


@dataclass(frozen=True)
class FileRule:
    """A files rule with everything compiled that the walk needs."""

    name: str
    store: str
    root: Path
    selection: Selection
    retain: Duration
    age_source: str
    overwrite: bool
    prune_empty_dirs: bool


class _Batch:
    """Files chosen for removal, waiting to be announced to the journal and unlinked."""

    def __init__(self) -> None:
        self.items: list[tuple[DirHandle, str, bytes, int]] = []
        self.handles: dict[int, DirHandle] = {}

    def add(self, handle: DirHandle, name: str, ino: int) -> None:
        """Queue `name` of `handle`'s directory, keeping the directory open until the batch ends."""
        if id(handle) not in self.handles:
            handle.retain()
            self.handles[id(handle)] = handle
        self.items.append((handle, name, os.fsencode(handle.prefix + name), ino))

    def full(self) -> bool:
        """Whether the batch should go now."""
        return len(self.items) >= _BATCH_FILES or len(self.handles) >= _BATCH_DIRS

    def clear(self) -> None:
        """Forget the queued files and let go of their directories."""
        for handle in self.handles.values():
            handle.release()
        self.items = []
        self.handles = {}


class _Purge:
    """One execution of a files rule: the walk's consumer that batches, journals and removes."""

    def __init__(self, rule: FileRule, how: Removal, journal: BatchJournal, cap: int) -> None:
        self.rule = rule
        self.how = how
        self.journal = journal
        self.cap = cap
        self.batch = _Batch()
        self.done = Done(removed=[])
        self.items = 0
        self.over_cap = 0
        self.pruned = 0
        self.pool = ThreadPoolExecutor(_UNLINK_THREADS - 1) if _UNLINK_THREADS > 1 else None

    def close(self) -> None:
        """Release what the purge holds (queued directories, the unlink thread)."""
        self.batch.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def offer(self, handle: DirHandle, name: str, st: StatLike) -> None:
        """Queue an expired, unheld file found by the walk, within the plan's count."""
        if self.items + len(self.batch.items) >= self.cap:
            # Never remove more than the plan counted and the guards allowed: files that expired
            # or appeared since wait for the next run (and count as overdue meanwhile).
            self.over_cap += 1
            return
        self.batch.add(handle, name, st.st_ino)

    def _remove(
        self, items: Sequence[tuple[DirHandle, str, bytes, int]]
    ) -> tuple[Done, list[Result]]:
        done = Done(removed=[])
        results = [
            remove_file(handle.fd, name, ino, self.how, done, key)
            for handle, name, key, ino in items
        ]
        return done, results

    def flush(self) -> None:
        """Announce the batch to the journal, remove its files, record what really went."""
        items = self.batch.items
        if not items:
            return
        batch_id = self.journal.write_ahead([key for _, _, key, _ in items])
        if self.pool is not None and len(items) >= _PARALLEL_FROM:
            half = len(items) // 2
            other = self.pool.submit(self._remove, items[half:])
            done, results = self._remove(items[:half])
            more, more_results = other.result()
            done.merge(more)
            results += more_results
        else:
            done, results = self._remove(items)
        self.journal.complete(batch_id, done.removed, done.nbytes)
        self.items += len(done.removed)
        for (handle, _, _, _), result in zip(items, results, strict=True):
            if result is Result.REMOVED:
                handle.removed += 1
        done.removed = []  # recorded by the journal; only the counts are kept
        self.done.merge(done)
        self.batch.clear()

    def leave(self, handle: DirHandle, fixed_depth: int) -> None:
        """Remove a directory the purge emptied (never the root, never one the glob names)."""
        parent = handle.parent
        if parent is None or handle.depth <= fixed_depth:
            return
        if id(handle) in self.batch.handles:
            self.flush()
        if handle.removed == 0:
            return
        try:
            st = os.stat(handle.name, dir_fd=parent.fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != (self.how.dev, handle.ino):
                return
            os.rmdir(handle.name, dir_fd=parent.fd)
        except OSError:
            return  # not empty (new files, kept files), gone, or not ours to remove: all fine
        parent.removed += 1
        self.pruned += 1


class FilesTarget:
    """A files rule bound to its store root."""

    def __init__(self, rule: FileRule) -> None:
        self.rule = rule

    def _open(self) -> Root:
        return open_rule_root(self.rule.root, self.rule.name, self.rule.store)

    def _check_birth_time(self, root: Root) -> None:
        if self.rule.age_source != "birth":
            return
        reason = "this system's C library has no statx(2)"
        if statx_available():
            try:
                if birth_stat(".", dir_fd=root.handle.fd).st_birthtime_ns is not None:
                    return
            except OSError:
                pass
            reason = "the file system of the store root does not report birth times"
        raise RuleError(f"rule {self.rule.name}: age_source birth: {reason}; use mtime or ctime")

    def _walk(self, root: Root, survey: Survey) -> Iterator[tuple[Visit, DirView | None]]:
        glob = self.rule.selection.glob
        for visit in walk(root, glob.fixed_dirs, glob.max_depth, survey.tally):
            view = None if visit.leaving else self.rule.selection.in_dir(visit.handle.rel)
            yield visit, view

    def plan(self) -> Plan:
        """Count what the rule would remove now; reads only."""
        now = datetime.now(UTC)
        cutoff = self.rule.retain.subtract_from(now)
        cutoff_ns = to_ns(cutoff)
        root = self._open()
        try:
            self._check_birth_time(root)
            survey = survey_split(
                root, self.rule.selection, self.rule.age_source, cutoff_ns, worker_count()
            )
        finally:
            root.handle.release()
        oldest = None if survey.oldest_ns is None else (to_ns(now) - survey.oldest_ns) / 1e9
        return Plan(
            rule=self.rule.name,
            action="delete",
            target=self.rule.selection.glob.text,
            method=self._method(),
            cutoff=cutoff,
            clock="local",
            total_items=survey.total,
            expired_items=survey.expired,
            held_items=survey.held,
            bytes=survey.bytes,
            oldest_age_seconds=oldest,
            details=survey.details(self.rule.age_source),
        )

    def _method(self) -> str:
        return "overwrite+unlink" if self.rule.overwrite else "unlink"

    def execute(self, plan: Plan, journal: BatchJournal, stop: threading.Event) -> Outcome:
        """Remove the expired, unheld files, re-checking each one just before it goes."""
        if plan.cutoff is None:
            raise RuleError(f"rule {self.rule.name}: a files plan needs a cutoff")
        if plan.expired_items == 0:
            # Nothing to remove (and nothing may be: the cap is the plan's count), so a second walk
            # would only repeat the plan's post-check a moment later.
            return Outcome(
                items=0,
                bytes=0,
                digest="",
                method=self._method(),
                details={"post_check": "the plan found nothing expired"},
            )
        cutoff_ns = to_ns(plan.cutoff)
        stat_call, age = age_reader(self.rule.age_source)
        survey = Survey()
        started = time.monotonic()
        root = self._open()
        purge: _Purge | None = None
        stopped = False
        try:
            self._check_birth_time(root)
            how = Removal(stat_call, age, cutoff_ns, root.dev, root.mount, self.rule.overwrite)
            aging = Aging(stat_call, age, cutoff_ns, root.dev)
            expired: list[tuple[str, StatLike]] = []
            purge = _Purge(self.rule, how, journal, plan.expired_items)
            fixed = len(self.rule.selection.glob.fixed_dirs)
            for visit, view in self._walk(root, survey):
                if visit.leaving:
                    if self.rule.prune_empty_dirs:
                        purge.leave(visit.handle, fixed)
                    continue
                if stop.is_set():
                    stopped = True
                    break
                if view is None:
                    continue
                for chunk in visit.chunks():
                    classify(chunk, visit.handle.fd, view, aging, survey, expired)
                    for name, st in expired:
                        purge.offer(visit.handle, name, st)
                        if purge.batch.full():
                            purge.flush()
                            if stop.is_set():
                                stopped = True
                                break
                    expired.clear()
                    if stopped:
                        break
                if stopped:
                    break
            purge.flush()
        finally:
            if purge is not None:
                purge.close()
            root.handle.release()
        return self._outcome(plan, purge, survey, stopped, time.monotonic() - started)

    def _outcome(
        self, plan: Plan, purge: _Purge, survey: Survey, stopped: bool, seconds: float
    ) -> Outcome:
        done = purge.done
        left = done.errors + done.replaced_expired + purge.over_cap
        if stopped:
            # The walk did not reach every directory: what the plan counted and this run did not
            # remove is the best estimate of what is still overdue.
            left = max(left, plan.expired_items - purge.items)
        errors = done.errors + survey.tally.errors + survey.file_errors
        if errors:
            codes = ", ".join(f"{c}: {n}" for c, n in sorted((done.error_codes or {}).items()))
            log.warning(
                "rule %s: %d files could not be removed or read%s",
                self.rule.name,
                errors,
                f" ({codes})" if codes else "",
            )
        details = survey.details(self.rule.age_source)
        details.update(
            {
                "vanished": details["vanished"] + done.vanished,
                "changed": details["changed"] + done.replaced + done.young,
                "not_removed_over_plan": purge.over_cap,
                "hardlinks_not_overwritten": done.not_overwritten,
                "directories_pruned": purge.pruned,
                "stopped": stopped,
                "post_check": "estimated" if stopped else "counted during the run",
                "seconds": round(seconds, 3),
            }
        )
        return Outcome(
            items=purge.items,
            bytes=done.nbytes,
            digest="",  # the journal holds the keyed digest of what each batch removed
            method=self._method(),
            errors=errors,
            remaining_expired=left,
            details=details,
        )

    def still_present(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of these relative paths still name an entry; unknown counts as present."""
        return present_keys(self._open(), keys)


def files_rule(context: TargetContext) -> FileRule:
    """Compile a files rule from its context; config problems become RuleErrors naming the key."""
    rule = context.rule
    store = context.store
    if rule.retain is None or rule.glob is None:
        raise RuleError(f"rule {rule.name}: a files delete rule needs glob and retain")
    root = Path(store.root)
    try:
        selection = make_selection(rule.glob, rule.exclude, context.holds, PurePosixPath(root))
    except GlobError as exc:
        raise RuleError(f"rule {rule.name}: glob or exclude: {exc}") from None
    return FileRule(
        name=rule.name,
        store=context.store_name or "",
        root=root,
        selection=selection,
        retain=rule.retain,
        age_source=rule.age_source,
        overwrite=rule.overwrite,
        prune_empty_dirs=rule.prune_empty_dirs,
    )


def make_files_target(context: TargetContext) -> Target:
    """The target of a rule on a files store: expired files (delete) or a directory copy (drop)."""
    action = context.rule.action
    if action == "drop":
        return make_copy_target(context)
    if action != "delete":
        raise RuleError(f'rule {context.rule.name}: action "{action}" does not apply to files')
    return FilesTarget(files_rule(context))
