"""`retentiond apply` under leases: a rule a daemon runs is not run twice, a long run keeps its lease.

Real processes on a real SQLite state database; a purge is made to last as long as a test needs by a
big table, the smallest batch budget and a slow trigger on the table.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from tests.daemon_support import (
    ROOT,
    DaemonProcess,
    all_kinds,
    cli,
    cli_env,
    fast_deletes,
    free_port,
    lab_results_sqlite,
    slow_deletes,
    write_daemon_config,
)

BIG = 300_000  # rows: at a 5 ms batch budget, a purge of half of them lasts several seconds


def _lab(directory: Path, rows: int) -> None:
    """A results table where every even row is 400 days old; an old and a new export."""
    lab_results_sqlite(directory / "lims.db", rows)
    transfer = directory / "transfer"
    transfer.mkdir()
    month_ago = time.time() - 30 * 86400
    for name in ("old.csv", "new.csv"):
        (transfer / name).write_text("export\n")
    os.utime(transfer / "old.csv", (month_ago, month_ago))


def _setup(directory: Path, rows: int, schedule: str) -> tuple[Path, int]:
    """Table, files, config and an initialised state database; (config, metrics port)."""
    directory.mkdir(parents=True, exist_ok=True)
    _lab(directory, rows)
    port = free_port()
    config = write_daemon_config(
        directory,
        # Half of each target expires, right at the default guard (0.5): raise it clear.
        all_kinds(directory, max_fraction=0.9),
        port=port,
        schedule=schedule,
        daemon_extra="batch_budget_ms = 5",
    )
    init = cli(config, "init")
    assert init.returncode == 0, init.stderr
    return config, port


def _rows(directory: Path) -> int:
    with sqlite3.connect(directory / "lims.db") as conn:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])


def _query(directory: Path, sql: str, **params: object) -> list[sa.Row[tuple[object, ...]]]:
    engine = sa.create_engine(f"sqlite:///{directory / 'state.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def _purges(directory: Path, rule: str = "lab-results") -> list[tuple[dict[str, object], str]]:
    """(ledger entry, owner of its run) of every purge entry of `rule`."""
    owners = {r.run_id: r.owner for r in _query(directory, "SELECT run_id, owner FROM run")}
    entries = [json.loads(r.entry) for r in _query(directory, "SELECT entry FROM ledger_entry")]
    return [
        (e, owners[str(e["run_id"])]) for e in entries if e["kind"] == "purge" and e["rule"] == rule
    ]


def _lease(directory: Path, rule: str = "lab-results") -> tuple[str | None, datetime | None]:
    """(owner, expiry or None when released) of the rule's lease row."""
    row = _query(directory, "SELECT owner, expires_at FROM rule_lease WHERE rule = :r", r=rule)[0]
    expires = row.expires_at
    if isinstance(expires, str):
        expires = datetime.fromisoformat(expires)
    return row.owner, None if expires is None else expires.replace(tzinfo=UTC)


