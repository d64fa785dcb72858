"""Benchmark: a table partitioned by month on PostgreSQL, expired partitions dropped whole.

Workload: lab results partitioned by month on the age column, 60 partitions (N rows in all, default
2,000,000), the 24 oldest wholly expired. Side by side on fresh copies:

- one `DELETE ... WHERE validated_at < cutoff` removing the same rows;
- for information, `count(*)` of each wholly expired partition: the ledger's exact count of a
  dropped partition is such a scan, so one DELETE's time over this bounds any exactly counted drop;
- retentiond's run of the rule (partitions detached and dropped, the partition the cutoff falls in
  deleted row by row, journal, ledger entry), while pgbench plays the application on the table at a
  fixed rate: the longest application transaction is reported against the lock timeout.

Targets: retentiond at least 50x faster than the DELETE; no application transaction waits longer
than the configured lock timeout (500 ms).
Usage: python bench/bench_sql_partitions.py [--rows N | --quick] [--url URL]
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sql_bench_common as common
from bench_sql_postgres import pgbench

DATABASE = "retentiond_bench_parts"
QUICK_ROWS = 300_000
LOCK_TIMEOUT_MS = 500
RULE = common.rule_toml("public.lab_results", "35mo")
CUTOFF = "now() - interval '35 months'"
# Row i in the month i % 60 months before this one, on one of its first 25 days.
SPREAD_OVER_MONTHS = (
    "date_trunc('month', now()) - (i % 60) * interval '1 month' "
    "+ (i % 25) * interval '1 day' + interval '1 hour'"
)


def build(engine: Engine, rows: int) -> None:
    """Rows spread evenly over 60 monthly partitions: this month and the 59 before."""
    common.build_postgres_lab_results(engine, rows, SPREAD_OVER_MONTHS, create_monthly_partitions)


def create_monthly_partitions(conn: Connection) -> None:
    """A partition per month: next month (left empty), this month and the 59 before."""
    statements: Sequence[str] = (
        conn.execute(
            text(
                "SELECT format('CREATE TABLE lab_results_m%s PARTITION OF lab_results FOR VALUES "
                "FROM (%L) TO (%L)', k + 1, date_trunc('month', now()) - k * interval '1 month', "
                "date_trunc('month', now()) - (k - 1) * interval '1 month') "
                "FROM generate_series(-1, 59) k"
            )
        )
        .scalars()
        .all()
    )
    for statement in statements:
        conn.execute(text(statement))


def count_expired_partitions(engine: Engine) -> tuple[int, float]:
    """count(*) of every partition whose range ends before the cutoff: (partitions, seconds)."""
    with engine.connect() as conn:
        names: Sequence[str] = (
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'lab_results'::regclass AND "
                    "(regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]"
                    f"::timestamptz <= {CUTOFF}"
                )
            )
            .scalars()
            .all()
        )
        started = time.perf_counter()
        for name in names:
            conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
        return len(names), time.perf_counter() - started


def main() -> int:
    """Build, measure side by side, print ratios; exit 1 if a target is missed."""
    args = common.bench_parser(__doc__, QUICK_ROWS, common.POSTGRES_URL).parse_args()
    rows = QUICK_ROWS if args.quick else args.rows
    ok = True
    with common.scratch_target(args.url, DATABASE, RULE) as (url, engine, workdir, config):
        print(f"PostgreSQL partition benchmark: {rows:,} rows in 60 monthly partitions")
        build(engine, rows)
        count, once = common.delete_once(engine, CUTOFF)
        print(f"  one DELETE:  {count:>9,} rows in {once:7.3f} s")
        build(engine, rows)
        counted, count_s = count_expired_partitions(engine)
        print(
            f"  (count(*) of the {counted} wholly expired partitions alone: {count_s:.3f} s, "
            f"one DELETE / that = {once / count_s:.1f})"
        )
        build(engine, rows)
        result: dict[str, Any] = {}

        def purge() -> None:
            time.sleep(1.5)
            result.update(common.measured_apply(config, common.RULE_NAME))

        thread = threading.Thread(target=purge)
        thread.start()
        app = pgbench(url, rows, 6, 100, workdir)
        thread.join()
        seconds = float(result["seconds"])
        details = result["details"]
        print(
            f"  retentiond:  {result['items']:>9,} rows in {seconds:7.3f} s "
            f"({details['partitions_dropped']} partitions dropped, method {result['method']})"
        )
        worst = max(lat for _, lat in app)
        print(f"  application: {len(app)} transactions, longest {worst:.1f} ms")
        ok &= common.verdict("one DELETE time / retentiond time", once / seconds, 50)
        ok &= common.verdict("longest application transaction (ms)", worst, LOCK_TIMEOUT_MS, False)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
