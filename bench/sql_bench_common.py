"""Shared pieces of the SQL purge benchmarks: the rule and its config, scratch databases and
directories, the PostgreSQL lab_results table, the options and printed lines, and a measured run in
a child process.

The purge under test is a real `retentiond` run (plan, guards, batches, journal with the keyed
digest of every removed key, ledger entry, post-check) in a child process, so that its peak memory
is its own; it reports its timings as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RULE_NAME = "lab-results"
POSTGRES_COLUMNS = (
    "id bigint NOT NULL, patient_id int NOT NULL, validated_at timestamptz NOT NULL, "
    "analyte text NOT NULL, value numeric, comment text"
)


def rule_toml(table: str, retain: str) -> str:
    """The rule every SQL benchmark runs: delete the rows of `table` in store `lab` whose
    validated_at is older than `retain`, at most 60% of the table in one run."""
    return f"""[[rules]]
name = "{RULE_NAME}"
store = "lab"
table = "{table}"
age_column = "validated_at"
retain = "{retain}"
action = "delete"
max_fraction = 0.6
"""


def write_config(directory: Path, target_url: str, rule: str, state_url: str | None = None) -> Path:
    """A config with one store `lab` and the rule text given; returns its path (mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = state_url or f"sqlite:///{directory / 'state.db'}"
    text = f"""[daemon]
state_url = "{state}"

[ledger]
origin = "bench.example.org/retentiond"
signing_key_file = "{directory / "ledger.key"}"

[keys]
kek_file = "{directory / "kek"}"

[stores.lab]
kind = "sql"
url = "{target_url}"

{rule}
"""
    path = directory / "config.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    subprocess.run(
        [sys.executable, "-m", "retentiond", "-c", str(path), "init"],
        check=True,
        capture_output=True,
        env=clean_env(),
    )
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without RETENTIOND_ overrides, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTIOND_")}
    env.update(extra)
    return env


def measured_apply(config: Path, rule: str, **env: str) -> dict[str, Any]:
    """Run one rule in a child process; its timings, outcome details and peak RSS."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(config), rule],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(**env),
        cwd=ROOT,
    )
    out, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"retentiond run failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _worker(config: str, rule_name: str) -> None:
    """Child side: plan and apply one rule with the real runner, report as JSON."""
    import threading

    from retentiond.config import load_config
    from retentiond.runner import Runner
    from retentiond.state.db import create_state_engine, state_url

    loaded = load_config(Path(config))
    engine = create_state_engine(state_url(loaded.config))
    runner = Runner(loaded, engine)
    rule = loaded.config.rule(rule_name)
    started = time.perf_counter()
    report = runner.apply(rule, threading.Event())
    seconds = time.perf_counter() - started
    if report.result != "success" or report.outcome is None or report.plan is None:
        raise SystemExit(f"run {report.result}: {report.message}")
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "items": report.outcome.items,
                "method": report.outcome.method,
                "expired": report.plan.expired_items,
                "details": dict(report.outcome.details),
                "remaining": report.outcome.remaining_expired,
                "maxrss_mb": rss_kib / 1024,
            }
        )
    )


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) of `values`, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))
    return ordered[rank]


def verdict(name: str, value: float, target: float, higher_is_better: bool = True) -> bool:
    """Print one ratio against its target; True when it meets it."""
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    print(f"  {name}: {value:.2f} (target {sign} {target:g}) {'OK' if ok else 'MISSED'}")
    return ok


def bench_parser(
    doc: str, quick_rows: int, default_url: str | None = None
) -> argparse.ArgumentParser:
    """The options every SQL benchmark takes: `--rows N` (default 2,000,000), `--quick` for
    `quick_rows` rows, and `--url` when it runs against a server; described by `doc`'s first line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help=f"{quick_rows:,} rows")
    if default_url is not None:
        parser.add_argument("--url", default=default_url)
    return parser