def _owner(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def _start_apply(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "retentiond", "-c", str(config), "apply", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=cli_env(),
    )


def _wait_purging(directory: Path, process: subprocess.Popen[str] | DaemonProcess) -> None:
    """Until the big purge is under way."""
    proc = process.proc if isinstance(process, DaemonProcess) else process
    deadline = time.monotonic() + 60
    while _rows(directory) == BIG:
        assert proc.poll() is None, "exited before purging"
        assert time.monotonic() < deadline, "the purge never started"
        time.sleep(0.05)


def test_apply_does_not_run_a_rule_a_daemon_is_running(tmp_path: Path) -> None:
    config, port = _setup(tmp_path, BIG, "every 1h")
    slow_deletes(tmp_path / "lims.db")
    daemon = DaemonProcess(config, port)
    try:
        _wait_purging(tmp_path, daemon)
        holder = _owner(daemon.proc.pid)
        one = _start_apply(config, "--rule", "lab-results")
        one_out, one_err = one.communicate(timeout=60)
        every = _start_apply(config, "--json")
        every_out, every_err = every.communicate(timeout=60)
        assert _rows(tmp_path) > BIG // 2, "the daemon's purge ended too soon"
        fast_deletes(tmp_path / "lims.db")
        code, _ = daemon.stop()
    finally:
        daemon.close()
    assert code == 0, daemon.log
    # The rule alone: not run, exit 1 (every selected rule failed), the holder named.
    assert one.returncode == 1, one_out + one_err
    assert f"rule lab-results: not run: {holder} is running it" in one_err
    line = next(x for x in one_out.splitlines() if x.startswith("lab-results"))
    assert line.split()[1] == "busy" and line.endswith(f"not run: held by {holder}")
    # Every rule: the free one runs, the held one does not; partial, exit 4.
    assert every.returncode == 4, every_out + every_err
    assert f"rule lab-results: not run: {holder} is running it" in every_err
    results = {r["rule"]: (r["result"], r["run_id"]) for r in json.loads(every_out)}
    assert results["lab-results"] == ("busy", None)
    assert results["transfer-exports"][0] == "success"
    # Only the daemon purged the table: one entry, from its run, counting every row gone.
    purges = _purges(tmp_path)
    assert [owner for _, owner in purges] == [holder]
    assert purges[0][0]["count"] == BIG - _rows(tmp_path)
    applies = {_owner(one.pid), _owner(every.pid)}
    lab_runs = _query(tmp_path, "SELECT owner FROM run WHERE rule = 'lab-results'")
    assert not applies & {r.owner for r in lab_runs}


def test_apply_releases_its_lease_and_a_daemon_takes_the_next_slot(tmp_path: Path) -> None:
    config, port = _setup(tmp_path, 100, "every 1h")
    applied = _start_apply(config, "--rule", "lab-results")
    out, err = applied.communicate(timeout=60)
    assert applied.returncode == 0, out + err
    assert _rows(tmp_path) == 50
    # The lease was this apply's, and is released.
    assert _lease(tmp_path) == (_owner(applied.pid), None)
    daemon = DaemonProcess(config, port)
    try:
        daemon.wait_http()
        daemon.wait_metric(
            "retentiond_rule_runs_total", lambda v: v == 1, rule="lab-results", result="success"
        )
        assert daemon.stop()[0] == 0
    finally:
        daemon.close()
    purges = _purges(tmp_path)
    assert [(e["count"], owner) for e, owner in purges] == [
        (50, _owner(applied.pid)),
        (0, _owner(daemon.proc.pid)),
    ]


def test_a_run_longer_than_its_lease_keeps_it_and_sigterm_releases_it(tmp_path: Path) -> None:
    # "every 10s": a lease of 5 s, renewed every third of it while the run goes on.
    config, _ = _setup(tmp_path, BIG, "every 10s")
    slow_deletes(tmp_path / "lims.db")
    first = _start_apply(config, "--rule", "lab-results")
    try:
        _wait_purging(tmp_path, first)
        owner, first_expiry = _lease(tmp_path)
        assert owner == _owner(first.pid) and first_expiry is not None
        time.sleep(max(0.0, (first_expiry - datetime.now(UTC)).total_seconds()) + 1.5)
        assert first.poll() is None and _rows(tmp_path) > BIG // 2, "make the purge longer"
        owner, expiry = _lease(tmp_path)
        assert owner == _owner(first.pid)
        assert expiry is not None and expiry > datetime.now(UTC) > first_expiry
        # Past the first expiry, the lease still keeps a second apply out.
        second = _start_apply(config, "--rule", "lab-results")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 1, out + err
        assert f"rule lab-results: not run: {_owner(first.pid)} is running it" in err
        assert first.poll() is None, "make the purge longer"
        fast_deletes(tmp_path / "lims.db")
        stopped = time.monotonic()
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert time.monotonic() - stopped < 5
    assert first.returncode == 143, out + err
    assert "stopped by SIGTERM" in err
    # The run ended after its batch and was recorded; the lease is given back.
    assert _lease(tmp_path) == (_owner(first.pid), None)
    left = _rows(tmp_path)
    assert BIG // 2 < left < BIG
    purges = _purges(tmp_path)
    assert [(e["count"], owner) for e, owner in purges] == [(BIG - left, _owner(first.pid))]
    assert not _query(tmp_path, "SELECT run_id FROM run WHERE status <> 'done'")
    verify = cli(config, "ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
