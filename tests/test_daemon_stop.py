"""SIGTERM in the middle of a purge, and a failing rule retried at its next slot."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa

from tests.configs import lab_results_rule, lims_store
from tests.daemon_support import (
    DaemonProcess,
    cli,
    free_port,
    lab_results_sqlite,
    slow_deletes,
    write_daemon_config,
)


def _lab_rule(db: Path) -> str:
    """The `lims` store on the SQLite database `db` and its lab-results rule."""
    return lims_store(f"sqlite:///{db}") + lab_results_rule(max_fraction=0.9)


def _count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])


def _ledger(state_db: Path) -> list[dict[str, object]]:
    engine = sa.create_engine(f"sqlite:///{state_db}")
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT entry FROM ledger_entry ORDER BY seq")
            rows: sa.ScalarResult[str] = conn.execute(query).scalars()
            return [json.loads(r) for r in rows]
    finally:
        engine.dispose()


def test_sigterm_ends_the_batch_records_it_and_exits_quickly(tmp_path: Path) -> None:
    db = tmp_path / "lims.db"
    rows = 300_000
    lab_results_sqlite(db, rows)
    slow_deletes(db)  # the purge must still be running when the test acts
    port = free_port()
    config = write_daemon_config(
        tmp_path, _lab_rule(db), port=port, daemon_extra="batch_budget_ms = 20"
    )
    assert cli(config, "init").returncode == 0
    daemon = DaemonProcess(config, port)
    try:
        deadline = time.monotonic() + 60
        while _count(db) == rows:  # wait for the purge to be under way
            assert time.monotonic() < deadline, daemon.log
            assert daemon.proc.poll() is None, daemon.log
            time.sleep(0.05)
        # `status` shows which daemon is running the rule.
        status = json.loads(cli(config, "status", "--json").stdout)
        assert status["rules"][0]["running_on"].endswith(f":{daemon.proc.pid}")
        code, seconds = daemon.stop()
    finally:
        daemon.close()
    assert code == 0, daemon.log
    assert seconds < 5
    left = _count(db)
    removed = rows - left
    assert 0 < removed < rows // 2, "the purge was not interrupted; make the table bigger"
    # The interrupted run is in the ledger with exactly what it removed; the ledger verifies.
    purges = [e for e in _ledger(tmp_path / "state.db") if e["kind"] == "purge"]
    assert len(purges) == 1
    assert purges[0]["count"] == removed
    verify = cli(config, "ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Only expired rows went.
    with sqlite3.connect(db) as conn:
        assert (
            conn.execute("SELECT count(*) FROM results WHERE id % 2 = 1").fetchone()[0] == rows // 2
        )


def test_a_failing_rule_is_retried_at_its_next_slot(tmp_path: Path) -> None:
    db = tmp_path / "lims.db"
    sqlite3.connect(db).close()  # the table does not exist yet
    port = free_port()
    config = write_daemon_config(tmp_path, _lab_rule(db), port=port)
    assert cli(config, "init").returncode == 0
    daemon = DaemonProcess(config, port)
    try:
        daemon.wait_http()
        # At least one failure: a start just before a slot boundary can fail twice at once.
        daemon.wait_metric(
            "retentiond_rule_runs_total", lambda v: v >= 1, rule="lab-results", result="failure"
        )
        daemon.wait_metric(
            "retentiond_rule_last_result", lambda v: v == 1, rule="lab-results", result="failure"
        )
        errors = [e for e in _ledger(tmp_path / "state.db") if e["kind"] == "error"]
        assert errors and {e["rule"] for e in errors} == {"lab-results"}
        lab_results_sqlite(db, 100)  # the admin fixes it; the next slot (10 s at most) succeeds
        daemon.wait_metric(
            "retentiond_rows_deleted_total", lambda v: v == 50, timeout=20, rule="lab-results"
        )
        # The gauges follow rule_state, read again by the main loop right after the run.
        daemon.wait_metric(
            "retentiond_rule_last_result", lambda v: v == 1, rule="lab-results", result="success"
        )
        assert (
            daemon.metric("retentiond_rule_last_result", rule="lab-results", result="failure") == 0
        )
        assert daemon.metric("retentiond_rule_last_success_timestamp_seconds", rule="lab-results")
        assert _count(db) == 50
        assert daemon.stop()[0] == 0
    finally:
        daemon.close()


def test_a_run_killed_mid_purge_is_reconciled_at_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "lims.db"
    rows = 300_000
    lab_results_sqlite(db, rows)
    slow_deletes(db)  # the purge must still be running when the test acts
    port = free_port()
    config = write_daemon_config(
        tmp_path,
        _lab_rule(db),
        port=port,
        schedule="every 1h",  # the restarted daemon owes no new slot: only the settling is seen
        daemon_extra="batch_budget_ms = 20",
    )
    assert cli(config, "init").returncode == 0
    crashed = DaemonProcess(config, port)
    try:
        deadline = time.monotonic() + 60
        while _count(db) == rows:
            assert time.monotonic() < deadline and crashed.proc.poll() is None, crashed.log
            time.sleep(0.05)
        crashed.kill()
    finally:
        crashed.close()
    removed = rows - _count(db)
    assert 0 < removed < rows // 2
    assert not [e for e in _ledger(tmp_path / "state.db") if e["kind"] == "purge"]

    restarted = DaemonProcess(config, port)
    try:
        restarted.wait_http()  # READY comes after the reconciliation
        purges = [e for e in _ledger(tmp_path / "state.db") if e["kind"] == "purge"]
        assert len(purges) == 1 and purges[0]["interrupted"] is True
        # Every row that went is counted, including the batch the kill cut short.
        assert purges[0]["count"] == removed
        assert "interrupted run(s) reconciled" in restarted.log
        assert restarted.stop()[0] == 0
    finally:
        restarted.close()
    assert _count(db) == rows - removed  # the restart deleted nothing more
    verify = cli(config, "ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
