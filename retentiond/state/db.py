"""Connect to the state database and bring its schema to the newest migration."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url

import migrations
from retentiond.config.model import Config
from retentiond.config.secrets import read_secret_file

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS_DIR = Path(migrations.__file__).parent
# Alembic is imported where it is used (init): it weighs about 11 MB of memory, which the
# long-running daemon never needs and a Python process never gives back.


def state_url(config: Config) -> URL:
    """The state database URL, its password read from `state_password_file` when set."""
    url = make_url(config.daemon.state_url)
    if config.daemon.state_password_file is not None:
        url = url.set(
            password=read_secret_file(
                config.daemon.state_password_file, "daemon.state_password_file"
            )
        )
    return url


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers (status, metrics) work while a run writes; a busy timeout turns lock contention
    # between processes into waiting instead of "database is locked".
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def create_state_engine(url: URL | str) -> Engine:
    """An engine on the state database, with SQLite made safe for several processes."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # Holds and wrapped keys live here: private from birth (SQLite's -wal and -shm files
            # take the database file's mode).
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # O_EXCL: never open and close a database file that exists. Closing any descriptor of
            # a file drops every POSIX lock this process holds on it, so SQLite connections
            # already open here would lose their locks and another process could reset the WAL
            # under them, losing committed transactions.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(parsed.database, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
        engine = create_engine(parsed, connect_args={"timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


# The newest migration's revision, so that every command can check the schema without importing
# Alembic (a tenth of a second at each start). A test keeps it equal to the migrations' head.
SCHEMA_REVISION = "0001"


def stored_revision(engine: Engine) -> str | None:
    """The revision recorded in the database's alembic_version table (None when absent)."""
    from sqlalchemy import inspect, text

    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def alembic_config() -> AlembicConfig:
    """Alembic's config pointing at the migrations shipped with the package."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest migration's revision id."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the schema to head; returns (revision before, revision after)."""
    from alembic import command as alembic_command

    before = current_revision(engine)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        alembic_command.upgrade(cfg, "head")
    return before, head_revision()
