"""Database servers restarted during a purge: the target's server, and the state database's server.

Each trial refills a table of 300,000 lab results (held, young and expired rows), starts
`retentiond apply` as a real process, and at a seeded random moment of the run restarts the
throwaway server under it: PostgreSQL with `pg_ctl restart -m immediate` (a crash) or `-m fast`,
MariaDB with kill -9 or a clean stop, then start. The run may finish or fail; it must not crash.
Then `apply` runs again, with no hand editing of any state, and must finish the purge. After every
trial: the ledger verifies; its counts add up to exactly the rows that disappeared; every held and
young row is present; no expired unheld row is left.
"""

from __future__ import annotations

import functools
import os
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.configs import write_config
from tests.fault_support import SEED, apply_in_process, check, cli, record
from tests.fault_support import verify_in_process as verify
from tests.outage_support import (
    LabTable,
    LoggedKiller,
    journal_cover,
    last_run_seconds,
    recorded,
    rule_body,
)
from tests.server_support import ScratchMariadb, ScratchPostgres

ROWS = 300_000
TRIALS = int(os.environ.get("RETENTIOND_TEST_RESTART_TRIALS", "2"))  # per server and placement
pytestmark = pytest.mark.slow


def _trials(
    area: str,
    tmp_path: Path,
    lab: LabTable,
    state_url: str,
    restarts: list[Callable[[], None]],
) -> None:
    """Calibrate one run, then one trial per restart in `restarts`; the invariants after each."""
    config = write_config(tmp_path / "etc", rule_body(lab.url), state_url=state_url)
    init = cli(config, "init")
    assert init.returncode == 0, init.stderr
    rng = random.Random(f"{SEED}-{area}")
    lab.fill()
    # One undisturbed run, in this process (no interpreter to start), measures a run.
    check(area, apply_in_process(config) == 0, (area, "calibration run failed"))
    seconds = last_run_seconds(state_url)
    check(area, recorded(state_url) == lab.gone() == lab.expired_unheld, (area, "calibration"))
    killer = LoggedKiller(config, state_url, {}, rng, seconds, log=tmp_path / "apply.log")
    mid_run = 0
    for trial, restart in enumerate(restarts):
        lab.fill()
        before = recorded(state_url)
        child = killer.start()
        killer.wait_started(child)
        # Within the first 80% of a run: a restart after the run would test nothing.
        time.sleep(rng.uniform(0, 0.8 * (killer.run_seconds or 1.0)))
        mid_run += child.poll() is None
        restart()
        record(area, faults=1, trials=1)
        child.wait(timeout=120)
        what = (area, trial, killer.stderr[-2000:])
        # A run cut by the restart finishes (retried) or fails cleanly: an error line, no crash.
        check(area, child.returncode in (0, 1), (*what, "exit", child.returncode))
        check(area, "Traceback" not in killer.stderr, what)
        # Before the next run: every row gone is already covered by a journal record.
        check(area, lab.gone() <= journal_cover(state_url) - before, (*what, "unrecorded rows"))
        again = apply_in_process(config)
        check(area, again == 0, (*what, "the next apply exited", again))
        check(area, verify(config) == 0, (*what, "ledger verify failed"))
        counted, gone = recorded(state_url) - before, lab.gone()
        check(area, counted == gone, (*what, "ledger", counted, "gone", gone))
        check(area, lab.protected(), (*what, "a held or young row is missing"))
        check(area, lab.expired_unheld_left() == 0, (*what, "the purge was not finished"))
    # Most restarts must land inside a run, or the trials would test nothing.
    assert mid_run >= (len(restarts) + 1) // 2, (area, mid_run, killer.run_seconds)
    record(area, mid_run=mid_run)
    lab.dispose()


def _modes(
    server: ScratchPostgres | ScratchMariadb, names: tuple[str, str]
) -> list[Callable[[], None]]:
    """TRIALS restarts of `server`, alternating between the two ways named."""
    chosen = [names[i % 2] for i in range(TRIALS)]
    return [functools.partial(server.restart, how) for how in chosen]


def test_postgres_restarted_during_a_purge(
    tmp_path: Path, scratch_postgres: ScratchPostgres
) -> None:
    lab = LabTable(scratch_postgres.create_database(f"lab_{secrets.token_hex(4)}"), ROWS)
    restarts = _modes(scratch_postgres, ("immediate", "fast"))
    _trials("postgres restarted", tmp_path, lab, f"sqlite:///{tmp_path / 's.db'}", restarts)


def test_mariadb_restarted_during_a_purge(tmp_path: Path, scratch_mariadb: ScratchMariadb) -> None:
    lab = LabTable(scratch_mariadb.create_database(f"lab_{secrets.token_hex(4)}"), ROWS)
    restarts = _modes(scratch_mariadb, ("kill", "stop"))
    _trials("mariadb restarted", tmp_path, lab, f"sqlite:///{tmp_path / 's.db'}", restarts)


@pytest.mark.parametrize("where", ["own database", "target database"])
def test_postgres_state_database_restarted_during_a_purge(
    tmp_path: Path, scratch_postgres: ScratchPostgres, where: str
) -> None:
    # The state database on the restarted cluster: in a database of its own (each batch written
    # ahead, then completed), or in the target database (each batch recorded in its transaction).
    lab = LabTable(scratch_postgres.create_database(f"lab_{secrets.token_hex(4)}"), ROWS)
    state_url = (
        scratch_postgres.create_database(f"state_{secrets.token_hex(4)}")
        if where == "own database"
        else lab.url
    )
    # In the target database a single trial, to keep the suite short.
    restarts = _modes(scratch_postgres, ("immediate", "fast"))
    restarts = restarts if where == "own database" else restarts[:1]
    _trials(f"state db restarted (postgres, {where})", tmp_path, lab, state_url, restarts)
