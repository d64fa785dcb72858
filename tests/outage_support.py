"""A lab-results table to purge while a database goes away, and the invariants checked afterwards.

Even ids are 90 days old (expired), odd ids 3 days old (young); patient HELD (id % 50) is held, and
all its rows are expired. After any fault and the runs that follow it: the held and young rows are
all present, the ledger's counts add up to exactly the rows that disappeared, and once a run has
finished the purge no expired unheld row is left.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from tests.fault_support import ROOT, Killer, child_env, counted

HELD = 8
RULE = "lab-results"


def rule_body(url: str, table: str = "results", schedule: str = "") -> str:
    """A store at `url` and the rule purging `table`, with patient HELD held."""
    when = f'schedule = "{schedule}"' if schedule else ""
    return f"""
[stores.lims]
kind = "sql"
url = "{url}"

[[rules]]
name = "{RULE}"
store = "lims"
table = "{table}"
age_column = "validated_at"
retain = "30d"
action = "delete"
max_fraction = 1.0
{when}

[[holds]]
rule = "{RULE}"
where = {{ patient_id = [{HELD}] }}
reason = "court case 2026-117"
"""


@dataclass
class LabTable:
    """The `results` table of one target database and what is known of its rows."""

    url: str
    size: int  # rows after a fill
    engine: Engine = field(init=False)
    rows: int = field(init=False)  # rows put in since the fill
    expired_unheld: int = field(init=False)
    protected_rows: int = field(init=False)

    def __post_init__(self) -> None:
        # No pool: the server under the table is restarted and killed between queries.
        self.engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self._count_rows(self.size)

    def _count_rows(self, rows: int) -> None:
        self.rows = rows
        self.expired_unheld = sum(1 for i in range(1, rows + 1) if i % 2 == 0 and i % 50 != HELD)
        self.protected_rows = rows - self.expired_unheld

    @property
    def dialect(self) -> str:
        """postgresql, mysql or sqlite."""
        return self.engine.dialect.name

    def _ages(self) -> tuple[str, str, str]:
        if self.dialect == "postgresql":
            return "timestamptz", "now() - interval '90 day'", "now() - interval '3 day'"
        if self.dialect == "mysql":
            return "datetime", "now() - interval 90 day", "now() - interval 3 day"
        return "timestamp", "datetime('now', '-90 days')", "datetime('now', '-3 days')"

    def fill(self) -> None:
        """(Re)create the table with every row in place."""
        kind, old, young = self._ages()
        self._count_rows(self.size)
        if self.dialect == "postgresql":
            series = f"generate_series(1, {self.size}) AS s(i)"
        elif self.dialect == "mysql":
            series = f"(SELECT seq AS i FROM seq_1_to_{self.size}) AS s"
        else:
            series = (
                f"(WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
                f"WHERE i < {self.size}) SELECT i FROM c) AS s"
            )
        with self.engine.connect() as conn:
            conn.execute(text("DROP TABLE IF EXISTS results"))
            conn.execute(
                text(
                    f"CREATE TABLE results (id integer PRIMARY KEY, patient_id integer, "
                    f"validated_at {kind} NOT NULL, comment varchar(20))"
                )
            )
            conn.execute(
                text(
                    f"INSERT INTO results SELECT i, i % 50, CASE WHEN i % 2 = 0 THEN {old} "
                    f"ELSE {young} END, 'note' FROM {series}"
                )
            )

    def grow(self, count: int) -> None:
        """Append `count` more rows of the same pattern (even ids expired, patient id % 50)."""
        _, old, young = self._ages()
        first = self.rows + 1
        values = ", ".join(
            f"({i}, {i % 50}, {old if i % 2 == 0 else young}, 'note')"
            for i in range(first, first + count)
        )
        with self.engine.connect() as conn:
            conn.execute(text(f"INSERT INTO results VALUES {values}"))
        self._count_rows(self.rows + count)

    def count(self, where: str = "1 = 1") -> int:
        """Rows of the table matching `where`."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(text(f"SELECT count(*) FROM results WHERE {where}")).scalar_one()
            )

    def gone(self) -> int:
        """Rows that disappeared since the last fill."""
        return self.rows - self.count()

    def expired_unheld_left(self) -> int:
        """Expired rows outside the hold that are still there."""
        return self.count(f"id % 2 = 0 AND patient_id <> {HELD}")

    def protected(self) -> bool:
        """Every young row and every held row is present."""
        return self.count(f"id % 2 = 1 OR patient_id = {HELD}") == self.protected_rows

    def dispose(self) -> None:
        """Close the engine."""
        self.engine.dispose()


@dataclass
class LoggedKiller(Killer):
    """A Killer whose `retentiond apply` children keep their stderr, to check what a user saw."""

    log: Path = Path("/dev/null")

    def start(self, args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """A new `retentiond apply` child, its stderr in `log`."""
        with open(self.log, "wb") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "retentiond", "-c", str(self.config), "apply", *args],
                env=child_env(self.env),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    @property
    def stderr(self) -> str:
        """What the last child wrote to stderr."""
        return self.log.read_text(errors="replace")


def recorded(state_url: str, rule: str = RULE) -> int:
    """Rows the ledger says `rule` removed."""
    return counted(state_url, rule)


def journal_cover(state_url: str, rule: str = RULE) -> int:
    """An upper bound of the rows that may be gone: the ledger's counts plus every batch recorded
    for a run not closed yet (written ahead or completed, not yet in a ledger entry)."""
    engine = create_engine(state_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            open_items: int = conn.execute(
                text(
                    "SELECT coalesce(sum(b.items), 0) FROM run_batch b JOIN run r "
                    "ON r.run_id = b.run_id WHERE r.rule = :rule AND r.ledger_seq IS NULL"
                ),
                {"rule": rule},
            ).scalar_one()
    finally:
        engine.dispose()
    return counted(state_url, rule) + int(open_items)


def state_engine(state_url: str) -> Engine:
    """An engine on the state database without a pool (its server may come and go)."""
    return create_engine(state_url, poolclass=NullPool)


def last_run_seconds(state_url: str) -> float:
    """How long the newest run took, from its start to its ledger entry."""
    engine = state_engine(state_url)
    try:
        with engine.connect() as conn:
            began, ended = conn.execute(
                text("SELECT started_at, finished_at FROM run ORDER BY started_at DESC LIMIT 1")
            ).one()
    finally:
        engine.dispose()
    if isinstance(began, str):  # SQLite through a bare engine: ISO text
        began, ended = datetime.fromisoformat(began), datetime.fromisoformat(ended)
    return float((ended - began).total_seconds())
