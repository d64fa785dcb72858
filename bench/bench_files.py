"""Files rules against find(1), measured side by side in one run; prints ratios (higher is better).

- scan:   `plan` of a tree vs `find ROOT -type f -mtime +N` on the same tree (target >= 0.8);
- delete: `plan` + `execute` (what `retentiond apply` does, journal in a SQLite state database) vs
          `find ROOT -type f -mtime +N -delete`, each on its own identical copy (target >= 1.0);
- memory: peak RSS of a fresh process planning and purging a tree of --rss-files files (< 100 MB).

Half the files are expired (40 days old), half young (1 day). Each delete timing includes a final
sync(2), so that work the file system defers (journal commits, discards) is charged to whoever
caused it. Rounds alternate which side runs first; the ratio reported is the median of the rounds.
The scan also reports the ratio of CPU times (a side's child processes included): what each side
costs the machine, which other work on it disturbs less than it disturbs wall time.

    .venv/bin/python bench/bench_files.py            # 200,000 files in 200 directories, 1M for RSS
    .venv/bin/python bench/bench_files.py --quick    # 20,000 files, 100,000 for RSS: seconds
    .venv/bin/python bench/bench_files.py --scan-only --rounds 7   # the scan comparison alone
    .venv/bin/python bench/bench_files.py --scan-only --plan-processes 1   # no split, whatever the load
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert

from retentiond.config.model import FilesStore, Rule
from retentiond.engine import Target, TargetContext
from retentiond.journal import StateJournal
from retentiond.state.db import create_state_engine, upgrade
from retentiond.state.models import run
from retentiond.stores.files import target as files_store
from retentiond.stores.files.target import make_files_target

DAY = 86400
FIND_DAYS = "+30"  # find's -mtime +30: older than 31 whole days; the rule below keeps 30 days
PAYLOAD = b"x" * 100


def build_tree(root: Path, files: int, dirs: int, payload: bytes = PAYLOAD) -> None:
    """`files` small files spread over `dirs` directories; every other one 40 days old."""
    now = time.time()
    old, young = (now - 40 * DAY,) * 2, (now - DAY,) * 2
    per_dir = max(1, files // dirs)
    made = 0
    for d in range(dirs):
        directory = root / f"d{d:05d}"
        directory.mkdir(parents=True)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for f in range(per_dir if d < dirs - 1 else files - made):
                fd = os.open(f"f{f:06d}.csv", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dir_fd)
                try:
                    if payload:
                        os.write(fd, payload)
                    os.utime(fd, old if f % 2 == 0 else young)
                finally:
                    os.close(fd)
                made += 1
        finally:
            os.close(dir_fd)


def target_for(root: Path) -> Target:
    """A files rule selecting every file under `root` older than 30 days."""
    rule = Rule(name="bench", store="bench", action="delete", glob="**", retain="30d")
    return make_files_target(
        TargetContext(
            rule=rule,
            store_name="bench",
            store=FilesStore(kind="files", root=root),
            holds=(),
            daemon=None,
            state_url=None,
        )
    )


def state_journal(work: Path) -> StateJournal:
    """A journal writing to a fresh SQLite state database, as `retentiond apply` uses it."""
    engine = create_state_engine(f"sqlite:///{work / f'state-{uuid.uuid4().hex}.db'}")
    upgrade(engine)
    run_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            insert(run).values(
                run_id=run_id,
                rule="bench",
                status="running",
                owner="bench",
                started_at=datetime.now(UTC),
                plan_json="{}",
            )
        )
    return StateJournal(engine, run_id, os.urandom(32), colocated=False)


def apply_rule(root: Path, journal: StateJournal) -> tuple[int, float]:
    """plan + execute; returns (files removed, seconds spent in execute)."""
    target = target_for(root)
    plan = target.plan()
    started = time.perf_counter()
    outcome = target.execute(plan, journal, threading.Event())
    return int(outcome.items), time.perf_counter() - started


def find(root: Path, delete: bool) -> None:
    """The baseline: find(1) selecting the same files."""
    command = ["find", str(root), "-type", "f", "-mtime", FIND_DAYS]
    subprocess.run(
        [*command, "-delete"] if delete else command, stdout=subprocess.DEVNULL, check=True
    )


def timed(work: Callable[[], object], sync: bool) -> float:
    """Seconds `work` takes (plus a sync(2) when asked)."""
    started = time.perf_counter()
    work()
    if sync:
        os.sync()
    return time.perf_counter() - started


def cpu_seconds() -> float:
    """CPU time (user and system) of this process and of its finished children so far."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class ScanRound:
    """One round of the scan comparison: wall and CPU seconds of each side."""

    find_wall: float
    plan_wall: float
    find_cpu: float
    plan_cpu: float
    processes: int  # processes the plan was allowed (the load decides unless forced)


