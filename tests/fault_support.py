"""Shared pieces of the fault, hostile-input and leak tests: the tally behind the README table,
the command line as a user runs it, ledger reading, and a kill -9 harness for `retentiond apply`.

The tally is written only when RETENTIOND_TEST_RELIABILITY_DIR names a directory (set by
`python -m tests.fault_report`); each process appends JSON lines to its own file there.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.conftest import run_cli

TALLY_ENV = "RETENTIOND_TEST_RELIABILITY_DIR"
SEED = int(os.environ.get("RETENTIOND_TEST_SEED", "9"))
ROOT = Path(__file__).resolve().parent.parent


def record(area: str, **counts: int) -> None:
    """Add counts (faults, trials, checks, violations, bad_inputs, leaks, scanned) to the tally."""
    directory = os.environ.get(TALLY_ENV)
    if not directory:
        return
    path = Path(directory) / f"tally-{os.getpid()}.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"area": area, **counts}) + "\n")


def check(area: str, ok: bool, message: object = "") -> None:
    """One invariant check: counted in the tally (as a violation when false), then asserted."""
    record(area, checks=1, violations=0 if ok else 1)
    assert ok, message


def no_traceback(done: subprocess.CompletedProcess[Any]) -> bool:
    """True when a finished command printed no Python traceback."""
    err = done.stderr if isinstance(done.stderr, str) else done.stderr.decode(errors="replace")
    return "Traceback (most recent call last)" not in err


def cli(config: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`retentiond -c CONFIG ARGS` as a user runs it (from the project root)."""
    kw.setdefault("cwd", ROOT)
    return run_cli("-c", str(config), *args, **kw)


def entries(state_url: str) -> list[dict[str, Any]]:
    """Every ledger entry, in sequence order."""
    engine = create_engine(state_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT entry FROM ledger_entry ORDER BY seq")).all()
    finally:
        engine.dispose()
    return [json.loads(e) for (e,) in rows]


def counted(state_url: str, rule: str, kinds: tuple[str, ...] = ("purge", "drop", "shred")) -> int:
    """Sum of the ledger counts of `rule` over entries of `kinds`."""
    return sum(
        int(e.get("count") or 0)
        for e in entries(state_url)
        if e.get("rule") == rule and e.get("kind") in kinds
    )


def verify_in_process(config: Path) -> int:
    """`retentiond ledger verify` in this process; its exit code (3 on tampering)."""
    from retentiond.commands import ledger as ledger_commands
    from retentiond.errors import RetentiondError

    try:
        return ledger_commands.verify(config, None, io.StringIO())
    except RetentiondError as exc:
        return exc.exit_code


def apply_in_process(config: Path, rule: str | None = None) -> int:
    """`retentiond apply` in this process (it reconciles interrupted runs first); its exit code."""
    from retentiond.commands.purge import apply
    from retentiond.errors import RetentiondError

    try:
        return apply(config, rule, False, io.StringIO())
    except RetentiondError as exc:
        return exc.exit_code


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command run by a user, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTIOND_")}
    env.update(extra or {})
    return env


def _running(state_url: str) -> bool:
    engine = create_engine(state_url)
    try:
        with engine.connect() as conn:
            return bool(
                conn.execute(text("SELECT count(*) FROM run WHERE status = 'running'")).scalar()
            )
    except Exception:  # the state database may be busy or not yet written
        return False
    finally:
        engine.dispose()


@dataclass
class KillStats:
    """What a series of kills did."""

    trials: int = 0
    mid_run: int = 0


@dataclass
class Killer:
    """Starts `retentiond apply` and kills it with SIGKILL a random moment after its run began.

    The first call runs to its end and measures the run, so that later kill times are drawn
    uniformly over a real run of this kind.
    """

    config: Path
    state_url: str
    env: dict[str, str]
    rng: random.Random
    run_seconds: float | None = None
    stats: KillStats | None = None

    def start(self, args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """A new `retentiond apply` child."""
        return subprocess.Popen(
            [sys.executable, "-m", "retentiond", "-c", str(self.config), "apply", *args],
            env=child_env(self.env),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_started(self, child: subprocess.Popen[bytes]) -> None:
        """Return once the child recorded its run as running (or exited)."""
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            if _running(self.state_url):
                return
            time.sleep(0.003)

    def calibrate(self, args: tuple[str, ...] = ()) -> float:
        """Run once to the end; the seconds from the run's start to the process's exit."""
        child = self.start(args)
        self.wait_started(child)
        began = time.monotonic()
        child.wait(timeout=120)
        self.run_seconds = max(0.05, time.monotonic() - began)
        return self.run_seconds

    def kill_once(
        self, args: tuple[str, ...] = (), during: Callable[[], None] | None = None
    ) -> bool:
        """Start, wait for the run, sleep a random part of a run, kill -9; True if it was alive."""
        assert self.run_seconds is not None, "calibrate first"
        stats = self.stats if self.stats is not None else KillStats()
        self.stats = stats
        child = self.start(args)
        self.wait_started(child)
        began = time.monotonic()
        time.sleep(self.rng.uniform(0, self.run_seconds))
        if during is not None:
            during()
        alive = child.poll() is None
        if alive:
            os.kill(child.pid, signal.SIGKILL)
        else:
            # Runs got faster than the calibrated one (the machine got quieter): draw the next
            # kill times over what a run takes now, or later trials would kill nothing.
            self.run_seconds = max(0.05, min(self.run_seconds, time.monotonic() - began) * 0.8)
        child.wait(timeout=60)
        stats.trials += 1
        stats.mid_run += int(alive)
        return alive
