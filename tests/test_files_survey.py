"""A plan split over two processes counts exactly what one process counts."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from retentiond.engine import HoldSpec
from retentiond.stores.files import survey as filesurvey
from retentiond.stores.files.selection import Selection, make_selection
from retentiond.stores.files.stats import age_reader
from retentiond.stores.files.walk import open_root
from tests.files_support import seed


def _tree(root: Path) -> None:
    for d in range(5):
        for f in range(40):
            seed(root, f"d{d}/sub/f{f}.csv", 40 if f % 3 else 1, b"x" * f)
            seed(root, f"d{d}/f{f}.txt", 40)
    seed(root, b"odd\xff/line\nbreak.csv", 40)
    seed(root, "held/a.csv", 40)
    seed(root, "d1/keep-final.csv", 40)
    os.symlink("/etc", root / "link")
    os.symlink("/etc/passwd", root / "passwd.csv")


def _survey(root: Path, processes: int) -> dict[str, object]:
    selection = make_selection(
        "**/*.csv",
        ["**/*-final.csv"],
        [HoldSpec(reason="court", path_prefix="held/")],
        PurePosixPath(root),
    )
    return _surveyed(root, selection, processes)


def _surveyed(root: Path, selection: Selection, processes: int) -> dict[str, object]:
    """The survey of `root` for `selection` (files older than 30 days expired), as a dict."""
    handle = open_root(root)
    try:
        survey = filesurvey.survey_split(handle, selection, "mtime", _days_ago(30), processes)
    finally:
        handle.handle.release()
    return asdict(survey)


def _days_ago(days: int) -> int:
    return time.time_ns() - days * 86400 * 1_000_000_000


def test_two_processes_count_what_one_counts(tmp_path: Path) -> None:
    _tree(tmp_path)
    one, two = _survey(tmp_path, 1), _survey(tmp_path, 2)
    assert one == two
    assert (one["total"], one["expired"], one["held"], one["excluded"]) == (202, 131, 1, 1)
    assert one["tally"]["symlinks"] == 2  # type: ignore[index]


def test_the_worker_really_runs_and_reports_counts_only(tmp_path: Path) -> None:
    _tree(tmp_path)
    root = open_root(tmp_path)
    try:
        selection = make_selection("**/*.csv", [], [], PurePosixPath(tmp_path))
        spec = filesurvey._spec(root, selection, "mtime", _days_ago(30), (1, 2))
        process = filesurvey._start(spec, root.handle.fd)
        assert process is not None
        part = filesurvey._collect(process)
    finally:
        root.handle.release()
    assert part is not None and 0 < part.total < 203


def _layered_tree(root: Path) -> None:
    """Files, links and fifos at every level: the levels every process lists and the subtrees."""
    for top in ("exports", "other"):
        seed(root, f"{top}/f.csv", 40)
        os.symlink("/etc/passwd", root / top / "link.csv")
        os.mkfifo(root / top / "pipe.csv")
        for d in range(6):
            for f in range(5):
                seed(root, f"{top}/d{d}/deeper/f{f}.csv", 40 if f % 2 else 1)
                seed(root, f"{top}/d{d}/f{f}.csv", 40)
            os.symlink("..", root / top / f"d{d}" / "up")
            os.mkfifo(root / top / f"d{d}" / "deeper" / "pipe.csv")
    seed(root, "top.csv", 40)
    os.symlink("/etc", root / "etc")


def _count(root: Path, glob: str, processes: int) -> dict[str, object]:
    return _surveyed(root, make_selection(glob, [], [], PurePosixPath(root)), processes)


def test_a_split_counts_what_each_level_holds_once(tmp_path: Path) -> None:
    _layered_tree(tmp_path)
    whole = _count(tmp_path, "**/*.csv", 1)
    assert (whole["total"], whole["expired"]) == (123, 87)
    assert whole["tally"] == {
        "dirs": 2 + 2 * 6 * 2,
        "symlinks": 1 + 2 + 2 * 6,
        "special": 2 + 2 * 6,
        "other_fs": 0,
        "unreadable_dirs": 0,
        "vanished": 0,
        "changed": 0,
        "errors": 0,
    }
    assert _count(tmp_path, "**/*.csv", 2) == whole
    assert _count(tmp_path, "**/*.csv", 3) == whole
    # A literal first directory: the walk, and its split, start below it.
    only_exports = _count(tmp_path, "exports/**/*.csv", 1)
    assert (only_exports["total"], only_exports["expired"]) == (61, 43)
    assert _count(tmp_path, "exports/**/*.csv", 2) == only_exports


def test_a_worker_walks_only_its_own_subtrees(tmp_path: Path) -> None:
    _layered_tree(tmp_path)
    selection = make_selection("**/*.csv", [], [], PurePosixPath(tmp_path))
    root = open_root(tmp_path)
    try:
        cutoff = _days_ago(30)
        # Two directories at the top, twelve below them, twelve below those: too few to share
        # out evenly until the third level.
        depth = filesurvey.split_depth(root, selection, 2)
        spec = filesurvey._spec(root, selection, "mtime", cutoff, (1, 2), depth)
        worker = filesurvey._collect(filesurvey._start(spec, root.handle.fd))
        stat_call, age = age_reader("mtime")
        aging = filesurvey.Aging(stat_call, age, cutoff, root.dev)
        here = filesurvey.survey_tree(root, selection, aging, (0, 2), depth)
    finally:
        root.handle.release()
    assert depth == 3
    assert worker is not None
    assert worker.total + here.total == 123 and worker.total > 0 and here.total > 0
    # The directories above the split are counted here only; each below it by one process.
    assert worker.tally.dirs + here.tally.dirs == 26
    assert 0 < worker.tally.dirs < 12 and here.tally.dirs > 14


def test_a_wide_tree_is_shared_out_from_its_first_level(tmp_path: Path) -> None:
    for d in range(20):
        for f in range(3):
            seed(tmp_path, f"d{d:02d}/sub/f{f}.csv", 40 if f else 1)
        os.symlink("sub", tmp_path / f"d{d:02d}" / "link")
    seed(tmp_path, "top.csv", 40)
    selection = make_selection("**/*.csv", [], [], PurePosixPath(tmp_path))
    root = open_root(tmp_path)
    try:
        assert filesurvey.split_depth(root, selection, 2) == 1
    finally:
        root.handle.release()
    whole = _count(tmp_path, "**/*.csv", 1)
    assert (whole["total"], whole["expired"], whole["tally"]["symlinks"]) == (61, 41, 20)  # type: ignore[index]
    assert _count(tmp_path, "**/*.csv", 2) == whole
