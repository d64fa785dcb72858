"""The daemon's costs, each measured beside a baseline in the same run; prints figures and ratios.

- idle:   CPU (% of one core) and RSS of `retentiond run` with 100 rules once their first runs are
          done, over --idle seconds; baseline: a Python process that imports the daemon and sleeps
          (the interpreter's floor). Targets: < 1% of a core, < 80 MB.
- scrape: time of GET /metrics with those 100 rules, fresh connection each time; baseline: GET
          /healthz on the same server (the HTTP round trip alone). Target: < 50 ms.
- stop:   SIGTERM to exit while a rule purges a large PostgreSQL table; baseline: SIGTERM to exit
          of the same daemon when idle. Target: < 5 s.

    .venv/bin/python bench/bench_daemon.py            # 60 s idle window, 1,000,000-row purge
    .venv/bin/python bench/bench_daemon.py --quick    # 10 s idle window, 200,000 rows: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon_support import (  # noqa: E402 - the project root first
    DaemonProcess,
    cli,
    free_port,
    sample,
    write_daemon_config,
)

TICKS = os.sysconf("SC_CLK_TCK")
PG_URL = os.environ.get(
    "RETENTIOND_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    """Resident set size in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def hundred_rules(directory: Path) -> str:
    """100 rules of every kind: SQL rows, files, sealed copies; due again only in a day."""
    lims = directory / "lims.db"
    with sqlite3.connect(lims) as conn:
        for i in range(34):
            conn.execute(
                f"CREATE TABLE results_{i} (id INTEGER PRIMARY KEY, validated_at TIMESTAMP NOT NULL)"
            )
            conn.executemany(
                f"INSERT INTO results_{i} VALUES (?, ?)",
                ((n, "2026-01-01 00:00:00") for n in range(100)),
            )
    transfer = directory / "transfer"
    transfer.mkdir()
    parts = [
        f'[stores.lims]\nkind = "sql"\nurl = "sqlite:///{lims}"\n',
        f'[stores.transfer]\nkind = "files"\nroot = "{transfer}"\n',
    ]
    for i in range(100):
        kind = i % 3
        if kind == 0:
            parts.append(
                f'[[rules]]\nname = "rows-{i}"\nstore = "lims"\ntable = "results_{i // 3}"\n'
                'age_column = "validated_at"\nretain = "10y"\naction = "delete"\n'
            )
        elif kind == 1:
            parts.append(
                f'[[rules]]\nname = "files-{i}"\nstore = "transfer"\nglob = "dir-{i}/**/*.csv"\n'
                'retain = "7d"\naction = "delete"\n'
            )
        else:
            parts.append(f'[[rules]]\nname = "copies-{i}"\naction = "shred"\n')
    return "\n".join(parts)


def runs_done(daemon: DaemonProcess) -> int:
    """Runs of every rule and result so far, from a scrape."""
    _, body = daemon.get("/metrics")
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith("retentiond_rule_runs_total{")
        )
    )


