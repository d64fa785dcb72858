"""Shared fixtures: real databases from environment variables, isolated per test.

Under CI=true a database that is not configured or not reachable fails the test; elsewhere the test is
skipped with the reason, so that a laptop without PostgreSQL or MariaDB still runs the rest.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

if TYPE_CHECKING:
    from tests.server_support import ScratchMariadb, ScratchPostgres

POSTGRES_ENV = "RETENTIOND_TEST_POSTGRES_URL"
MYSQL_ENV = "RETENTIOND_TEST_MYSQL_URL"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _database_url(env: str, what: str) -> str:
    url = os.environ.get(env)
    if not url:
        message = f"{env} is not set: no {what} server to test against"
        if IN_CI:
            pytest.fail(message + " (CI=true: database tests must run)")
        pytest.skip(message)
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        message = f"{what} at {make_url(url).render_as_string()} is not reachable: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: database tests must run)")
        pytest.skip(message)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of the test PostgreSQL server (the shared `test` database)."""
    return _database_url(POSTGRES_ENV, "PostgreSQL")


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """URL of the test MariaDB/MySQL server (the shared `test` database)."""
    return _database_url(MYSQL_ENV, "MariaDB/MySQL")


def _fresh_database(server_url: str, drop_options: str = "") -> Iterator[str]:
    """Create an empty database with a random name on the server; yield its URL, then drop it."""
    name = f"rt_{secrets.token_hex(6)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote_identifier(name)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {quoted}"))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted}{drop_options}"))
        admin.dispose()


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; its URL. Dropped afterwards."""
    # FORCE: a connection the test left open must not keep the database from being dropped.
    yield from _fresh_database(pg_url, " WITH (FORCE)")


@pytest.fixture
def mysql_database(mysql_url: str) -> Iterator[str]:
    """A fresh, empty MariaDB/MySQL database for one test; its URL. Dropped afterwards."""
    yield from _fresh_database(mysql_url)


@pytest.fixture
def engine_for() -> Iterator[list[Engine]]:
    """Collects engines a test creates so they are disposed of before databases are dropped."""
    engines: list[Engine] = []
    yield engines
    for engine in engines:
        engine.dispose()


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m retentiond ARGS` as a user would; returns the finished process."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RETENTIOND_") or k.startswith("RETENTIOND_TEST_")
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "retentiond", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def scratch_postgres() -> Iterator[ScratchPostgres]:
    """A throwaway PostgreSQL cluster that tests may restart or stop (never the shared server)."""
    from tests.server_support import start_scratch_postgres

    server = start_scratch_postgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def scratch_mariadb() -> Iterator[ScratchMariadb]:
    """A throwaway MariaDB server that tests may kill and start again (never the shared server)."""
    from tests.server_support import start_scratch_mariadb

    server = start_scratch_mariadb()
    try:
        yield server
    finally:
        server.destroy()