def throughput(label: str, rows: int, seconds: float, width: int = 13, rate_width: int = 9) -> str:
    """One method's line: rows removed, seconds, rows/s; `width` (the label's column) and
    `rate_width` keep the lines of one benchmark aligned."""
    rate = rows / seconds
    return f"  {label:<{width}}{rows:>9,} rows in {seconds:7.2f} s  {rate:>{rate_width},.0f} rows/s"


def run_throughput(run: dict[str, Any], width: int = 13, rate_width: int = 9) -> str:
    """The throughput line of a `measured_apply` run, with its batches, peak RSS and method."""
    details = run["details"]
    return throughput("retentiond:", run["items"], run["seconds"], width, rate_width) + (
        f"  ({details['batches']} batches, longest {details['longest_batch_ms']} ms, "
        f"peak RSS {run['maxrss_mb']:.0f} MB, {run['method']})"
    )


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory for configs, state and files, removed on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="retentiond-bench-"))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def scratch_target(
    admin_url: str, database: str, rule: str
) -> Iterator[tuple[str, Engine, Path, Path]]:
    """A new, empty `database` on the server of `admin_url` (PostgreSQL or MariaDB/MySQL) and a
    scratch directory with a config for `rule` whose store `lab` is that database: (its URL, an
    engine on it, the directory, the config). All removed on the way out."""
    _drop_database(admin_url, database, then_create=True)
    url = make_url(admin_url).set(database=database).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        with scratch_dir() as workdir:
            yield url, engine, workdir, write_config(workdir / "run", url, rule)
    finally:
        engine.dispose()
        _drop_database(admin_url, database)


def _drop_database(admin_url: str, database: str, then_create: bool = False) -> None:
    """Drop `database` if it exists, then create it anew if asked. PostgreSQL refuses to drop a
    database while sessions are open on it, hence FORCE there."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = admin.dialect.identifier_preparer.quote_identifier(database)
    force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        if then_create:
            conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()


def build_postgres_lab_results(
    engine: Engine,
    rows: int,
    validated_at: str,
    create_partitions: Callable[[Connection], None] | None = None,
) -> None:
    """A fresh lab_results table of `rows` rows, row i aged by the SQL expression `validated_at`
    (of i), with the application's indexes and id sequence; vacuumed and checkpointed.

    With `create_partitions`, the table is partitioned by range of validated_at (so its primary key
    must include it) and that function creates the partitions before the rows go in.
    """
    create = f"CREATE TABLE lab_results ({POSTGRES_COLUMNS}, PRIMARY KEY (id))"
    if create_partitions is not None:
        create = (
            f"CREATE TABLE lab_results ({POSTGRES_COLUMNS}, PRIMARY KEY (id, validated_at)) "
            "PARTITION BY RANGE (validated_at)"
        )
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS lab_results"))
        conn.execute(text("DROP SEQUENCE IF EXISTS lab_ids"))
        conn.execute(text(create))
        if create_partitions is not None:
            create_partitions(conn)
        conn.execute(
            text(
                "INSERT INTO lab_results SELECT i, 1 + (i::bigint * 7919) % 50000, "
                f"{validated_at}, 'GLU', (i % 100) / 10.0, 'ok' FROM generate_series(1, :n) i"
            ),
            {"n": rows},
        )
        conn.execute(text("CREATE INDEX lab_results_patient ON lab_results (patient_id)"))
        conn.execute(text("CREATE INDEX lab_results_validated ON lab_results (validated_at)"))
        conn.execute(text(f"CREATE SEQUENCE lab_ids START {int(rows) + 1}"))
    settle_postgres(engine)


def settle_postgres(engine: Engine) -> None:
    """VACUUM ANALYZE and CHECKPOINT, so no method pays for the previous one's dirty pages."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE lab_results"))
        conn.execute(text("CHECKPOINT"))


def delete_once(engine: Engine, cutoff: str) -> tuple[int, float]:
    """One DELETE of every row of lab_results older than the SQL expression `cutoff`, in one
    transaction: (rows, seconds)."""
    started = time.perf_counter()
    with engine.begin() as conn:
        count = conn.execute(
            text(f"DELETE FROM lab_results WHERE validated_at < {cutoff}")
        ).rowcount
    return count, time.perf_counter() - started


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
