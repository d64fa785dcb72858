"""Shared pieces of the SQL purge benchmarks: a config, a measured run in a child process.

The purge under test is a real `retentiond` run (plan, guards, batches, journal with the keyed
digest of every removed key, ledger entry, post-check) in a child process, so that its peak memory
is its own; it reports its timings as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

ROOT = Path(__file__).resolve().parent.parent


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


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])


def fresh_postgres(admin_url: str, database: str) -> tuple[str, Engine]:
    """Drop and create `database` on the server of `admin_url`; its URL and an engine on it."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    url = make_url(admin_url).set(database=database).render_as_string(hide_password=False)
    return url, create_engine(url)


def drop_postgres(admin_url: str, database: str) -> None:
    """Drop a database made by `fresh_postgres`."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    admin.dispose()
