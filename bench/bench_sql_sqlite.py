"""Benchmark: purging a lab-results table in SQLite, side by side with one DELETE.

Workload: N rows (default 2,000,000) with an integer primary key and two secondary indexes, half of
them expired, interleaved, in a database file. Each method gets a fresh copy of the file:

- one `DELETE ... WHERE validated_at < cutoff` (one transaction: the application waits for all of
  it);
- for information, bare batches: as many rowid-range DELETE transactions as retentiond's run made,
  with nothing else (what batching itself costs);
- retentiond: a real run of the rule (plan, guards, rowid range batches sized by the time budget,
  journal with the keyed digest of every removed key, ledger entry, post-check).

Target: retentiond at least 0.5x the rows per second of the single DELETE.
Usage: python bench/bench_sql_sqlite.py [--rows N | --quick]
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sql_bench_common as common

QUICK_ROWS = 200_000
RULE = common.rule_toml("lab_results", "365d")


def build(path: Path, rows: int) -> None:
    """A database file with the lab_results table, half of it expired."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE lab_results (id INTEGER PRIMARY KEY, patient_id INTEGER NOT NULL,
            validated_at TIMESTAMP NOT NULL, analyte TEXT NOT NULL, value REAL, comment TEXT);
        """
    )
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO lab_results SELECT i, 1 + (i * 7919) % 50000, "
        "strftime('%Y-%m-%d %H:%M:%f', 'now', CASE WHEN i % 2 = 0 THEN '-400 days' ELSE '0 days' "
        "END, '-' || ((i % 1000) * 6) || ' hours'), 'GLU', (i % 100) / 10.0, 'ok' FROM n",
        (rows,),
    )
    db.execute("CREATE INDEX lab_results_patient ON lab_results (patient_id)")
    db.execute("CREATE INDEX lab_results_validated ON lab_results (validated_at)")
    db.commit()
    db.close()


def cutoff() -> str:
    """The rule's cutoff, 365 days ago, as the table's text timestamps spell it."""
    return (datetime.now(UTC) - timedelta(days=365)).strftime("%Y-%m-%d %H:%M:%S.%f")


def delete_once(path: Path) -> tuple[int, float]:
    """One DELETE in one transaction: (rows, seconds)."""
    before = cutoff()
    db = sqlite3.connect(path)
    started = time.perf_counter()
    count = db.execute("DELETE FROM lab_results WHERE validated_at < ?", (before,)).rowcount
    db.commit()
    seconds = time.perf_counter() - started
    db.close()
    return count, seconds


def bare_batches(path: Path, batches: int) -> tuple[int, float]:
    """The same number of rowid-range transactions as retentiond's run, and nothing else (no
    plan, journal, digest or post-check): the cost of batching itself. (rows, seconds)."""
    before = cutoff()
    db = sqlite3.connect(path, isolation_level=None)
    low, high = db.execute("SELECT min(id), max(id) FROM lab_results").fetchone()
    step = max(1, (high - low + batches) // batches)
    count = 0
    started = time.perf_counter()
    for first in range(low, high + 1, step):
        db.execute("BEGIN IMMEDIATE")
        count += db.execute(
            "DELETE FROM lab_results WHERE id >= ? AND id < ? AND validated_at < ?",
            (first, first + step, before),
        ).rowcount
        db.execute("COMMIT")
    seconds = time.perf_counter() - started
    db.close()
    return count, seconds


def main() -> int:
    """Build, measure side by side, print the ratio; exit 1 if the target is missed."""
    args = common.bench_parser(__doc__, QUICK_ROWS).parse_args()
    rows = QUICK_ROWS if args.quick else args.rows
    ok = True
    with common.scratch_dir() as workdir:
        template = workdir / "template.db"
        build(template, rows)
        target = workdir / "lab.db"
        config = common.write_config(workdir / "run", f"sqlite:///{target}", RULE)
        print(f"SQLite purge benchmark: {rows:,} rows, half expired")
        shutil.copy(template, target)
        count, once_s = delete_once(target)
        print(common.throughput("one DELETE:", count, once_s))
        shutil.copy(template, target)
        run = common.measured_apply(config, common.RULE_NAME)
        rate = run["items"] / run["seconds"]
        print(common.run_throughput(run))
        ok &= common.verdict("retentiond / one DELETE (rows/s)", rate / (count / once_s), 0.5)
        shutil.copy(template, target)
        bare, bare_s = bare_batches(target, run["details"]["batches"])
        print(
            f"  (bare batches: the same {run['details']['batches']} rowid ranges with nothing else: "
            f"{bare / bare_s:,.0f} rows/s, ratio {bare / bare_s / (count / once_s):.2f})"
        )
        # For information: the same run with a 500 ms budget per transaction. SQLite rewrites
        # every index page a batch touches at each commit, so throughput grows with batch size.
        shutil.copy(template, target)
        big = common.measured_apply(
            config, common.RULE_NAME, RETENTIOND_DAEMON__BATCH_BUDGET_MS="500"
        )
        print(
            f"  (budget 500 ms: {big['items'] / big['seconds']:,.0f} rows/s, ratio "
            f"{big['items'] / big['seconds'] / (count / once_s):.2f}, longest "
            f"{big['details']['longest_batch_ms']} ms)"
        )
        ok &= common.verdict("peak RSS (MB)", run["maxrss_mb"], 150, higher_is_better=False)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
