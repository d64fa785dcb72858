"""Safety of files rules: symlinks, swapped directories, other file systems, permissions.

Every test puts bait outside the store root (files that the rule would select if it were followed
there) and checks that the bait is untouched, byte for byte and time for time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from retentiond.engine import HoldSpec
from retentiond.errors import RuleError
from tests.files_support import MemoryJournal, apply, bind, seed, tree


def _snapshot(directory: Path) -> dict[bytes, tuple[bytes, int]]:
    """Content and mtime of every file under `directory`."""
    found = {}
    for rel in tree(directory):
        path = Path(os.fsdecode(os.path.join(os.fsencode(directory), rel)))
        if path.is_file() and not path.is_symlink():
            found[rel] = (path.read_bytes(), path.stat().st_mtime_ns)
    return found


@pytest.fixture
def bait(tmp_path: Path) -> Path:
    """A directory outside the root full of expired .csv files."""
    outside = tmp_path / "outside"
    for rel in ("secret.csv", "nested/secret.csv", "sub/x.csv"):
        seed(outside, rel, 400, b"must survive")
    return outside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def test_symlinks_to_files_and_directories_outside_are_never_followed(
    root: Path, bait: Path
) -> None:
    before = _snapshot(bait)
    seed(root, "mine.csv", 40)
    seed(root, "young.csv", 1)
    os.symlink(bait, root / "linked-dir")
    os.symlink(bait / "secret.csv", root / "linked-file.csv")
    os.symlink(bait, root / "exports")  # a directory the glob names literally
    os.mkfifo(root / "pipe.csv")
    os.utime(root / "pipe.csv", (0, 0), follow_symlinks=False)
    plan = bind(root).plan()
    assert plan.details["skipped_symlinks"] == 3 and plan.details["skipped_special_files"] == 1
    for glob in ("**/*.csv", "exports/*.csv", "linked-dir/**"):
        _, _, journal = apply(bind(root, glob=glob, max_fraction=1.0))
        assert all(not key.startswith((b"linked", b"exports")) for key in journal.removed)
    assert _snapshot(bait) == before
    assert tree(root) == {b"young.csv", b"linked-dir", b"linked-file.csv", b"exports", b"pipe.csv"}


def test_a_directory_swapped_for_a_symlink_between_scan_and_delete(root: Path, bait: Path) -> None:
    before = _snapshot(bait)
    seed(root, "sub/x.csv", 40)
    seed(root, "sub/y.csv", 40)
    seed(root, "young.csv", 1)
    seed(root, "sub/young.csv", 1)

    def swap(keys: list[bytes]) -> None:
        # After the scan chose sub/x.csv and sub/y.csv, before they are unlinked.
        (root / "sub").rename(root / "moved")
        os.symlink(bait, root / "sub")

    plan, outcome, journal = apply(bind(root), MemoryJournal(before_delete=swap))
    assert plan.expired_items == 2 and outcome.items == 2
    assert sorted(journal.removed) == [b"sub/x.csv", b"sub/y.csv"]
    assert _snapshot(bait) == before
    # The unlinks went through the descriptor of the directory that was scanned, inside the root.
    assert tree(root) == {b"young.csv", b"sub", b"moved", b"moved/young.csv"}


def test_a_directory_swapped_for_a_symlink_between_plan_and_execute(root: Path, bait: Path) -> None:
    before = _snapshot(bait)
    seed(root, "sub/x.csv", 40)
    seed(root, "a.csv", 40)
    seed(root, "b.csv", 1)
    seed(root, "c.csv", 1)
    target = bind(root)
    plan = target.plan()
    shutil.rmtree(root / "sub")
    os.symlink(bait, root / "sub")
    journal = MemoryJournal()
    outcome = target.execute(plan, journal, threading.Event())
    assert journal.removed == [b"a.csv"] and outcome.items == 1
    assert _snapshot(bait) == before


def test_a_root_that_is_a_symlink_is_refused(tmp_path: Path, bait: Path) -> None:
    os.symlink(bait, tmp_path / "link")
    with pytest.raises(RuleError, match="symlink"):
        bind(tmp_path / "link").plan()
    assert len(_snapshot(bait)) == 3


def test_a_file_swapped_for_a_fifo_is_kept_without_blocking(root: Path) -> None:
    seed(root, "a.csv", 40)
    seed(root, "b.csv", 1)

    def swap(keys: list[bytes]) -> None:
        (root / "a.csv").unlink()
        os.mkfifo(root / "a.csv")

    _, outcome, journal = apply(bind(root, overwrite=True), MemoryJournal(before_delete=swap))
    assert journal.removed == [] and outcome.items == 0
    assert (root / "a.csv").exists()


def test_a_hard_link_to_a_file_outside_is_unlinked_but_never_overwritten(
    root: Path, bait: Path
) -> None:
    before = _snapshot(bait)
    os.link(bait / "secret.csv", root / "linked.csv")
    seed(root, "young.csv", 1)
    _, outcome, journal = apply(bind(root, overwrite=True))
    assert journal.removed == [b"linked.csv"]
    assert outcome.details["hardlinks_not_overwritten"] == 1
    assert _snapshot(bait) == before


@contextmanager
def _mounted(*args: str) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("mounting a file system for this test needs root")
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", args[-1]], check=True)


def test_another_file_system_inside_the_root_is_not_crossed(root: Path) -> None:
    (root / "mnt").mkdir()
    seed(root, "mine.csv", 40)
    seed(root, "young.csv", 1)
    with _mounted("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root / "mnt")):
        seed(root, "mnt/other-fs.csv", 40)
        plan, _, journal = apply(bind(root))
        assert plan.details["skipped_other_filesystems"] == 1
        assert journal.removed == [b"mine.csv"]
        assert (root / "mnt/other-fs.csv").exists()


def test_a_bind_mount_of_the_same_file_system_is_not_crossed(root: Path, bait: Path) -> None:
    before = _snapshot(bait)
    (root / "bound").mkdir()
    seed(root, "mine.csv", 40)
    seed(root, "young.csv", 1)
    with _mounted("--bind", str(bait), str(root / "bound")):
        assert os.stat(root / "bound").st_dev == os.stat(root).st_dev  # the device cannot tell
        plan, _, journal = apply(bind(root))
        assert plan.details["skipped_other_filesystems"] == 1
        assert journal.removed == [b"mine.csv"]
    assert _snapshot(bait) == before


def test_a_file_bind_mounted_into_the_root_is_never_overwritten(root: Path, bait: Path) -> None:
    before = _snapshot(bait)
    seed(root, "mounted.csv", 40, b"placeholder")
    seed(root, "young.csv", 1)
    with _mounted("--bind", str(bait / "secret.csv"), str(root / "mounted.csv")):
        _, outcome, journal = apply(bind(root, overwrite=True))
        assert journal.removed == [] and outcome.errors == 1
    assert _snapshot(bait) == before


NOBODY = 65534


def _as_unprivileged(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `work` as nobody (in a forked child when the tests run as root), return its result."""
    if os.geteuid() != 0:
        return work()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges for good, report, exit without cleanup
        status = 1
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(writer, json.dumps(work()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged run failed"
    result: dict[str, Any] = json.loads(data)
    return result


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A root that the unprivileged user owns and can reach (pytest's tmp_path is root's only)."""
    base = Path(tempfile.mkdtemp(prefix="retentiond-perm-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        for dirpath, dirnames, _ in os.walk(base):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
        shutil.rmtree(base)


def test_permission_errors_are_counted_and_the_run_goes_on(shared_root: Path) -> None:
    seed(shared_root, "ok/old.csv", 40)
    seed(shared_root, "readonly/old.csv", 40)
    seed(shared_root, "locked/old.csv", 40)
    for i in range(4):
        seed(shared_root, f"young{i}.csv", 1)
    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(shared_root):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
        os.chown(shared_root, NOBODY, NOBODY)
    os.chmod(shared_root / "readonly", 0o555)
    os.chmod(shared_root / "locked", 0o000)

    def work() -> dict[str, Any]:
        plan, outcome, journal = apply(bind(shared_root, holds=[HoldSpec("x", path_prefix="z")]))
        return {
            "expired": plan.expired_items,
            "unreadable": plan.details["unreadable_directories"],
            "removed": [k.decode() for k in journal.removed],
            "errors": outcome.errors,
            "remaining": outcome.remaining_expired,
        }

    result = _as_unprivileged(work)
    assert result == {
        "expired": 2,
        "unreadable": 1,
        "removed": ["ok/old.csv"],
        "errors": 2,
        "remaining": 1,
    }
    os.chmod(shared_root / "locked", 0o755)
    assert (shared_root / "readonly/old.csv").exists() and (shared_root / "locked/old.csv").exists()


def test_the_scenario_with_every_trap_at_once(root: Path, bait: Path) -> None:
    """Exactly the expired, unheld files inside the root are gone; nothing else changed."""
    before = _snapshot(bait)
    expired = {b"a.csv", b"d1/b.csv", b"d1/d2/c.csv", b"d3/e.csv"}
    for rel in expired:
        seed(root, rel, 40)
    for other in ("young.csv", "d1/young.csv", "held/old.csv", "d1/notes.txt"):
        seed(root, other, 1 if "young" in other else 40)
    os.symlink(bait, root / "d1/link")
    os.symlink(bait / "secret.csv", root / "d1/secret.csv")
    os.symlink(bait, root / "d3/sub")  # d3/sub/x.csv resolves to the bait's sub/x.csv

    def swap(keys: list[bytes]) -> None:
        (root / "d3").rename(root / "d3-moved")
        os.symlink(bait, root / "d3")

    _, outcome, journal = apply(
        bind(root, holds=[HoldSpec("inspection", path_prefix="held/")]),
        MemoryJournal(before_delete=swap),
    )
    assert set(journal.removed) == expired and outcome.items == 4
    assert _snapshot(bait) == before
    assert tree(root) == {
        b"young.csv",
        b"d1",
        b"d1/d2",
        b"d1/young.csv",
        b"d1/notes.txt",
        b"d1/link",
        b"d1/secret.csv",
        b"held",
        b"held/old.csv",
        b"d3",
        b"d3-moved",
        b"d3-moved/sub",
    }


def test_reconciling_through_a_swapped_directory_claims_no_deletion(root: Path, bait: Path) -> None:
    seed(root, "kept.csv", 1)
    os.symlink(bait, root / "sub")  # was a directory when the batch was written ahead
    target = bind(root)
    present = target.still_present([b"sub/x.csv", b"sub/gone.csv", b"kept.csv", b"gone.csv"])
    assert present == {b"sub/x.csv", b"sub/gone.csv", b"kept.csv"}
