"""A plan split over two processes counts exactly what one process counts."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from retentiond.engine import HoldSpec
from retentiond.stores import filesurvey
from retentiond.stores.fileselect import make_selection
from retentiond.stores.walk import open_root
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
