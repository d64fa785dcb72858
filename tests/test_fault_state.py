"""The state database locked, stopped or out of disk while rules run.

- SQLite state database locked by another process (`BEGIN EXCLUSIVE`) for a few seconds at a random
  moment of `retentiond apply`: less than SQLite's busy timeout, so the run waits and finishes.
- PostgreSQL state database (a throwaway cluster) stopped for a few seconds at a random moment of a
  run of the daemon, then started again.
- The disk of a SQLite state database full (a small tmpfs), before and during `retentiond apply`.

Expected every time: no crash (the daemon does not exit; `apply` exits 0 or 1), a failure said in one
clear line, never a traceback; no row deleted without its journal record; once the state database
is back, the daemon recovers by itself (its next scheduled run reconciles the interrupted one and
succeeds), or for `apply` the next run does; the ledger verifies and its counts add up to exactly
the rows that went; every held and young row is still there.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.configs import write_config
from tests.daemon_support import DaemonProcess, free_port, write_daemon_config
from tests.fault_support import SEED, apply_in_process, check, cli, record
from tests.fault_support import verify_in_process as verify
from tests.outage_support import (
    RULE,
    LabTable,
    LoggedKiller,
    journal_cover,
    last_run_seconds,
    recorded,
    rule_body,
    state_engine,
)
from tests.server_support import ScratchPostgres, small_tmpfs

LOCK_SECONDS = 3.0  # less than retentiond's SQLite busy timeout (10 s, state/db.py)
TRIALS = int(os.environ.get("RETENTIOND_TEST_STATE_TRIALS", "2"))
pytestmark = pytest.mark.slow

# Started ahead, so that the lock is taken the moment it is told to, not after an interpreter starts.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
print("ready", flush=True)
sys.stdin.readline()
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def _runs(state_url: str, where: str, **params: object) -> int:
    """Runs of the rule matching `where`."""
    engine = state_engine(state_url)
    try:
        with engine.connect() as conn:
            query = text(f"SELECT count(*) FROM run WHERE rule = :rule AND {where}")
            return int(conn.execute(query, {"rule": RULE, **params}).scalar_one())
    finally:
        engine.dispose()


def _after_apply(
    area: str, what: tuple[object, ...], config: Path, lab: LabTable, state_url: str, before: int
) -> None:
    """The next `apply` finishes the purge; the ledger verifies and counts what went."""
    check(area, apply_in_process(config) == 0, (*what, "the next apply failed"))
    check(area, verify(config) == 0, (*what, "ledger verify failed"))
    counted, gone = recorded(state_url) - before, lab.gone()
    check(area, counted == gone, (*what, "ledger", counted, "gone", gone))
    check(area, lab.protected(), (*what, "a held or young row is missing"))
    check(area, lab.expired_unheld_left() == 0, (*what, "the purge was not finished"))


def test_sqlite_state_database_locked_by_another_process(
    tmp_path: Path, scratch_postgres: ScratchPostgres
) -> None:
    area = "state db locked (sqlite)"
    # A run of most of a second: the lock falls in its first quarter of a second.
    lab = LabTable(scratch_postgres.create_database(f"lab_{secrets.token_hex(4)}"), 300_000)
    state_file = tmp_path / "state.db"
    state_url = f"sqlite:///{state_file}"
    config = write_config(tmp_path / "etc", rule_body(lab.url), state_url=state_url)
    assert cli(config, "init").returncode == 0
    rng = random.Random(f"{SEED}-{area}")
    killer = LoggedKiller(config, state_url, {}, rng, log=tmp_path / "apply.log")
    for trial, seconds in enumerate((LOCK_SECONDS,) * TRIALS):
        lab.fill()
        before = recorded(state_url)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(state_file), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdin is not None and locker.stdout is not None
        assert locker.stdout.readline().strip() == "ready"
        child = killer.start()
        killer.wait_started(child)
        time.sleep(rng.uniform(0, 0.25))
        locker.stdin.write("go\n")
        locker.stdin.flush()
        assert locker.stdout.readline().strip() == "locked"
        record(area, faults=1, trials=1)
        check(area, child.poll() is None, (area, trial, "the run ended before the lock"))
        child.wait(timeout=120)
        locker.wait(timeout=60)
        what = (area, trial, seconds, killer.stderr[-2000:])
        check(area, "Traceback" not in killer.stderr, what)
        # Every write waited for the lock (less than the busy timeout): the run finished.
        check(area, child.returncode == 0, (*what, child.returncode))
        gone = lab.gone()
        check(area, gone <= journal_cover(state_url) - before, (*what, "unrecorded", gone))
        _after_apply(area, what, config, lab, state_url, before)
    lab.dispose()


def test_postgres_state_database_stopped_for_a_while(
    tmp_path: Path, scratch_postgres: ScratchPostgres
) -> None:
    area = "state db down (postgres)"
    # A first run of a second or two, for the stop to fall in.
    lab = LabTable(f"sqlite:///{tmp_path / 'lims.db'}", 300_000)
    lab.fill()
    state_url = scratch_postgres.create_database(f"state_{secrets.token_hex(4)}")
    port = free_port()
    config = write_daemon_config(
        tmp_path / "etc", rule_body(lab.url), port=port, schedule="every 10s", state_url=state_url
    )
    assert cli(config, "init").returncode == 0
    daemon = DaemonProcess(config, port)
    rng = random.Random(f"{SEED}-{area}")
    try:
        daemon.wait_http()
        # The first run starts at once (its slot is owed); the cluster stops at a random moment.
        _wait(lambda: _runs(state_url, "status = 'running'") > 0, 30, "a run in progress")
        time.sleep(rng.uniform(0, 0.4))
        scratch_postgres.stop("fast")
        record(area, faults=1, trials=1)
        down_until = time.monotonic() + 4.0
        while time.monotonic() < down_until:
            check(area, daemon.proc.poll() is None, ("the daemon exited", daemon.log))
            lab.grow(100)  # work for the runs to come
            time.sleep(0.25)
        # The loop goes on meanwhile: /healthz answers and says healthy.
        check(area, daemon.get("/healthz")[0] == 200, ("healthz", daemon.log))
        check(area, "the state database failed" in daemon.log, daemon.log)
        scratch_postgres.start()
        back = datetime.now(UTC)
        gone = lab.gone()  # read before the journal: what is recorded only grows
        check(area, gone <= journal_cover(state_url), ("unrecorded rows", gone))
        # By itself: a scheduled run after the outage succeeds, and no run is left open.
        _wait(
            lambda: (
                _runs(state_url, "status = 'done' AND started_at > :t", t=back) > 0
                and _runs(state_url, "ledger_seq IS NULL") == 0
            ),
            30,
            f"recovery; daemon log:\n{daemon.log}",
        )
        check(area, daemon.proc.poll() is None, ("the daemon exited", daemon.log))
        # The stop did cut a run: it was reconciled (or recorded as failed) once the cluster was back.
        cut = _runs(state_url, "status IN ('reconciled', 'failed')")
        check(area, cut >= 1, ("no run was interrupted", daemon.log))
        code, _ = daemon.stop(timeout=30)
        check(area, code == 0, ("daemon exit", code, daemon.log))
        check(area, "Traceback" not in daemon.log, daemon.log)
        check(area, verify(config) == 0, "ledger verify failed")
        counted, gone = recorded(state_url), lab.gone()
        check(area, counted == gone, ("ledger", counted, "gone", gone, daemon.log))
        check(area, lab.protected(), "a held or young row is missing")
        check(area, lab.expired_unheld_left() == 0, "the purge was not finished")
    finally:
        if not (scratch_postgres.data / "postmaster.pid").exists():
            scratch_postgres.start()  # for the tests that follow
        daemon.close()
        lab.dispose()


def _fill_up(directory: Path) -> Path:
    """Write into `directory` until its file system is full; the file that took the space."""
    filler = directory / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:  # unbuffered: nothing left to flush at close
        try:
            while out.write(block):
                pass
        except OSError:
            pass
    return filler


def test_state_database_disk_full(tmp_path: Path) -> None:
    area = "state disk full"
    lab = LabTable(f"sqlite:///{tmp_path / 'lims.db'}", 60_000)
    rng = random.Random(f"{SEED}-{area}")
    # Room for the WAL to reach its checkpoint size (1000 pages) on the undisturbed run.
    with small_tmpfs(16 * 1024) as disk:
        state_url = f"sqlite:///{disk / 'state.db'}"
        config = write_config(tmp_path / "etc", rule_body(lab.url), state_url=state_url)
        init = cli(config, "init")
        assert init.returncode == 0, init.stderr
        killer = LoggedKiller(config, state_url, {}, rng, log=tmp_path / "apply.log")
        lab.fill()
        assert apply_in_process(config) == 0
        seconds = last_run_seconds(state_url)
        # Full before the run, then full at random moments of a run.
        for trial, moment in enumerate([None, *(rng.uniform(0, 0.8 * seconds) for _ in range(2))]):
            lab.fill()
            before = recorded(state_url)
            # An empty WAL file: the run's writes need new blocks of the disk, as on a busy one.
            with contextlib.closing(sqlite3.connect(disk / "state.db")) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            filler: Path | None = None
            if moment is None:
                filler = _fill_up(disk)
            child = killer.start()
            if moment is not None:
                killer.wait_started(child)
                time.sleep(moment)
                filler = _fill_up(disk)
            record(area, faults=1, trials=1)
            child.wait(timeout=120)
            what = (area, trial, killer.stderr[-2000:])
            check(area, "Traceback" not in killer.stderr, what)
            if child.returncode != 0:
                # The run could not be recorded: it says so, in words, and exits 1.
                check(area, child.returncode == 1, (*what, child.returncode))
                check(area, "the disk is full" in killer.stderr, what)
            else:
                check(area, moment is not None, (*what, "a run on a full disk succeeded"))
            gone = lab.gone()
            check(area, gone <= journal_cover(state_url) - before, (*what, "unrecorded", gone))
            assert filler is not None
            filler.unlink()
            # Space is back: the next run reconciles the interrupted one and finishes the purge.
            _after_apply(area, what, config, lab, state_url, before)
    lab.dispose()
