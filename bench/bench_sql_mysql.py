"""Benchmark: purging a lab-results table on MariaDB/MySQL, side by side with pt-archiver.

Workload: N rows (default 2,000,000) with a primary key and two secondary indexes, half of them
expired, interleaved. Each method gets a freshly built copy:

- `pt-archiver --purge --bulk-delete --limit 1000 --commit-each --primary-key-only` (Debian's
  percona-toolkit), the usual tool for this job;
- retentiond: a real run of the rule (plan, guards, primary-key range batches sized by the time
  budget, journal with the keyed digest of every removed key, ledger entry, post-check).

Target: retentiond at least 1.0x the rows per second of pt-archiver.
Usage: python bench/bench_sql_mysql.py [--rows N | --quick] [--url URL]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sql_bench_common import measured_apply, verdict, write_config

RULE = """[[rules]]
name = "lab-results"
store = "lab"
table = "lab_results"
age_column = "validated_at"
retain = "365d"
action = "delete"
max_fraction = 0.6
"""
WHERE = "validated_at < NOW() - INTERVAL 365 DAY"


def build(engine: Engine, rows: int) -> None:
    """A fresh lab_results table, half of it expired, interleaved."""
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS lab_results"))
        conn.execute(
            text(
                "CREATE TABLE lab_results (id BIGINT PRIMARY KEY, patient_id INT NOT NULL, "
                "validated_at DATETIME(6) NOT NULL, analyte VARCHAR(10) NOT NULL, "
                "value DECIMAL(6,2), comment VARCHAR(40), KEY lab_results_patient (patient_id), "
                "KEY lab_results_validated (validated_at)) ENGINE=InnoDB"
            )
        )
        conn.execute(
            text(
                "INSERT INTO lab_results SELECT seq, 1 + (seq * 7919) % 50000, "
                "IF(seq % 2 = 0, NOW() - INTERVAL 400 DAY - INTERVAL (seq % 1000) * 6 HOUR, "
                "NOW() - INTERVAL (seq % 1000) * 6 HOUR), 'GLU', (seq % 100) / 10, 'ok' "
                f"FROM seq_1_to_{int(rows)}"
            )
        )
        conn.execute(text("ANALYZE TABLE lab_results"))


def pt_archiver(url: str) -> tuple[int, float]:
    """pt-archiver's purge of every expired row: (rows, seconds)."""
    parsed = make_url(url)
    source = (
        f"h={parsed.host or '127.0.0.1'},P={parsed.port or 3306},u={parsed.username or 'root'},"
        f"D={parsed.database},t=lab_results"
    )
    if parsed.password:
        source += f",p={parsed.password}"
    command = [
        "pt-archiver", "--source", source, "--purge", "--bulk-delete", "--limit", "1000",
        "--commit-each", "--primary-key-only", "--where", WHERE, "--statistics", "--charset", "utf8mb4",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    deleted = 0
    for line in done.stdout.splitlines():
        if line.startswith("DELETE "):
            deleted = int(line.split()[1])
    return deleted, seconds


def main() -> int:
    """Build, measure side by side, print the ratio; exit 1 if the target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="200,000 rows")
    parser.add_argument("--url", default="mysql+pymysql://root@127.0.0.1:3306/test")
    args = parser.parse_args()
    if shutil.which("pt-archiver") is None:
        print("pt-archiver is missing: apt-get install percona-toolkit", file=sys.stderr)
        return 2
    rows = 200_000 if args.quick else args.rows
    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    database = "retentiond_bench"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{database}`"))
        conn.execute(text(f"CREATE DATABASE `{database}`"))
    url = make_url(args.url).set(database=database).render_as_string(hide_password=False)
    engine = create_engine(url)
    workdir = Path(tempfile.mkdtemp(prefix="retentiond-bench-"))
    ok = True
    try:
        config = write_config(workdir / "run", url, RULE)
        print(f"MariaDB/MySQL purge benchmark: {rows:,} rows, half expired")
        build(engine, rows)
        count, pt_s = pt_archiver(url)
        print(f"  pt-archiver: {count:>9,} rows in {pt_s:7.2f} s  {count / pt_s:>9,.0f} rows/s")
        build(engine, rows)
        run = measured_apply(config, "lab-results")
        rate = run["items"] / run["seconds"]
        print(
            f"  retentiond:  {run['items']:>9,} rows in {run['seconds']:7.2f} s  {rate:>9,.0f} rows/s"
            f"  ({run['details']['batches']} batches, longest {run['details']['longest_batch_ms']}"
            f" ms, peak RSS {run['maxrss_mb']:.0f} MB, {run['method']})"
        )
        ok &= verdict("retentiond / pt-archiver (rows/s)", rate / (count / pt_s), 1.0)
        ok &= verdict("peak RSS (MB)", run["maxrss_mb"], 150, higher_is_better=False)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{database}`"))
        admin.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
