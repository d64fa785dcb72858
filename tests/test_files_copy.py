"""A directory that is a copy (path + since + retain, action drop) is removed whole, as one item."""

from __future__ import annotations

import os
import subprocess
import threading
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from retentiond.engine import HoldSpec, Target
from retentiond.errors import RuleError
from tests.files_support import MemoryJournal, apply, bind, seed, tree

LONG_AGO = (date.today() - timedelta(days=400)).isoformat()
RECENTLY = date.today().isoformat()


def _copy(root: Path, outside: Path) -> None:
    seed(root, "migration/v4-export/patients.csv", 0, b"p" * 100)
    seed(root, "migration/v4-export/results/2024.csv", 0, b"r" * 50)
    seed(root, "migration/v4-export/results/deep/er/x.bin", 0, b"x" * 7)
    (root / "migration/v4-export/empty").mkdir()
    os.mkfifo(root / "migration/v4-export/pipe")
    seed(outside, "keep.csv", 0, b"outside")
    os.symlink(outside, root / "migration/v4-export/link-to-outside")
    os.symlink(outside / "keep.csv", root / "migration/v4-export/results/keep.csv")
    seed(root, "migration/other.csv", 0)


def _drop(root: Path, since: str = LONG_AGO, **extra: Any) -> Target:
    return bind(root, action="drop", path="migration/v4-export", since=since, retain="30d", **extra)


def test_an_expired_copy_goes_whole_and_links_inside_it_are_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _copy(root, outside)
    plan, outcome, journal = apply(_drop(root))
    assert (plan.total_items, plan.expired_items, plan.bytes) == (1, 1, 157)
    assert plan.details["files"] == 3 and plan.method == "remove-tree"
    assert journal.removed == [b"migration/v4-export"] and journal.nbytes == 157
    assert (outcome.items, outcome.bytes, outcome.remaining_expired) == (1, 157, 0)
    assert tree(root) == {b"migration", b"migration/other.csv"}
    assert (outside / "keep.csv").read_bytes() == b"outside"


def test_a_copy_not_yet_due_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _copy(root, tmp_path / "outside")
    before = tree(root)
    plan, outcome, journal = apply(_drop(root, since=RECENTLY))
    assert (plan.total_items, plan.expired_items, outcome.items) == (1, 0, 0)
    assert journal.pending == {} and tree(root) == before


def test_a_hold_on_anything_inside_keeps_the_whole_copy(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _copy(root, tmp_path / "outside")
    before = tree(root)
    hold = HoldSpec(reason="court", path_prefix="migration/v4-export/results/2024")
    plan, _, journal = apply(
        bind(
            root,
            holds=[hold],
            action="drop",
            path="migration/v4-export",
            since=LONG_AGO,
            retain="30d",
        )
    )
    assert (plan.expired_items, plan.held_items) == (0, 1)
    assert journal.pending == {} and tree(root) == before


def test_a_copy_path_through_a_symlink_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    seed(outside, "v4-export/patients.csv", 0, b"outside")
    root.mkdir()
    os.symlink(outside, root / "migration")
    with pytest.raises(RuleError, match="symlink"):
        _drop(root).plan()
    assert (outside / "v4-export/patients.csv").read_bytes() == b"outside"


def test_a_copy_already_gone_is_nothing_to_do(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    plan, outcome, journal = apply(_drop(tmp_path / "root"))
    assert (plan.total_items, plan.expired_items, outcome.items) == (0, 0, 0)
    assert plan.details["present"] is False and journal.pending == {}


def test_prune_empty_dirs_removes_the_parents_the_copy_left_empty(tmp_path: Path) -> None:
    root = tmp_path / "root"
    seed(root, "a/b/copy/data.csv", 0)
    seed(root, "keep.csv", 0)
    target = bind(
        root, action="drop", path="a/b/copy", since=LONG_AGO, retain="30d", prune_empty_dirs=True
    )
    apply(target)
    assert tree(root) == {b"keep.csv"}


def test_a_crash_after_removal_is_reconciled(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _copy(root, tmp_path / "outside")
    target = _drop(root)
    with pytest.raises(KeyboardInterrupt):
        target.execute(target.plan(), MemoryJournal(crash=True), threading.Event())
    assert target.still_present([b"migration/v4-export", b"migration/other.csv"]) == {
        b"migration/other.csv"
    }


def test_a_mount_point_inside_a_copy_is_not_crossed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _copy(root, tmp_path / "outside")
    mount_point = root / "migration/v4-export/mnt"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a file system for this test needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount here")
    try:
        seed(mount_point, "other-fs.csv", 0, b"elsewhere")
        _, outcome, journal = apply(_drop(root))
        assert journal.removed == [] and outcome.items == 0
        assert outcome.remaining_expired == 1 and outcome.errors >= 1
        assert (mount_point / "other-fs.csv").read_bytes() == b"elsewhere"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)