def bench_scan(root: Path, rounds: int, processes: int | None) -> list[ScanRound]:
    """Wall and CPU seconds of find and of plan per round, on the same warm tree.

    The CPU time of a side counts its child processes too (find itself, a plan's worker), so
    that the CPU ratio says what each side costs the machine whatever else runs on it.
    `processes` forces the plan's process count (None: the plan decides, as in production).
    """
    if processes is not None:
        files_store.worker_count = lambda: processes
    find(root, delete=False)  # warm the caches for both
    target_for(root).plan()
    results = []
    for i in range(rounds):
        sides = [
            ("find", lambda: find(root, delete=False)),
            ("plan", lambda: target_for(root).plan()),
        ]
        if i % 2:
            sides.reverse()
        allowed = files_store.worker_count()
        wall, cpu = {}, {}
        for name, work in sides:
            before = cpu_seconds()
            wall[name] = timed(work, sync=False)
            cpu[name] = cpu_seconds() - before
        results.append(ScanRound(wall["find"], wall["plan"], cpu["find"], cpu["plan"], allowed))
    return results


def report_scan(scans: list[ScanRound]) -> bool:
    """Print the scan ratios (wall and CPU: median and best); whether the target is met."""
    wall = [r.find_wall / r.plan_wall for r in scans]
    cpu = [r.find_cpu / r.plan_cpu for r in scans]
    ratio = statistics.median(wall)
    split = sum(r.processes > 1 for r in scans)
    print(
        f"scan    plan vs find -mtime        ratio {ratio:5.2f}  (target >= 0.8)  "
        f"best {max(wall):.2f}; median find {statistics.median(r.find_wall for r in scans):.3f} s, "
        f"plan {statistics.median(r.plan_wall for r in scans):.3f} s; "
        f"split over processes in {split} of {len(scans)} rounds"
    )
    print(
        f"        CPU time, same rounds      ratio {statistics.median(cpu):5.2f}  "
        f"best {max(cpu):.2f}; median find {statistics.median(r.find_cpu for r in scans):.3f} s, "
        f"plan {statistics.median(r.plan_cpu for r in scans):.3f} s "
        f"(a plan's worker included); load average after {os.getloadavg()[0]:.2f}"
    )
    return ratio >= 0.8


def bench_delete(
    work: Path, files: int, dirs: int, rounds: int
) -> list[tuple[float, float, float, int]]:
    """(find seconds, apply seconds, execute seconds, files removed) per round."""
    results = []
    for i in range(rounds):
        ours, theirs = work / f"ours-{i}", work / f"find-{i}"
        build_tree(ours, files, dirs)
        build_tree(theirs, files, dirs)
        journal = state_journal(work)
        os.sync()
        time.sleep(2)  # let the writeback of the new trees settle before either side starts
        removed: list[int] = []
        execute_seconds: list[float] = []

        def ours_side(
            root: Path = ours,
            journal: StateJournal = journal,
            removed: list[int] = removed,
            execute_seconds: list[float] = execute_seconds,
        ) -> None:
            count, seconds = apply_rule(root, journal)
            removed.append(count)
            execute_seconds.append(seconds)

        sides = [("find", lambda root=theirs: find(root, delete=True)), ("ours", ours_side)]
        if i % 2:
            sides.reverse()
        times = {name: timed(side, sync=True) for name, side in sides}
        results.append((times["find"], times["ours"], execute_seconds[0], removed[0]))
        left_ours = sum(len(files) for _, _, files in os.walk(ours))
        left_find = sum(len(files) for _, _, files in os.walk(theirs))
        assert left_ours == left_find, f"different results: {left_ours} vs {left_find} files left"
        shutil.rmtree(ours)
        shutil.rmtree(theirs)
    return results


