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

import shutil
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sql_bench_common as common

DATABASE = "retentiond_bench"
QUICK_ROWS = 200_000
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
RULE = common.rule_toml("lab_results", "365d")
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
    args = common.bench_parser(__doc__, QUICK_ROWS, MYSQL_URL).parse_args()
    if shutil.which("pt-archiver") is None:
        print("pt-archiver is missing: apt-get install percona-toolkit", file=sys.stderr)
        return 2
    rows = QUICK_ROWS if args.quick else args.rows
    ok = True
    with common.scratch_target(args.url, DATABASE, RULE) as (url, engine, _, config):
        print(f"MariaDB/MySQL purge benchmark: {rows:,} rows, half expired")
        build(engine, rows)
        count, pt_s = pt_archiver(url)
        print(common.throughput("pt-archiver:", count, pt_s))
        build(engine, rows)
        run = common.measured_apply(config, common.RULE_NAME)
        rate = run["items"] / run["seconds"]
        print(common.run_throughput(run))
        ok &= common.verdict("retentiond / pt-archiver (rows/s)", rate / (count / pt_s), 1.0)
        ok &= common.verdict("peak RSS (MB)", run["maxrss_mb"], 150, higher_is_better=False)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
