"""Counting what a files rule selects: the per-file loop, and a plan split over processes.

A plan only reads, and on a large tree its cost is one stat(2) per file: about two thirds of it is
the kernel's work, the same as find(1)'s, the rest the interpreter's around each call. When a CPU
is idle, the tree is split between this process and a worker process (`python -m
retentiond.stores.files.survey`), which inherits the open root directory, walks with the same checks
and sends back counts only (never a name). The split is by whole subtrees, so that neither process
lists what the other walks. A worker that fails is replaced by doing its share here.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from retentiond.stores.files.globs import compile_glob
from retentiond.stores.files.selection import DirView, Selection
from retentiond.stores.files.stats import NoBirthTime, StatCall, StatLike, age_reader
from retentiond.stores.files.walk import (
    DirHandle,
    Root,
    Split,
    Tally,
    open_path,
    open_subdir,
    subdir_names,
    walk,
)

_WORKER_MODULE = "retentiond.stores.files.survey"
_MAX_PROCESSES = 4
_SUBTREES_PER_PROCESS = 8  # enough for a hash to share subtrees out about evenly
_LOOKAHEAD = 3  # levels below the glob's literal directories looked at for enough subtrees


@dataclass
class Survey:
    """What a walk found among the files the rule selects; counts only."""

    total: int = 0
    expired: int = 0
    held: int = 0
    bytes: int = 0
    oldest_ns: int | None = None
    excluded: int = 0
    no_birth_time: int = 0
    # Per-file events (the walk's own events are in `tally`; either kind is counted by one process).
    file_vanished: int = 0
    file_changed: int = 0
    file_other_fs: int = 0
    file_errors: int = 0
    tally: Tally = field(default_factory=Tally)

    def add(self, other: Survey) -> None:
        """Add the counts of another share of the same walk."""
        for name in (
            "total",
            "expired",
            "held",
            "bytes",
            "excluded",
            "no_birth_time",
            "file_vanished",
            "file_changed",
            "file_other_fs",
            "file_errors",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for counter in fields(Tally):
            name = counter.name
            setattr(self.tally, name, getattr(self.tally, name) + getattr(other.tally, name))
        if other.oldest_ns is not None and (
            self.oldest_ns is None or other.oldest_ns < self.oldest_ns
        ):
            self.oldest_ns = other.oldest_ns

    def details(self, age_source: str) -> dict[str, Any]:
        """The counts as plan or outcome details (never a name)."""
        tally = self.tally
        return {
            "age_source": age_source,
            "directories": tally.dirs,
            "excluded_files": self.excluded,
            "skipped_symlinks": tally.symlinks,
            "skipped_special_files": tally.special,
            "skipped_other_filesystems": tally.other_fs + self.file_other_fs,
            "unreadable_directories": tally.unreadable_dirs,
            "vanished": tally.vanished + self.file_vanished,
            "changed": tally.changed + self.file_changed,
            "no_birth_time": self.no_birth_time,
            "errors": tally.errors + self.file_errors,
        }


@dataclass(frozen=True)
class Aging:
    """How the files of a rule are aged: the stat call, the time it reads, the cutoff, the device."""

    stat: StatCall
    age: Callable[[StatLike], int]
    cutoff_ns: int
    dev: int


def _share_of(name: str, shares: int) -> int:
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % shares


def classify(
    entries: list[os.DirEntry[str]],
    fd: int,
    view: DirView,
    aging: Aging,
    survey: Survey,
    expired: list[tuple[str, StatLike]] | None,
    share: tuple[int, int] = (0, 1),
) -> None:
    """Count the selected regular files among `entries` of the directory `fd`.

    The expired, unheld ones are appended to `expired` when it is given; with `share` (k, n), only
    the files whose name hashes to k of n. This is the loop every file goes through, so it keeps
    to local names and plain ints.
    """
    stat_call, age, cutoff_ns, dev = aging.stat, aging.age, aging.cutoff_ns, aging.dev
    matches, excluded = view.matches, view.excluded
    held = view.held if (view.all_held or view.held_names) else None
    mine, shares = share
    is_regular = stat.S_ISREG
    total = n_expired = n_held = nbytes = n_excluded = 0
    oldest = survey.oldest_ns
    for entry in entries:
        name = entry.name
        if matches is not None and not matches(name):
            continue
        if shares > 1 and _share_of(name, shares) != mine:
            continue
        if excluded is not None and excluded(name):
            n_excluded += 1
            continue
        try:
            st = stat_call(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            survey.file_vanished += 1
            continue
        except OSError:
            survey.file_errors += 1
            continue
        if not is_regular(st.st_mode):
            survey.file_changed += 1
            continue
        if st.st_dev != dev:
            survey.file_other_fs += 1  # a file mounted over a name of the tree
            continue
        total += 1
        try:
            born = age(st)
        except NoBirthTime:
            survey.no_birth_time += 1
            survey.file_errors += 1
            continue
        if born >= cutoff_ns:
            continue
        if held is not None and held(name):
            n_held += 1
            continue
        n_expired += 1
        nbytes += st.st_size
        if oldest is None or born < oldest:
            oldest = born
        if expired is not None:
            expired.append((name, st))
    survey.total += total
    survey.expired += n_expired
    survey.held += n_held
    survey.bytes += nbytes
    survey.excluded += n_excluded
    survey.oldest_ns = oldest


def survey_tree(
    root: Root,
    selection: Selection,
    aging: Aging,
    share: tuple[int, int] = (0, 1),
    depth: int | None = None,
) -> Survey:
    """Walk the tree under `root` and count what `selection` selects (this share of it).

    A share is whole subtrees: those of the directories at `depth` (see `split_depth`), by a hash
    of their path, so that a process never lists another's. The files directly in the levels
    above, which every process lists, are shared by a hash of their name.
    """
    survey = Survey()
    glob = selection.glob
    mine, shares = share
    split = None
    if shares > 1:
        split = Split(
            depth=len(glob.fixed_dirs) + 1 if depth is None else depth,
            owns=lambda rel: _share_of(rel, shares) == mine,
            above=survey.tally if mine == 0 else Tally(),
        )
    for visit in walk(root, glob.fixed_dirs, glob.max_depth, survey.tally, split=split):
        if visit.leaving:
            continue
        handle = visit.handle
        view = selection.in_dir(handle.rel)
        if view is None:
            continue
        by_name = share if split is not None and handle.depth < split.depth else (0, 1)
        for chunk in visit.chunks():
            classify(chunk, handle.fd, view, aging, survey, None, by_name)
    return survey


def split_depth(root: Root, selection: Selection, processes: int) -> int:
    """The depth whose directories a split shares out, each with everything under it.

    The first level below the glob's literal directories that has enough directories for a hash
    to share them out evenly, looking a few levels down at most: every process lists the levels
    above it. Decided once, before the walk, so that every process splits the same way.
    """
    glob = selection.glob
    depth = len(glob.fixed_dirs) + 1
    deepest = depth + _LOOKAHEAD - 1
    if glob.max_depth is not None:
        deepest = min(deepest, glob.max_depth)
    scratch = Tally()  # what this look ahead meets, the walk meets and counts again
    top = open_path(root, glob.fixed_dirs, scratch)
    level = [] if top is None else [top]  # the directories at depth - 1
    try:
        while level and depth < deepest:
            below = [(handle, name) for handle in level for name in subdir_names(handle, scratch)]
            if len(below) >= _SUBTREES_PER_PROCESS * processes:
                break
            opened = [open_subdir(root, handle, name, scratch) for handle, name in below]
            for handle in level:
                handle.release()
            level = [handle for handle in opened if handle is not None]
            depth += 1
    finally:
        for handle in level:
            handle.release()
    return depth


def worker_count() -> int:
    """How many processes a plan may use now: one, plus one per idle CPU, at most four.

    Measured on two CPUs (200,000 files in 200 directories): split, a plan takes 0.6 of the time
    when the other CPU is idle, for 10 to 16% more CPU time (mostly the worker's start). When the
    other CPU is busy, what a split gains it takes from the other work, and under more load it is
    slower: hence the load average decides.
    """
    cpus = os.cpu_count() or 1
    if cpus < 2 or not sys.executable:
        return 1
    # Rounded, not truncated: a scan that has run a while counts in the load average itself, so
    # a load just above 1 on two cores still leaves most of a core free.
    idle = cpus - os.getloadavg()[0]
    return max(1, min(_MAX_PROCESSES, round(idle) + 1))


def _spec(
    root: Root,
    selection: Selection,
    age_source: str,
    cutoff_ns: int,
    share: tuple[int, int],
    depth: int | None = None,
) -> bytes:
    return json.dumps(
        {
            "fd": root.handle.fd,
            "ino": root.handle.ino,
            "dev": root.dev,
            "mount": root.mount,
            "glob": selection.glob.text,
            "excludes": [g.text for g in selection.excludes],
            "holds": list(selection.holds),
            "age_source": age_source,
            "cutoff_ns": cutoff_ns,
            "share": list(share),
            "depth": depth,
        }
    ).encode()


def _start(spec: bytes, fd: int) -> subprocess.Popen[bytes] | None:
    try:
        # -I: the worker ignores PYTHON* variables and never imports from the current directory.
        process = subprocess.Popen(
            [sys.executable, "-I", "-m", _WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=(fd,),
        )
    except OSError:
        return None
    assert process.stdin is not None
    try:
        process.stdin.write(spec)
        process.stdin.close()
    except OSError:
        process.kill()
        process.wait()
        return None
    return process


def _collect(process: subprocess.Popen[bytes] | None) -> Survey | None:
    if process is None:
        return None
    assert process.stdout is not None
    with process.stdout:
        out = process.stdout.read()
    if process.wait() != 0:
        return None
    try:
        data = json.loads(out)
        tally = Tally(**data.pop("tally"))
        return Survey(**data, tally=tally)
    except (ValueError, TypeError):
        return None


def survey_split(
    root: Root, selection: Selection, age_source: str, cutoff_ns: int, processes: int
) -> Survey:
    """Count what `selection` selects, split over `processes` processes (this one included)."""
    stat_call, age = age_reader(age_source)
    aging = Aging(stat_call, age, cutoff_ns, root.dev)
    if processes < 2:
        return survey_tree(root, selection, aging)
    depth = split_depth(root, selection, processes)
    workers = [
        (
            k,
            _start(
                _spec(root, selection, age_source, cutoff_ns, (k, processes), depth),
                root.handle.fd,
            ),
        )
        for k in range(1, processes)
    ]
    survey = survey_tree(root, selection, aging, (0, processes), depth)
    for k, process in workers:
        part = _collect(process)
        if part is None:
            part = survey_tree(root, selection, aging, (k, processes), depth)
        survey.add(part)
    return survey


def _work(spec: dict[str, Any]) -> Survey:
    """A worker's share: the inherited root descriptor, checked to be the directory it was."""
    fd = int(spec["fd"])
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != (spec["dev"], spec["ino"]):
        raise RuntimeError("the inherited descriptor is not the store root")
    root = Root(DirHandle(fd, "", "", None, 0, st.st_ino), st.st_dev, spec["mount"])
    selection = Selection(
        glob=compile_glob(spec["glob"]),
        excludes=tuple(compile_glob(e) for e in spec["excludes"]),
        holds=tuple(spec["holds"]),
    )
    stat_call, age = age_reader(spec["age_source"])
    aging = Aging(stat_call, age, int(spec["cutoff_ns"]), st.st_dev)
    share, depth = spec["share"], spec["depth"]
    return survey_tree(
        root,
        selection,
        aging,
        (int(share[0]), int(share[1])),
        None if depth is None else int(depth),
    )


def main() -> int:
    """Entry point of a worker: a JSON spec on stdin, JSON counts on stdout."""
    try:
        survey = _work(json.loads(sys.stdin.buffer.read()))
    except Exception as exc:
        print(type(exc).__name__, file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(asdict(survey)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