def rss_child(root: str, state: str) -> None:
    """In a fresh process: plan and purge `root`, print peak RSS (MB) and counts as JSON."""
    journal = state_journal(Path(state))
    target = target_for(Path(root))
    plan = target.plan()
    outcome = target.execute(plan, journal, threading.Event())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # plan workers
    print(
        json.dumps(
            {
                "peak_mb": peak_mb,
                "worker_mb": worker_mb,
                "planned": plan.expired_items,
                "removed": outcome.items,
            }
        )
    )


def bench_rss(work: Path, files: int) -> dict[str, float]:
    """Peak RSS of a process planning and purging a tree of `files` empty files."""
    root = work / "rss"
    build_tree(root, files, max(1, files // 1000), payload=b"")
    done = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(root), str(work)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(root)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> int:
    """Run the three measurements and print their ratios against the targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small trees: a run of seconds")
    parser.add_argument("--files", type=int, help="files in the scan and delete trees")
    parser.add_argument("--dirs", type=int, help="directories they are spread over")
    parser.add_argument("--rss-files", type=int, help="files in the memory tree")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each comparison")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--skip-rss", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--scan-only", action="store_true", help="only the scan comparison (plan vs find)"
    )
    parser.add_argument(
        "--plan-processes",
        type=int,
        help="force the plan's process count in the scan comparison (default: the load decides)",
    )
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    files = args.files or (20_000 if args.quick else 200_000)
    dirs = args.dirs or (20 if args.quick else 200)
    rss_files = args.rss_files or (100_000 if args.quick else 1_000_000)
    work = Path(tempfile.mkdtemp(prefix="bench-files-", dir=args.work))
    failed = False
    try:
        print(f"tree: {files} files in {dirs} directories, half expired; {args.rounds} rounds")
        scan_tree = work / "scan"
        build_tree(scan_tree, files, dirs)
        print(
            f"load average before the scan rounds {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
        )
        scans = bench_scan(scan_tree, args.rounds, args.plan_processes)
        shutil.rmtree(scan_tree)
        failed |= not report_scan(scans)
        if args.scan_only:
            print("scan target met" if not failed else "scan target missed")
            return 1 if failed else 0
        deletes = bench_delete(work, files, dirs, args.rounds)
        ratio = statistics.median(f / o for f, o, _, _ in deletes)
        execute_ratio = statistics.median(f / e for f, _, e, _ in deletes)
        failed |= ratio < 1.0
        removed = deletes[0][3]
        print(
            f"delete  apply vs find -delete      ratio {ratio:5.2f}  (target >= 1.0)  "
            f"{removed} files removed per round; median find "
            f"{statistics.median(f for f, _, _, _ in deletes):.2f} s, apply "
            f"{statistics.median(o for _, o, _, _ in deletes):.2f} s "
            f"(execute alone: ratio {execute_ratio:.2f})"
        )
        if not args.skip_rss:
            rss = bench_rss(work, rss_files)
            failed |= max(rss["peak_mb"], rss["worker_mb"]) >= 100
            print(
                f"memory  plan + execute, {rss_files} files: peak RSS {rss['peak_mb']:.0f} MB "
                f"(plan worker {rss['worker_mb']:.0f} MB; target < 100 MB); "
                f"planned {rss['planned']:.0f}, removed {rss['removed']:.0f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("all targets met" if not failed else "some targets missed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
