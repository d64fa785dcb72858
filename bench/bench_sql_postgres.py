"""Benchmark: purging a lab-results table on PostgreSQL, side by side with what scripts do.

Workload: a table of N rows (default 2,000,000) with a primary key and two secondary indexes, half
of them expired, spread through the table. Each method gets a freshly built, vacuumed copy:

- one `DELETE ... WHERE validated_at < cutoff` (the physical limit: one huge transaction);
- for information, bare batches: as many heap-range DELETE transactions as retentiond's run made,
  with nothing else (what batching itself costs), then the same returning every removed key as
  retentiond must for the ledger's digest (the floor of any exactly recorded batched purge);
- retentiond: a real run of the rule (plan, guards, budgeted batches, journal with the keyed digest
  of every removed key, ledger entry, post-check) in a child process, with its peak RSS;
- a loop of `DELETE ... WHERE id IN (SELECT id ... LIMIT 10000)` (what most scripts do);
- the application's p99 latency (pgbench at a fixed rate: reads by patient, inserts, updates)
  without, then during, a retentiond purge.

Targets: retentiond >= 0.6x the rows/s of one DELETE with its longest transaction under 100 ms,
>= 10x the LIMIT loop, application p99 during the purge <= 1.5x without, peak RSS < 150 MB.
Usage: python bench/bench_sql_postgres.py [--rows N | --quick] [--url URL] [--skip-loop]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sql_bench_common as common

DATABASE = "retentiond_bench"
QUICK_ROWS = 200_000
RULE = common.rule_toml("public.lab_results", "365d")
CUTOFF = "now() - interval '365 days'"
# Even ids 400 days old and more, odd ones under 250 days: half expired, interleaved.
HALF_EXPIRED = (
    "CASE WHEN i % 2 = 0 THEN now() - interval '400 days' - (i % 1000) * interval '6 hours' "
    "ELSE now() - (i % 1000) * interval '6 hours' END"
)
# The label and rows/s columns of the throughput lines, wide enough for "LIMIT 10000 loop:".
COLUMNS = (18, 10)

READ = "\\set pid random(1, 50000)\nSELECT * FROM lab_results WHERE patient_id = :pid;\n"
INSERT = (
    "\\set pid random(1, 50000)\n"
    "INSERT INTO lab_results VALUES (nextval('lab_ids'), :pid, now(), 'GLU', 5.1, 'new');\n"
)
UPDATE = "\\set id random(1, {rows})\nUPDATE lab_results SET comment = 'checked' WHERE id = :id;\n"


def build(engine: Engine, rows: int) -> None:
    """A fresh lab_results table: half the rows expired, interleaved; vacuumed and checkpointed."""
    common.build_postgres_lab_results(engine, rows, HALF_EXPIRED)


def bare_batches(engine: Engine, batches: int, keys: bool = False) -> tuple[int, float]:
    """The same number of heap-range (ctid) transactions as retentiond's run, and nothing else
    (no plan, journal, digest or post-check): the cost of batching itself. With `keys`, each
    statement also returns its removed keys as retentiond's does (one array per batch), and they
    are formatted as digest items, but not digested. (rows, seconds)."""
    with engine.connect() as conn:
        pages = int(
            conn.execute(
                text("SELECT pg_relation_size('lab_results') / current_setting('block_size')::int")
            ).scalar_one()
        )
    step = max(1, -(-pages // batches))
    statement = text(
        "DELETE FROM lab_results WHERE ctid >= CAST(:low AS tid) AND ctid < CAST(:high AS tid) "
        f"AND validated_at < {CUTOFF}"
    )
    if keys:
        statement = text(
            f"WITH removed AS ({statement.text} RETURNING id) SELECT array_agg(id) FROM removed"
        )
    total = 0
    started = time.perf_counter()
    for first in range(0, pages, step):
        with engine.begin() as conn:
            bounds = {"low": f"({first},0)", "high": f"({first + step},0)"}
            result = conn.execute(statement, bounds)
            if keys:
                total += len([b"[%d]" % k for k in result.scalar() or []])
            else:
                total += result.rowcount
    return total, time.perf_counter() - started


def limit_loop(engine: Engine) -> tuple[int, float, float]:
    """DELETE ... WHERE id IN (SELECT id ... LIMIT 10000) until nothing is left."""
    statement = text(
        "DELETE FROM lab_results WHERE id IN (SELECT id FROM lab_results "
        f"WHERE validated_at < {CUTOFF} LIMIT 10000)"
    )
    total, longest = 0, 0.0
    started = time.perf_counter()
    while True:
        batch = time.perf_counter()
        with engine.begin() as conn:
            count = conn.execute(statement).rowcount
        longest = max(longest, time.perf_counter() - batch)
        total += count
        if count == 0:
            return total, time.perf_counter() - started, longest


def pgbench(
    url: str, rows: int, seconds: int, rate: int, workdir: Path
) -> list[tuple[float, float]]:
    """Run the application at a fixed rate; (completion time, latency ms) of every transaction."""
    parsed = make_url(url)
    scripts = []
    for name, body, weight in (("read", READ, 6), ("insert", INSERT, 2), ("update", UPDATE, 2)):
        path = workdir / f"{name}.sql"
        path.write_text(body.format(rows=rows))
        scripts += ["-f", f"{path}@{weight}"]
    logs = workdir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    command = [
        "pgbench",
        "-n",
        "-h",
        parsed.host or "127.0.0.1",
        "-p",
        str(parsed.port or 5432),
        "-U",
        parsed.username or "postgres",
        "-c",
        "4",
        "-j",
        "2",
        "-R",
        str(rate),
        "-T",
        str(seconds),
        "-l",
        f"--log-prefix={logs / 'app'}",
        *scripts,
        parsed.database or "",
    ]
    subprocess.run(command, check=True, capture_output=True)
    samples = []
    for log in logs.iterdir():
        for line in log.read_text().splitlines():
            fields = line.split()
            latency_ms = int(fields[2]) / 1000
            done = int(fields[4]) + int(fields[5]) / 1e6
            samples.append((done, latency_ms))
    return samples


def application_p99(
    url: str, engine: Engine, config: Path, rows: int, seconds: float, workdir: Path
) -> tuple[float, float, float]:
    """p99 latency of the application alone, then during a purge, in one pgbench run on one
    table, so both windows share its state and the machine's: (alone, during, max during)."""
    rate = 200
    warmup, quiet = 2.0, 8.0
    window: list[float] = []

    def purge() -> None:
        time.sleep(quiet)
        window.append(time.time())
        common.measured_apply(config, common.RULE_NAME)
        window.append(time.time())

    build(engine, rows)
    thread = threading.Thread(target=purge)
    begun = time.time()
    thread.start()
    samples = pgbench(url, rows, int(quiet + seconds + 6), rate, workdir)
    thread.join()
    start, end = window
    alone = [lat for done, lat in samples if begun + warmup <= done < start]
    during = [lat for done, lat in samples if start <= done <= end + 0.2]
    return common.percentile(alone, 99), common.percentile(during, 99), max(during or [0.0])


