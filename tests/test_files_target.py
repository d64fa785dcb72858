"""Files rules on real directories: what plan counts, what execute removes, what the journal records."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from retentiond.engine import HoldSpec
from retentiond.errors import RuleError
from retentiond.stores.files import target as files_module
from retentiond.stores.files.stats import birth_stat
from tests.files_support import MemoryJournal, apply, bind, seed, tree


def _lab_tree(root: Path) -> None:
    seed(root, "old.csv", 40, b"a" * 10)
    seed(root, "new.csv", 1, b"b" * 20)
    seed(root, "exports/2024/old.csv", 400, b"c" * 30)
    seed(root, "exports/2024/old.txt", 400, b"d" * 40)
    seed(root, "exports/2025/recent.csv", 10, b"e" * 50)
    seed(root, "audit-2026/old.csv", 90, b"f" * 60)
    seed(root, ".hidden/old.csv", 50, b"g" * 70)


def test_plan_counts_expired_files_and_changes_nothing(tmp_path: Path) -> None:
    _lab_tree(tmp_path)
    before = {p: os.stat(tmp_path / os.fsdecode(p)).st_mtime_ns for p in tree(tmp_path)}
    plan = bind(tmp_path, holds=[HoldSpec(reason="inspection", path_prefix="audit-2026/")]).plan()
    assert (plan.total_items, plan.expired_items, plan.held_items) == (6, 3, 1)
    assert plan.bytes == 10 + 30 + 70
    assert (
        plan.oldest_age_seconds is not None and 399 * 86400 < plan.oldest_age_seconds < 401 * 86400
    )
    assert plan.cutoff is not None and plan.clock == "local" and plan.method == "unlink"
    assert {p: os.stat(tmp_path / os.fsdecode(p)).st_mtime_ns for p in tree(tmp_path)} == before


def test_apply_removes_exactly_the_expired_unheld_files(tmp_path: Path) -> None:
    _lab_tree(tmp_path)
    target = bind(tmp_path, holds=[HoldSpec(reason="inspection", path_prefix="audit-2026/")])
    _, outcome, journal = apply(target)
    assert sorted(journal.removed) == [b".hidden/old.csv", b"exports/2024/old.csv", b"old.csv"]
    assert journal.nbytes == outcome.bytes == 110
    assert (outcome.items, outcome.errors, outcome.remaining_expired) == (3, 0, 0)
    assert tree(tmp_path) == {
        b"new.csv",
        b"exports",
        b"exports/2024",
        b"exports/2024/old.txt",
        b"exports/2025",
        b"exports/2025/recent.csv",
        b"audit-2026",
        b"audit-2026/old.csv",
        b".hidden",
    }
    assert not journal.pending.keys() - journal.done.keys()


def test_excludes_keep_matching_files_and_are_not_counted(tmp_path: Path) -> None:
    seed(tmp_path, "a/export.csv", 40)
    seed(tmp_path, "a/export-final.csv", 40)
    seed(tmp_path, "keep/export.csv", 40)
    target = bind(tmp_path, exclude=["**/*-final.csv", "keep/**"], max_fraction=1.0)
    plan, _, journal = apply(target)
    assert (plan.total_items, plan.expired_items, plan.details["excluded_files"]) == (1, 1, 2)
    assert journal.removed == [b"a/export.csv"]
    assert tree(tmp_path) >= {b"a/export-final.csv", b"keep/export.csv"}


def test_a_glob_without_double_star_stays_at_its_depth(tmp_path: Path) -> None:
    seed(tmp_path, "exports/a.csv", 40)
    seed(tmp_path, "exports/deeper/b.csv", 40)
    seed(tmp_path, "elsewhere/a.csv", 40)
    _, _, journal = apply(bind(tmp_path, glob="exports/*.csv"))
    assert journal.removed == [b"exports/a.csv"]
    assert b"exports/deeper/b.csv" in tree(tmp_path) and b"elsewhere/a.csv" in tree(tmp_path)


def test_holds_by_prefix_and_a_hold_without_path_keeps_everything(tmp_path: Path) -> None:
    seed(tmp_path, "case-17/a.csv", 40)
    seed(tmp_path, "case-170.csv", 40)
    seed(tmp_path, "other.csv", 40)
    _, _, journal = apply(bind(tmp_path, holds=[HoldSpec(reason="court", path_prefix="case-17")]))
    assert journal.removed == [b"other.csv"]
    plan = bind(tmp_path, holds=[HoldSpec(reason="everything", rule="transfer-exports")]).plan()
    assert (plan.expired_items, plan.held_items) == (0, 2)


def test_each_age_source(tmp_path: Path) -> None:
    seed(tmp_path, "first.csv", 40)
    time.sleep(1.5)
    seed(tmp_path, "second.csv", 40)  # both have an mtime 40 days old; first was made 1.5 s earlier

    def expired(source: str) -> int:
        return bind(tmp_path, retain="1s", age_source=source).plan().expired_items

    assert (expired("mtime"), expired("ctime")) == (2, 1)
    os.utime(tmp_path / "first.csv")  # written to now: young by mtime and ctime
    assert (expired("mtime"), expired("ctime")) == (1, 0)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        has_birth = birth_stat("first.csv", dir_fd=fd).st_birthtime_ns is not None
    finally:
        os.close(fd)
    if not has_birth:
        with pytest.raises(RuleError, match="age_source birth"):
            expired("birth")
        return
    _, _, journal = apply(bind(tmp_path, retain="1s", age_source="birth"))
    assert journal.removed == [b"first.csv"], "birth time ignores later writes"
    assert tree(tmp_path) == {b"second.csv"}


def test_names_with_newlines_and_invalid_utf8_are_removed_by_their_exact_bytes(
    tmp_path: Path,
) -> None:
    names = [b"line\nbreak.csv", b"latin-\xe9\xff.csv", b"sub\xfe/x.csv", "caf\u00e9.csv".encode()]
    for name in names:
        seed(tmp_path, name, 40)
    seed(tmp_path, b"young-\xff.csv", 1)
    _, outcome, journal = apply(bind(tmp_path, max_fraction=1.0))
    assert sorted(journal.removed) == sorted(names)
    assert tree(tmp_path) == {b"young-\xff.csv", b"sub\xfe"}
    assert outcome.items == 4


def test_prune_empty_dirs_removes_only_directories_the_purge_emptied(tmp_path: Path) -> None:
    seed(tmp_path, "exports/a/b/old.csv", 40)
    seed(tmp_path, "exports/c/old.csv", 40)
    seed(tmp_path, "exports/c/new.csv", 1)
    (tmp_path / "exports/already-empty").mkdir()
    seed(tmp_path, "exports/d/old.csv", 40)
    _, outcome, _ = apply(bind(tmp_path, glob="exports/**/*.csv", prune_empty_dirs=True))
    assert tree(tmp_path) == {
        b"exports",
        b"exports/c",
        b"exports/c/new.csv",
        b"exports/already-empty",
    }
    assert outcome.details["directories_pruned"] == 3  # a/b, a and d; never exports itself
    seed(tmp_path, "exports/old.csv", 40)
    apply(bind(tmp_path, glob="exports/*.csv", prune_empty_dirs=True, max_fraction=1.0))
    assert (tmp_path / "exports").is_dir(), "a directory the glob names is structure, kept"


def test_overwrite_zeroes_the_data_before_unlinking(tmp_path: Path) -> None:
    path = seed(tmp_path, "dump.csv", 40, b"patient data" * 1000)
    seed(tmp_path, "young.csv", 1)
    reader = os.open(path, os.O_RDONLY)  # keeps the inode alive to look at it after the unlink
    try:
        _, outcome, journal = apply(bind(tmp_path, overwrite=True))
        assert journal.removed == [b"dump.csv"] and outcome.method == "overwrite+unlink"
        assert os.pread(reader, 20000, 0) == bytes(12000)
    finally:
        os.close(reader)


def test_stop_between_batches_returns_what_was_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files_module, "_BATCH_FILES", 3)
    for i in range(10):
        seed(tmp_path, f"f{i}.csv", 40)
    for i in range(10):
        seed(tmp_path, f"young{i}.csv", 1)
    stop = threading.Event()
    journal = MemoryJournal(before_delete=lambda keys: stop.set())
    target = bind(tmp_path)
    plan = target.plan()
    outcome = target.execute(plan, journal, stop)
    assert outcome.items == 3 and len(journal.removed) == 3
    assert outcome.details["stopped"] is True and outcome.remaining_expired == 7
    assert len([p for p in tree(tmp_path) if p.startswith(b"f")]) == 7


def test_a_crash_after_the_unlinks_is_reconciled_from_what_is_left(tmp_path: Path) -> None:
    for i in range(4):
        seed(tmp_path, f"f{i}.csv", 40)
    seed(tmp_path, "young.csv", 1)
    target = bind(tmp_path, max_fraction=1.0)
    journal = MemoryJournal(crash=True)
    with pytest.raises(KeyboardInterrupt):
        target.execute(target.plan(), journal, threading.Event())
    (candidates,) = journal.pending.values()
    assert sorted(candidates) == [b"f0.csv", b"f1.csv", b"f2.csv", b"f3.csv"]
    assert target.still_present(candidates) == set()
    assert target.still_present([b"young.csv", b"gone.csv", b"no/such/dir.csv"]) == {b"young.csv"}


def test_files_changed_vanished_or_appeared_during_the_run(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        seed(tmp_path, f"{name}.csv", 40)
    seed(tmp_path, "young.csv", 1)

    def meddle(keys: list[bytes]) -> None:
        (tmp_path / "a.csv").unlink()  # vanishes
        os.utime(tmp_path / "b.csv")  # written to again: young now
        # Replaced by another file: created before the old one goes, so its inode number cannot be
        # the freed one reused.
        seed(tmp_path, "c.new", 40)
        os.replace(tmp_path / "c.new", tmp_path / "c.csv")
        seed(tmp_path, "late.csv", 40)  # appears after the scan

    target = bind(tmp_path, max_fraction=1.0)
    plan, outcome, journal = apply(target, MemoryJournal(before_delete=meddle))
    assert plan.expired_items == 4
    assert journal.removed == [b"d.csv"]
    assert tree(tmp_path) == {b"b.csv", b"c.csv", b"late.csv", b"young.csv"}
    assert outcome.details["vanished"] == 1 and outcome.details["changed"] == 2
    assert outcome.remaining_expired == 1  # the replaced c.csv is itself expired


def test_never_more_than_the_plan_counted(tmp_path: Path) -> None:
    seed(tmp_path, "a.csv", 40)
    seed(tmp_path, "young.csv", 1)
    target = bind(tmp_path)
    plan = target.plan()
    seed(tmp_path, "z/b.csv", 40)  # old files copied in after the plan (cp -p, rsync -t)
    seed(tmp_path, "z/c.csv", 40)
    journal = MemoryJournal()
    outcome = target.execute(plan, journal, threading.Event())
    assert outcome.items == 1 and outcome.remaining_expired == 2
    assert len(tree(tmp_path) & {b"a.csv", b"z/b.csv", b"z/c.csv"}) == 2


def test_a_missing_root_or_a_bad_glob_is_a_rule_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="store transfer: the store root does not exist"):
        bind(tmp_path / "missing").plan()
    with pytest.raises(RuleError, match="rule transfer-exports: glob"):
        bind(tmp_path, glob="[z-a].csv")


def test_nothing_expired_writes_nothing_to_the_journal(tmp_path: Path) -> None:
    seed(tmp_path, "young.csv", 1)
    seed(tmp_path, "old.txt", 400)
    plan, outcome, journal = apply(bind(tmp_path))
    assert (plan.total_items, plan.expired_items, outcome.items) == (1, 0, 0)
    assert journal.pending == {} and tree(tmp_path) == {b"young.csv", b"old.txt"}
