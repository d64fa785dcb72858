"""Every kind of rule under the daemon: rows, files and sealed copies, each on its own counter."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.daemon_support import (
    ALL_KINDS,
    SHRED_RULE,
    DaemonProcess,
    cli,
    free_port,
    seal,
    write_daemon_config,
)

BODY = (
    ALL_KINDS
    + """
[[holds]]
rule = "transfer-exports"
path = "audit/"
reason = "inspection in progress"
"""
)


def test_rows_files_and_copies_feed_their_own_counters(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with sqlite3.connect(tmp_path / "lims.db") as conn:
        conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, validated_at TIMESTAMP)")
        conn.executemany(
            "INSERT INTO results VALUES (?, ?)",
            (
                (i, (now - timedelta(days=400 if i < 4 else 1)).replace(tzinfo=None).isoformat(" "))
                for i in range(10)
            ),
        )
    transfer = tmp_path / "transfer"
    (transfer / "audit").mkdir(parents=True)
    old = time.time() - 40 * 86400
    for name in ("a.csv", "b.csv", "audit/kept.csv", "young.csv"):
        path = transfer / name
        path.write_text("patient;result\n")
        if name != "young.csv":
            os.utime(path, (old, old))
    port = free_port()
    body = BODY.format(directory=tmp_path) + SHRED_RULE.format(name="sealed-copies")
    config = write_daemon_config(tmp_path, body, port=port)
    assert cli(config, "init").returncode == 0
    seal(config, tmp_path / "dump.age", expires="1s")
    time.sleep(1.1)

    daemon = DaemonProcess(config, port)
    try:
        daemon.wait_http()
        daemon.wait_metric("retentiond_rows_deleted_total", lambda v: v == 4, rule="lab-results")
        daemon.wait_metric(
            "retentiond_files_deleted_total", lambda v: v == 2, rule="transfer-exports"
        )
        daemon.wait_metric(
            "retentiond_copies_shredded_total", lambda v: v == 1, rule="sealed-copies"
        )
        daemon.wait_metric("retentiond_rule_held_items", lambda v: v == 1, rule="transfer-exports")
        for rule in ("lab-results", "transfer-exports", "sealed-copies"):
            assert daemon.metric("retentiond_rule_overdue_items", rule=rule) == 0
            assert daemon.metric("retentiond_bytes_deleted_total", rule=rule) is not None
        # Each rule feeds only the counter of its kind.
        assert daemon.metric("retentiond_rows_deleted_total", rule="transfer-exports") is None
        assert daemon.metric("retentiond_files_deleted_total", rule="sealed-copies") is None
        assert daemon.stop()[0] == 0
    finally:
        daemon.close()
    assert sorted(p.name for p in transfer.rglob("*.csv")) == ["kept.csv", "young.csv"]
    with sqlite3.connect(tmp_path / "lims.db") as conn:
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 6
    assert not (tmp_path / "dump.age").exists()