def main() -> int:
    """Build, measure side by side, print ratios; exit 1 if a target is missed."""
    parser = common.bench_parser(__doc__, QUICK_ROWS, common.POSTGRES_URL)
    parser.add_argument("--skip-loop", action="store_true", help="skip the LIMIT loop")
    parser.add_argument("--skip-pgbench", action="store_true", help="skip the application p99")
    args = parser.parse_args()
    rows = QUICK_ROWS if args.quick else args.rows
    ok = True
    with common.scratch_target(args.url, DATABASE, RULE) as (url, engine, workdir, config):
        print(f"PostgreSQL purge benchmark: {rows:,} rows, half expired")
        build(engine, rows)
        count, once_s = common.delete_once(engine, CUTOFF)
        print(common.throughput("one DELETE:", count, once_s, *COLUMNS))
        build(engine, rows)
        run = common.measured_apply(config, common.RULE_NAME)
        rate = run["items"] / run["seconds"]
        longest = run["details"]["longest_batch_ms"]
        print(common.run_throughput(run, *COLUMNS))
        ok &= common.verdict("retentiond / one DELETE (rows/s)", rate / (count / once_s), 0.6)
        build(engine, rows)
        bare, bare_s = bare_batches(engine, run["details"]["batches"])
        print(
            f"  (bare batches: the same {run['details']['batches']} heap ranges with nothing else: "
            f"{bare / bare_s:,.0f} rows/s, ratio {bare / bare_s / (count / once_s):.2f})"
        )
        build(engine, rows)
        kept, kept_s = bare_batches(engine, run["details"]["batches"], keys=True)
        print(
            f"  (bare batches returning their keys, as an exact digest needs: "
            f"{kept / kept_s:,.0f} rows/s, ratio {kept / kept_s / (count / once_s):.2f})"
        )
        ok &= common.verdict("longest transaction (ms)", longest, 100, higher_is_better=False)
        ok &= common.verdict("peak RSS (MB)", run["maxrss_mb"], 150, higher_is_better=False)
        if not args.skip_loop:
            build(engine, rows)
            n, loop_s, loop_longest = limit_loop(engine)
            print(
                common.throughput("LIMIT 10000 loop:", n, loop_s, *COLUMNS)
                + f"  (longest {loop_longest * 1000:.0f} ms)"
            )
            ok &= common.verdict("retentiond / LIMIT loop (rows/s)", rate / (n / loop_s), 10)
        if not args.skip_pgbench and shutil.which("pgbench"):
            alone, during, worst = application_p99(
                url, engine, config, rows, run["seconds"], workdir
            )
            print(
                f"  application p99: {alone:.2f} ms alone, {during:.2f} ms during the purge (max {worst:.1f} ms)"
            )
            ok &= common.verdict(
                "application p99 during / alone", during / alone, 1.5, higher_is_better=False
            )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
