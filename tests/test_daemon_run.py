"""`retentiond run` as a newcomer starts it: ready, purging, reloading, refusing, stopping."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import sqlalchemy as sa

from tests.daemon_support import (
    SHRED_RULE,
    DaemonProcess,
    NotifyListener,
    cli,
    free_port,
    seal,
    write_daemon_config,
)


def _entries(state_db: Path) -> list[dict[str, object]]:
    engine = sa.create_engine(f"sqlite:///{state_db}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT entry FROM ledger_entry ORDER BY seq")).scalars()
            return [json.loads(row) for row in rows]
    finally:
        engine.dispose()


def test_daemon_purges_reloads_refuses_and_stops(tmp_path: Path) -> None:
    port = free_port()
    config = write_daemon_config(tmp_path, SHRED_RULE.format(name="sealed-copies"), port=port)
    assert cli(config, "init").returncode == 0
    copies = [tmp_path / f"export-{i}.age" for i in range(3)]
    for copy in copies:
        seal(config, copy, expires="1s")
    time.sleep(1.1)  # every copy is past its deadline when the daemon starts

    listener = NotifyListener(tmp_path / "notify.sock")
    daemon = DaemonProcess(config, port, notify=listener.path)
    try:
        ready = listener.wait_for(lambda m: m.get("READY") == "1")
        assert "1 rules" in ready["STATUS"]
        # The slot missed while no daemon ran is run at start: the copies go without waiting.
        daemon.wait_metric(
            "retentiond_copies_shredded_total", lambda v: v == 3, rule="sealed-copies"
        )
        assert [c for c in copies if c.exists()] == []
        daemon.wait_metric("retentiond_rule_overdue_items", lambda v: v == 0, rule="sealed-copies")
        kinds = [e["kind"] for e in _entries(tmp_path / "state.db")]
        assert kinds.count("config") == 1 and "shred" in kinds

        status = json.loads(cli(config, "status", "--json").stdout)
        (rule,) = status["rules"]
        assert rule["rule"] == "sealed-copies"
        assert (rule["result"], rule["overdue_items"], rule["running_on"]) == ("success", 0, None)
        assert status["ledger"]["checkpoint_size"] is not None

        # A broken edit is refused: every error logged, the old config keeps running.
        good = config.read_text()
        config.write_text(good.replace('action = "shred"', 'action = "shred"\nretain = "10 years"'))
        daemon.signal(signal.SIGHUP)
        reloading = listener.wait_for(lambda m: m.get("RELOADING") == "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        daemon.wait_metric("retentiond_config_last_reload_successful", lambda v: v == 0)
        assert 'rules[0].retain: "10 years" is not a duration' in daemon.log
        assert daemon.proc.poll() is None
        assert daemon.metric("retentiond_rule_overdue_items", rule="sealed-copies") == 0

        # A valid edit is applied: the new rule runs at once, and the ledger records the change.
        config.write_text(good + SHRED_RULE.format(name="more-copies"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_metric("retentiond_config_last_reload_successful", lambda v: v == 1)
        # At least once: when the reload lands just before a slot boundary, the run made at once
        # and the next slot's run can both happen before the first scrape.
        daemon.wait_metric(
            "retentiond_rule_runs_total",
            lambda v: v >= 1,
            timeout=8.0,
            rule="more-copies",
            result="success",
        )
        configs = [e for e in _entries(tmp_path / "state.db") if e["kind"] == "config"]
        assert [e["action"] for e in configs] == ["load", "reload"]

        code, seconds = daemon.stop()
        assert code == 0
        assert seconds < 5
        listener.wait_for(lambda m: m.get("STOPPING") == "1")
        assert "Traceback" not in daemon.log
    finally:
        daemon.close()
        listener.close()
    verify = cli(config, "ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_daemon_refuses_to_start_on_a_broken_config(tmp_path: Path) -> None:
    port = free_port()
    body = SHRED_RULE.format(name="sealed-copies") + 'retain = "10 years"\n'
    config = write_daemon_config(tmp_path, body, port=port)
    done = cli(config, "run")
    assert done.returncode == 2
    assert 'config.toml: rules[0].retain: "10 years" is not a duration' in done.stderr


def test_daemon_refuses_to_start_before_init(tmp_path: Path) -> None:
    port = free_port()
    config = write_daemon_config(tmp_path, SHRED_RULE.format(name="sealed-copies"), port=port)
    done = cli(config, "run")
    assert done.returncode == 1
    assert "retentiond init" in done.stderr


def test_daemon_refuses_to_start_when_the_metrics_port_is_taken(tmp_path: Path) -> None:
    port = free_port()
    config = write_daemon_config(tmp_path, SHRED_RULE.format(name="sealed-copies"), port=port)
    assert cli(config, "init").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = cli(config, "run")
    assert done.returncode == 1
    assert f"metrics.listen: cannot serve on 127.0.0.1:{port}" in done.stderr
