"""Shared set-up of the daemon tests: configs, a real `retentiond run` process, sd_notify capture."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.configs import lab_results_rule, lims_store, max_fraction_line

ROOT = Path(__file__).resolve().parent.parent

SHRED_RULE = """
[[rules]]
name = "{name}"
action = "shred"
"""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lab_results_sqlite(db: Path, rows: int, expired_every: int = 2) -> None:
    """A `results` table in the SQLite database `db` where one row in `expired_every` is 400
    days old, the rest new."""
    now = datetime.now(UTC).replace(tzinfo=None)
    old, recent = (now - timedelta(days=400)).isoformat(" "), now.isoformat(" ")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE results (id INTEGER PRIMARY KEY, patient_id INTEGER, "
            "validated_at TIMESTAMP NOT NULL, value TEXT)"
        )
        conn.executemany(
            "INSERT INTO results VALUES (?, ?, ?, ?)",
            (
                (i, i % 997, old if i % expired_every == 0 else recent, "v" * 40)
                for i in range(rows)
            ),
        )


def slow_deletes(db: Path) -> None:
    """Each row deleted from `results` fires a trigger that reads a filler table (an audit
    trigger does work like it), so a purge lasts as long as a test needs however fast the
    machine; batches stay within their budget, so a stop still comes quickly."""
    with sqlite3.connect(db, timeout=10) as conn:
        conn.execute("CREATE TABLE filler (x INTEGER)")
        conn.executemany("INSERT INTO filler VALUES (?)", ((i,) for i in range(20_000)))
        conn.execute(
            "CREATE TRIGGER slow_delete AFTER DELETE ON results "
            "BEGIN SELECT count(*) FROM filler WHERE x >= 0; END"
        )


def fast_deletes(db: Path) -> None:
    """Drop the trigger of `slow_deletes`."""
    with sqlite3.connect(db, timeout=10) as conn:
        conn.execute("DROP TRIGGER slow_delete")


def write_daemon_config(
    directory: Path,
    body: str,
    *,
    port: int,
    schedule: str = "every 10s",
    state_url: str | None = None,
    daemon_extra: str = "",
    metrics_extra: str = "",
) -> Path:
    """A complete config for `retentiond run`: state, keys, metrics on `port`, then `body`."""
    directory.mkdir(parents=True, exist_ok=True)
    state = state_url or f"sqlite:///{directory / 'state.db'}"
    text = f"""[daemon]
state_url = "{state}"
schedule = "{schedule}"
{daemon_extra}

[metrics]
listen = "127.0.0.1:{port}"
{metrics_extra}

[ledger]
origin = "test.example.org/retentiond"
signing_key_file = "{directory / "ledger.key"}"

[keys]
kek_file = "{directory / "kek"}"

{body}
"""
    path = directory / "config.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command run as a user would, without our test's overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETENTIOND_", "NOTIFY_"))}
    env.pop("WATCHDOG_USEC", None)
    env.pop("WATCHDOG_PID", None)
    env.update(extra or {})
    return env


def cli(config: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m retentiond -c CONFIG ARGS`; the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "retentiond", "-c", str(config), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(),
        timeout=120,
        check=False,
    )


def seal(config: Path, output: Path, expires: str = "1s") -> None:
    """Seal a small copy that expires after `expires`."""
    done = cli(config, "seal", "-", "-o", str(output), "--expires", expires, stdin=b"lab export\n")
    assert done.returncode == 0, done.stderr


class NotifyListener:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET; collects every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 30.0
    ) -> dict[str, str]:
        """The first message (already received or coming) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"no such notification within {timeout}s: {self.messages}")
            self._drain()

    def count(
        self, predicate: Callable[[dict[str, str]], bool], at_least: int, timeout: float
    ) -> int:
        """Wait until `at_least` messages satisfy `predicate`; how many did."""
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            found = sum(1 for m in self.messages if predicate(m))
            if found >= at_least or time.monotonic() > deadline:
                return found

    def close(self) -> None:
        """Close and remove the socket."""
        self.sock.close()
        self.path.unlink(missing_ok=True)


class DaemonProcess:
    """`retentiond run` as a real child process, its stderr kept in a file."""

    def __init__(
        self,
        config: Path,
        port: int,
        notify: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        extra = dict(env or {})
        if notify is not None:
            extra["NOTIFY_SOCKET"] = str(notify)
        self.port = port
        self.log_path = config.parent / f"daemon-{port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retentiond", "-c", str(config), "run"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=cli_env(extra),
        )

    @property
    def log(self) -> str:
        """What the daemon logged so far."""
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """(status, body) of GET `path` on the metrics endpoint."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_http(self, timeout: float = 30.0) -> None:
        """Wait until the endpoint answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.log}"
            try:
                self.get("/healthz")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"metrics endpoint never answered:\n{self.log}")

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample in a scrape, None when absent."""
        status, body = self.get("/metrics")
        assert status == 200, body
        return sample(body, name, **labels)

    def wait_metric(
        self, name: str, predicate: Callable[[float], bool], timeout: float = 30.0, **labels: str
    ) -> float:
        """Scrape until the sample satisfies `predicate`; its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.log}"
            value = self.metric(name, **labels)
            if value is not None and predicate(value):
                return value
            time.sleep(0.2)
        raise AssertionError(f"{name}{labels} is {value} after {timeout}s:\n{self.log}")

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon."""
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        """kill -9, as a crash."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        """Make sure the process is gone and the log file closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels}` in a text exposition (labels in any order)."""
    for line in exposition.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def metric_names(exposition: str) -> set[str]:
    """Every sample name in a text exposition."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def all_kinds(directory: Path | str, *, max_fraction: float | None = None) -> str:
    """A rows rule on SQLite and a files rule, their stores under `directory`, for tests that need
    one of each kind; `max_fraction` guards both rules."""
    return f"""{lims_store(f"sqlite:///{directory}/lims.db")}
[stores.transfer]
kind = "files"
root = "{directory}/transfer"
{lab_results_rule(max_fraction=max_fraction)}
[[rules]]
name = "transfer-exports"
store = "transfer"
glob = "**/*.csv"
retain = "7d"
action = "delete"
{max_fraction_line(max_fraction)}"""


# The same rules with the directory left to fill in (format directory=).
ALL_KINDS = all_kinds("{directory}")
