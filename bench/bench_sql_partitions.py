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

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sql_postgres import pgbench
from sql_bench_common import drop_postgres, fresh_postgres, measured_apply, verdict, write_config

LOCK_TIMEOUT_MS = 500
RULE = """[[rules]]
name = "lab-results"
store = "lab"
table = "public.lab_results"
age_column = "validated_at"
retain = "35mo"
action = "delete"
max_fraction = 0.6
"""
CUTOFF = "now() - interval '35 months'"


def build(engine: Engine, rows: int) -> None:
    """60 monthly partitions (this month and the 59 before), rows spread evenly over them."""
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS lab_results"))
        conn.execute(text("DROP SEQUENCE IF EXISTS lab_ids"))
        conn.execute(
            text(
                "CREATE TABLE lab_results (id bigint NOT NULL, patient_id int NOT NULL, "
                "validated_at timestamptz NOT NULL, analyte text NOT NULL, value numeric, "
                "comment text, PRIMARY KEY (id, validated_at)) PARTITION BY RANGE (validated_at)"
            )
        )
        statements = (
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
        conn.execute(
            text(
                "INSERT INTO lab_results SELECT i, 1 + (i::bigint * 7919) % 50000, "
                "date_trunc('month', now()) - (i % 60) * interval '1 month' "
                "+ (i % 25) * interval '1 day' + interval '1 hour', 'GLU', (i % 100) / 10.0, 'ok' "
                "FROM generate_series(1, :n) i"
            ),
            {"n": rows},
        )
        conn.execute(text("CREATE INDEX lab_results_patient ON lab_results (patient_id)"))
        conn.execute(text("CREATE INDEX lab_results_validated ON lab_results (validated_at)"))
        conn.execute(text(f"CREATE SEQUENCE lab_ids START {int(rows) + 1}"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE lab_results"))
        conn.execute(text("CHECKPOINT"))


def count_expired_partitions(engine: Engine) -> tuple[int, float]:
    """count(*) of every partition whose range ends before the cutoff: (partitions, seconds)."""
    with engine.connect() as conn:
        names = (
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="300,000 rows")
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    rows = 300_000 if args.quick else args.rows
    url, engine = fresh_postgres(args.url, "retentiond_bench_parts")
    workdir = Path(tempfile.mkdtemp(prefix="retentiond-bench-"))
    ok = True
    try:
        config = write_config(workdir / "run", url, RULE)
        print(f"PostgreSQL partition benchmark: {rows:,} rows in 60 monthly partitions")
        build(engine, rows)
        started = time.perf_counter()
        with engine.begin() as conn:
            count = conn.execute(
                text(f"DELETE FROM lab_results WHERE validated_at < {CUTOFF}")
            ).rowcount
        once = time.perf_counter() - started
        print(f"  one DELETE:  {count:>9,} rows in {once:7.3f} s")
        build(engine, rows)
        counted, count_s = count_expired_partitions(engine)
        print(
            f"  (count(*) of the {counted} wholly expired partitions alone: {count_s:.3f} s, "
            f"one DELETE / that = {once / count_s:.1f})"
        )
        build(engine, rows)
        result: dict[str, object] = {}

        def purge() -> None:
            time.sleep(1.5)
            result.update(measured_apply(config, "lab-results"))

        thread = threading.Thread(target=purge)
        thread.start()
        app = pgbench(url, rows, 6, 100, workdir)
        thread.join()
        seconds = float(result["seconds"])  # type: ignore[arg-type]
        details = result["details"]
        print(
            f"  retentiond:  {result['items']:>9,} rows in {seconds:7.3f} s "
            f"({details['partitions_dropped']} partitions dropped, method {result['method']})"  # type: ignore[index]
        )
        worst = max(lat for _, lat in app)
        print(f"  application: {len(app)} transactions, longest {worst:.1f} ms")
        ok &= verdict("one DELETE time / retentiond time", once / seconds, 50)
        ok &= verdict("longest application transaction (ms)", worst, LOCK_TIMEOUT_MS, False)
    finally:
        engine.dispose()
        drop_postgres(args.url, "retentiond_bench_parts")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
