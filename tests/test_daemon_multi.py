"""Two daemons on one PostgreSQL state database: no slot runs twice, a killed one is replaced."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.daemon_support import SHRED_RULE, DaemonProcess, cli, free_port, write_daemon_config

RULES = ("alpha", "bravo", "charlie", "delta")
INTERVAL = 10  # seconds: "every 10s", the shortest schedule


def _to_mid_slot() -> None:
    """Sleep to the middle of a slot, where no run is half written."""
    time.sleep(INTERVAL * 1.5 - time.time() % INTERVAL)


def _runs(state_url: str) -> list[tuple[str, str, int]]:
    """(rule, owner, slot) of every run recorded in the ledger, from its entries and runs."""
    engine = sa.create_engine(state_url)
    try:
        with engine.connect() as conn:
            entries = [
                json.loads(e)
                for e in conn.execute(sa.text("SELECT entry FROM ledger_entry")).scalars()
            ]
            owners = {
                row.run_id: (row.owner, row.started_at)
                for row in conn.execute(sa.text("SELECT run_id, owner, started_at FROM run"))
            }
    finally:
        engine.dispose()
    runs = []
    for entry in entries:
        if entry["kind"] != "shred" or entry["run_id"] not in owners:
            continue
        owner, started = owners[entry["run_id"]]
        runs.append((entry["rule"], owner, int(started.timestamp()) // INTERVAL))
    return runs


@pytest.mark.slow
def test_two_daemons_share_the_slots_and_survive_a_kill(tmp_path: Path, pg_database: str) -> None:
    body = "".join(SHRED_RULE.format(name=name) for name in RULES)
    config = write_daemon_config(tmp_path, body, port=1, state_url=pg_database)
    assert cli(config, "init").returncode == 0
    daemons = []
    for _ in range(2):
        port = free_port()
        env = {"RETENTIOND_METRICS__LISTEN": f"127.0.0.1:{port}"}
        daemons.append(DaemonProcess(config, port, env=env))
    first, second = daemons
    try:
        for daemon in daemons:
            daemon.wait_http()
        _to_mid_slot()  # the slot owed at start, and one more, have run
        before = _runs(pg_database)
        slots_before = {slot for _, _, slot in before}
        assert len(slots_before) >= 2, before
        first_pid = first.proc.pid
        first.kill()
        killed_at = time.time()
        _to_mid_slot()  # the next slot has run without the killed daemon
        runs = _runs(pg_database)
        assert second.proc.poll() is None, second.log
        code, _ = second.stop()
        assert code == 0
    finally:
        for daemon in daemons:
            daemon.close()

    # Every (rule, slot) ran exactly once across both daemons.
    per_slot = Counter((rule, slot) for rule, _, slot in runs)
    assert max(per_slot.values()) == 1, [k for k, n in per_slot.items() if n > 1]
    # Every rule ran at every slot the daemons were up for.
    for slot in {slot for _, _, slot in runs}:
        assert {rule for rule, _, s in runs if s == slot} == set(RULES), slot
    # The first slot after the kill (less than one interval later) ran every rule, all of them
    # on the survivor.
    after = [(rule, owner) for rule, owner, slot in runs if slot * INTERVAL > killed_at]
    assert {rule for rule, _ in after} == set(RULES)
    assert all(not owner.endswith(f":{first_pid}") for _, owner in after)
    assert "Traceback" not in second.log
