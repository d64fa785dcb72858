"""Throwaway database servers that a test may stop, restart or kill -9, and a small tmpfs to fill.

The shared test servers (PostgreSQL on 5432, MariaDB on 3306) are used by others at the same time and
are never touched here: each throwaway server lives in its own temporary directory, on its own free
port, and is removed at the end of the session. PostgreSQL and MariaDB refuse to run as root, so
under root they run as the `postgres` and `mysql` system users.

Under CI=true a server that cannot be started fails the test; elsewhere the test is skipped with the
reason.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import IN_CI
from tests.daemon_support import free_port

PG_BINDIR = Path(os.environ.get("RETENTIOND_TEST_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
MARIADBD = Path(os.environ.get("RETENTIOND_TEST_MARIADBD", "/usr/sbin/mariadbd"))
IS_ROOT = os.geteuid() == 0


def unavailable(message: str) -> NoReturn:
    """Fail under CI=true, skip elsewhere: the throwaway server (or tmpfs) cannot be had here."""
    if IN_CI:
        pytest.fail(message + " (CI=true: these tests must run)")
    pytest.skip(message)


def _workdir(prefix: str, user: str | None) -> Path:
    # Not under pytest's tmp_path: its base is private to root, and the server runs as `user`.
    if user is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        unavailable(f"running as root, and there is no `{user}` user to run the server as")
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    return directory


def _as(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user is not None else argv


def _run(argv: list[str], what: str, timeout: float = 60) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-800:]}")


def wait_connectable(url: str, timeout: float = 30.0) -> None:
    """Return once `url` accepts a connection and a query."""
    deadline = time.monotonic() + timeout
    engine = create_engine(url, poolclass=NullPool)
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        engine.dispose()


@dataclass
class ScratchPostgres:
    """A PostgreSQL 15 cluster of our own: initdb'd in a temporary directory, fsync off."""

    directory: Path
    port: int
    user: str | None
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.directory / "data"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.directory / "server.log"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL of `database` on this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        argv = [str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args]
        _run(_as(self.user, argv), "pg_ctl " + " ".join(args))

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=60 -c shared_buffers=64MB"
        )
        self._ctl("-o", options, "-l", str(self.log), "start")
        wait_connectable(self.url())

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (`fast`: abort transactions; `immediate`: as a crash)."""
        self._ctl("-m", mode, "stop")

    def restart(self, mode: str) -> None:
        """`pg_ctl restart -m MODE`, then wait until it accepts connections again."""
        # -l again: otherwise the new server keeps our pipes open and pg_ctl's output never ends.
        self._ctl("-m", mode, "-l", str(self.log), "restart")
        wait_connectable(self.url())

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        self.databases.append(name)
        return self.url(name)

    def destroy(self) -> None:
        """Stop the cluster and remove its directory."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


def start_scratch_postgres() -> ScratchPostgres:
    """initdb and start a throwaway cluster; skip (or fail under CI) when it cannot be done."""
    if not (PG_BINDIR / "initdb").exists():
        unavailable(f"no PostgreSQL server binaries in {PG_BINDIR} (RETENTIOND_TEST_PG_BINDIR)")
    user = "postgres" if IS_ROOT else None
    directory = _workdir("retentiond-pg-", user)
    server = ScratchPostgres(directory, free_port(), user)
    try:
        initdb = [str(PG_BINDIR / "initdb"), "-D", str(server.data), "-A", "trust", "-U"]
        _run(_as(user, [*initdb, "postgres", "-E", "UTF8", "--no-sync"]), "initdb")
        server.start()
    except Exception as exc:
        server.destroy()
        unavailable(f"cannot start a throwaway PostgreSQL cluster: {exc}")
    return server


@dataclass
class ScratchMariadb:
    """A mariadbd of our own on a temporary data directory; it may be killed and started again."""

    directory: Path
    port: int
    user: str | None
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "test") -> str:
        """A SQLAlchemy URL of `database` on this server."""
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start mariadbd and wait until it answers (crash recovery included)."""
        argv = [
            str(MARIADBD),
            "--no-defaults",
            f"--datadir={self.directory / 'data'}",
            f"--socket={self.directory / 'sock'}",
            f"--pid-file={self.directory / 'pid'}",
            f"--log-error={self.directory / 'error.log'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=64M",
            "--innodb-flush-log-at-trx-commit=2",
        ]
        if self.user is not None:
            argv.append(f"--user={self.user}")
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_connectable(self.url("mysql"), timeout=60)
        except Exception as exc:
            log = (self.directory / "error.log").read_text(errors="replace")[-800:]
            raise RuntimeError(f"mariadbd did not come up: {exc}\n{log}") from None

    def kill(self) -> None:
        """kill -9 the server, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def restart(self, how: str) -> None:
        """Kill (`kill`) or stop cleanly (`stop`) the server, then start it again."""
        self.kill() if how == "kill" else self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        engine = create_engine(self.url("mysql"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f"CREATE DATABASE `{name}`"))
        finally:
            engine.dispose()
        return self.url(name)

    def destroy(self) -> None:
        """Kill the server and remove its directory."""
        with contextlib.suppress(Exception):
            self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_scratch_mariadb() -> ScratchMariadb:
    """mariadb-install-db and start a throwaway server; skip (or fail under CI) when impossible."""
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if install is None or not MARIADBD.exists():
        unavailable(f"no MariaDB server here ({MARIADBD}, mariadb-install-db)")
    user = "mysql" if IS_ROOT else None
    directory = _workdir("retentiond-mariadb-", user)
    server = ScratchMariadb(directory, free_port(), user)
    try:
        argv = [
            str(install),
            "--no-defaults",
            f"--datadir={directory / 'data'}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        if user is not None:
            argv.append(f"--user={user}")
        _run(argv, "mariadb-install-db", timeout=120)
        server.start()
    except Exception as exc:
        server.destroy()
        unavailable(f"cannot start a throwaway MariaDB server: {exc}")
    return server


@contextlib.contextmanager
def small_tmpfs(size_kib: int) -> Iterator[Path]:
    """A tmpfs of `size_kib` KiB mounted on a fresh directory (root only); unmounted afterwards."""
    if not IS_ROOT:
        unavailable("mounting a tmpfs to fill needs root")
    directory = Path(tempfile.mkdtemp(prefix="retentiond-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        directory.rmdir()
        unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
        with contextlib.suppress(OSError):
            directory.rmdir()