def render_after_change(rounds: int) -> float:
    """Milliseconds to render 100 rules' metrics right after a value changed (cache missed)."""
    from retentiond.metrics import Metrics

    metrics = Metrics()
    metrics.set_rules({f"rule-{i}": ("rows", "files", "copies")[i % 3] for i in range(100)})
    times = []
    for i in range(rounds):
        metrics.update_ledger(i, None)  # a change: the next scrape renders again
        started = time.perf_counter()
        metrics.render()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def idle_and_scrape(idle_seconds: float, scrapes: int) -> dict[str, float]:
    """Idle CPU and RSS with 100 rules, then scrape latency; each with its baseline."""
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        directory = Path(tmp)
        port = free_port()
        config = write_daemon_config(
            directory, hundred_rules(directory), port=port, schedule="every 24h"
        )
        assert cli(config, "init").returncode == 0
        baseline = subprocess.Popen(
            [sys.executable, "-c", "import retentiond.daemon, time; time.sleep(3600)"], cwd=ROOT
        )
        daemon = DaemonProcess(config, port)
        try:
            daemon.wait_http(60)
            deadline = time.monotonic() + 120
            rules = 100
            while runs_done(daemon) < rules and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(1)  # let the last checkpoint and refresh settle
            pid = daemon.proc.pid
            cpu0, base0, t0 = cpu_seconds(pid), cpu_seconds(baseline.pid), time.monotonic()
            time.sleep(idle_seconds)
            elapsed = time.monotonic() - t0
            cpu = (cpu_seconds(pid) - cpu0) / elapsed * 100
            base_cpu = (cpu_seconds(baseline.pid) - base0) / elapsed * 100
            rss, base_rss = rss_mb(pid), rss_mb(baseline.pid)

            def timed(path: str) -> float:
                started = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                    r.read()
                return (time.perf_counter() - started) * 1000

            for _ in range(5):  # warm up
                timed("/metrics")
            metrics_ms = sorted(timed("/metrics") for _ in range(scrapes))
            health_ms = sorted(timed("/healthz") for _ in range(scrapes))
            _, body = daemon.get("/metrics")
            assert sample(body, "retentiond_rule_overdue_items", rule="copies-2") == 0
            daemon.stop()
        finally:
            daemon.close()
            baseline.kill()
            baseline.wait()
    p95 = max(1, int(scrapes * 0.95)) - 1
    return {
        "rules": rules,
        "idle_seconds": round(elapsed, 1),
        "idle_cpu_percent": round(cpu, 3),
        "baseline_cpu_percent": round(base_cpu, 3),
        "rss_mb": round(rss, 1),
        "baseline_rss_mb": round(base_rss, 1),
        "rss_ratio": round(rss / base_rss, 2),
        "scrape_bytes": len(body),
        "scrape_ms_median": round(statistics.median(metrics_ms), 2),
        "scrape_ms_p95": round(metrics_ms[p95], 2),
        "healthz_ms_median": round(statistics.median(health_ms), 2),
        "scrape_vs_healthz": round(statistics.median(metrics_ms) / statistics.median(health_ms), 2),
        "render_ms_after_change": render_after_change(scrapes // 5),
    }


def stop_during_purge(rows: int) -> dict[str, float]:
    """SIGTERM to exit while purging `rows` PostgreSQL rows (half expired), and when idle."""
    name = f"rt_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    target = sa.create_engine(url)
    try:
        with target.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE results (id bigint PRIMARY KEY, patient_id int NOT NULL, "
                    "validated_at timestamptz NOT NULL, value text)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO results SELECT g, g % 9973, now() - "
                    "(CASE WHEN g % 2 = 0 THEN interval '400 days' ELSE interval '1 day' END), "
                    "repeat('v', 60) FROM generate_series(1, :n) g"
                ),
                {"n": rows},
            )
            conn.execute(sa.text("CREATE INDEX ON results (validated_at)"))
            conn.execute(sa.text("CREATE INDEX ON results (patient_id)"))
        with target.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE results"))
    except BaseException:
        target.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        raise
    body = f"""
[stores.lims]
kind = "sql"
url = "{url}"

[[rules]]
name = "lab-results"
store = "lims"
table = "public.results"
age_column = "validated_at"
retain = "30d"
action = "delete"
max_fraction = 0.9
"""
    try:
        with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
            directory = Path(tmp)
            port = free_port()
            config = write_daemon_config(directory, body, port=port, schedule="every 24h")
            assert cli(config, "init").returncode == 0
            state = sa.create_engine(f"sqlite:///{directory / 'state.db'}")
            daemon = DaemonProcess(config, port)
            try:
                deadline = time.monotonic() + 300
                while True:  # a first batch committed: the purge is under way
                    with state.connect() as conn:
                        try:
                            batches = conn.execute(
                                sa.text("SELECT count(*) FROM run_batch")
                            ).scalar_one()
                        except sa.exc.OperationalError:
                            batches = 0
                    if batches:
                        break
                    assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.log
                    time.sleep(0.05)
                code, busy_stop = daemon.stop(timeout=60)
                assert code == 0, daemon.log
            finally:
                daemon.close()
            with target.connect() as conn:
                left = conn.execute(sa.text("SELECT count(*) FROM results")).scalar_one()
            with state.connect() as conn:
                entry = conn.execute(
                    sa.text("SELECT entry FROM ledger_entry ORDER BY seq DESC LIMIT 1")
                ).scalar_one()
            recorded = json.loads(entry)["count"]
            state.dispose()
            assert recorded == rows - left, (recorded, rows - left)
            # Baseline: the same daemon, idle (its slot already taken), stopping.
            daemon = DaemonProcess(config, port)
            try:
                daemon.wait_http(60)
                time.sleep(1)
                code, idle_stop = daemon.stop(timeout=60)
            finally:
                daemon.close()
    finally:
        target.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return {
        "rows": rows,
        "removed_before_stop": rows - left,
        "stop_seconds_during_purge": round(busy_stop, 3),
        "stop_seconds_idle": round(idle_stop, 3),
        "stop_ratio": round(busy_stop / idle_stop, 2),
    }


def main() -> None:
    """Run the measurements and print them as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short idle window, small table")
    parser.add_argument("--idle", type=float, help="idle window in seconds (default 60; quick 10)")
    parser.add_argument("--rows", type=int, help="rows of the purged table (default 1,000,000)")
    parser.add_argument("--skip-stop", action="store_true", help="no PostgreSQL purge")
    args = parser.parse_args()
    idle = args.idle or (10.0 if args.quick else 60.0)
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    scrapes = 50 if args.quick else 200
    print(json.dumps({"idle_and_scrape": idle_and_scrape(idle, scrapes)}), flush=True)
    if not args.skip_stop:
        print(json.dumps({"stop_during_purge": stop_during_purge(rows)}), flush=True)


if __name__ == "__main__":
    main()
