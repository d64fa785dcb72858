"""Shared set-up of the sealed-copy tests: an initialised workspace and the command line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from retentiond.commands.init import init
from retentiond.state.db import create_state_engine
from tests.configs import write_config

ROOT = Path(__file__).resolve().parent.parent
SHRED_RULE = """
[[rules]]
name = "sealed-copies"
action = "shred"
"""


@dataclass
class Workspace:
    """An initialised config, its state database and key file."""

    directory: Path
    config: Path
    engine: sa.Engine
    kek_file: Path

    def cli(
        self, *args: str, stdin: bytes | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `retentiond -c CONFIG ARGS` as a user would (bytes in, bytes out)."""
        return cli("-c", str(self.config), *args, stdin=stdin, check=check)


def cli(
    *args: str, stdin: bytes | None = None, check: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m retentiond ARGS` from the project root; bytes in, bytes out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTIOND_")}
    done = subprocess.run(
        [sys.executable, "-m", "retentiond", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr.decode()
    return done


def make_workspace(
    directory: Path, body: str = SHRED_RULE, state_url: str | None = None
) -> Workspace:
    """Write a config, run `init` and open its state database."""
    config = write_config(directory, body, state_url=state_url)
    assert init(config, io.StringIO()) == 0
    url = state_url or f"sqlite:///{directory / 'state.db'}"
    return Workspace(directory, config, create_state_engine(url), directory / "kek")
