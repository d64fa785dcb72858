"""Hostile peers on the daemon's /metrics endpoint (basic auth on), all at once, for a while.

While wrong passwords keep coming, slowloris peers trickle their headers one byte per second,
dozens of peers hold idle connections open (reconnecting whenever dropped), and requests with a
1 MB header, a 1 MB request line or hundreds of headers arrive: no hostile request gets metric data
(401, or an error status, or a closed connection); every slowloris peer is cut off; a legitimate
authenticated scrape still answers within two seconds every time; and the daemon's main loop is not
stalled: its watchdog pings keep their pace and its scheduled rule keeps running (new ledger entries,
the success counter goes up).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest
from sqlalchemy import text

from tests.daemon_support import DaemonProcess, free_port, sample, write_daemon_config
from tests.fault_support import check, cli, record
from tests.outage_support import RULE, LabTable, rule_body, state_engine

AREA = "hostile http"
PASSWORD = "correct horse battery staple"
SCRAPE_LIMIT = 2.0  # seconds a legitimate scrape may take while under attack
WINDOW = 12.0  # seconds of attack: longer than the server's 10 s deadline on a connection
IDLE_PEERS = 48  # three times the endpoint's connection limit
SLOW_PEERS = 6
pytestmark = pytest.mark.slow


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


GOOD = _basic("prometheus", PASSWORD)
BAD = [
    {},
    _basic("prometheus", "wrong"),
    _basic("prometheus", PASSWORD + " "),
    _basic("nobody", PASSWORD),
    {"Authorization": "Basic !!!"},
    {"Authorization": "Bearer " + PASSWORD},
]


def _get(port: int, headers: dict[str, str], path: str = "/metrics") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


class Pings:
    """Collects the arrival times of the daemon's WATCHDOG=1 notifications."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if b"WATCHDOG=1" in data:
                self.times.append(time.monotonic())

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without a ping between `start` and `end`."""
        marks = [start, *(t for t in self.times if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(marks))

    def close(self) -> None:
        """Stop collecting."""
        self.stop.set()
        self.thread.join()
        self.sock.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Findings:
    """What the hostile peers saw."""

    refused: list[int] = field(default_factory=list)  # statuses of wrong-credential requests
    leaked: list[str] = field(default_factory=list)  # replies to hostile peers with metric data
    oversized: list[str] = field(default_factory=list)  # status line or "closed", per request
    slow_cut: list[float] = field(default_factory=list)  # seconds each slowloris peer lasted
    reconnects: int = 0  # idle peers dropped by the server to make room
    errors: list[str] = field(default_factory=list)

    def reply(self, peer: socket.socket) -> bytes:
        """What `peer` reads next (nothing once the server closed it); metric data in it, sent
        to a peer that never made a valid request, is a leak."""
        try:
            data = peer.recv(4096)
        except OSError:
            data = b""
        if b"retentiond_" in data:
            self.leaked.append(data[:200].decode(errors="replace"))
        return data


def _wrong_passwords(port: int, stop: threading.Event, found: Findings) -> None:
    while not stop.is_set():
        for headers in BAD:
            try:
                status, body = _get(port, headers)
            except OSError as exc:  # a dropped connection gives nothing away either
                found.errors.append(type(exc).__name__)
                continue
            found.refused.append(status)
            if "retentiond_" in body or "ok" in body:
                found.leaked.append(body[:200])


def _slowloris(port: int, found: Findings) -> None:
    peers = []
    for _ in range(SLOW_PEERS):
        peer = socket.create_connection(("127.0.0.1", port), timeout=5)
        peer.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        peers.append((peer, time.monotonic()))
    alive = list(peers)
    deadline = time.monotonic() + WINDOW + 5
    while alive and time.monotonic() < deadline:
        time.sleep(1.0)
        for peer, began in list(alive):
            try:
                peer.sendall(b"a")  # one byte per second
                readable, _, _ = select.select([peer], [], [], 0)
            except OSError:
                readable = [peer]  # cut off: what is left to read says how
            if not readable:
                continue
            found.reply(peer)
            found.slow_cut.append(time.monotonic() - began)
            alive.remove((peer, began))
            peer.close()
    for peer, _ in alive:
        peer.close()


def _idle_flood(port: int, stop: threading.Event, found: Findings) -> None:
    peers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(IDLE_PEERS)]
    try:
        while not stop.is_set():
            readable, _, _ = select.select(peers, [], [], 0.2)
            for peer in readable:
                found.reply(peer)
                peers.remove(peer)
                peer.close()
                found.reconnects += 1
                peers.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    finally:
        for peer in peers:
            peer.close()


def _oversized(port: int, found: Findings) -> None:
    huge = b"a" * (1 << 20)
    requests = [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + huge + b"\r\n\r\n",
        b"GET /metrics?" + huge + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(300)) + b"\r\n",
    ]
    for request in requests:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as peer:
            with contextlib.suppress(OSError):  # the server may stop reading and close
                peer.sendall(request)
            reply = found.reply(peer)
        found.oversized.append(reply.split(b"\r\n", 1)[0].decode(errors="replace") or "closed")


def _purge_entries(state_url: str) -> int:
    engine = state_engine(state_url)
    try:
        with engine.connect() as conn:
            query = text('SELECT count(*) FROM ledger_entry WHERE entry LIKE \'%"kind":"purge"%\'')
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def test_hostile_peers_get_nothing_and_stall_nothing(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    lab = LabTable(f"sqlite:///{tmp_path / 'lims.db'}", 2000)
    lab.fill()
    port = free_port()
    state_url = f"sqlite:///{tmp_path / 'etc' / 'state.db'}"
    config = write_daemon_config(
        tmp_path / "etc",
        rule_body(lab.url),
        port=port,
        schedule="every 10s",  # the shortest schedule a config accepts
        metrics_extra=f'basic_auth_users = {{ prometheus = "{hashed}" }}',
    )
    assert cli(config, "init").returncode == 0
    pings = Pings(tmp_path / "notify.sock")
    daemon = DaemonProcess(
        config, port, notify=pings.path, env={"WATCHDOG_USEC": "400000"}
    )  # a ping every 0.2 s
    found = Findings()
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def successes() -> float:
        status, body = _get(port, GOOD)
        assert status == 200, body
        return sample(body, "retentiond_rule_runs_total", rule=RULE, result="success") or 0.0

    try:
        daemon.wait_http()
        deadline = time.monotonic() + 30
        while successes() < 1:  # the run owed at start
            assert time.monotonic() < deadline, daemon.log
            time.sleep(0.2)
        runs_before, entries_before = successes(), _purge_entries(state_url)
        started = time.monotonic()
        attacks: list[Callable[[], None]] = [
            lambda: _wrong_passwords(port, stop, found),
            lambda: _wrong_passwords(port, stop, found),
            lambda: _idle_flood(port, stop, found),
            lambda: _slowloris(port, found),
            lambda: _oversized(port, found),
        ]
        for attack in attacks:
            workers.append(threading.Thread(target=attack, daemon=True))
            workers[-1].start()
        record(AREA, faults=len(attacks), trials=1)
        slowest = 0.0
        scrapes = 0
        while time.monotonic() - started < WINDOW or successes() <= runs_before:
            assert time.monotonic() - started < 30, ("no run while under attack", daemon.log)
            began = time.monotonic()
            status, body = _get(port, GOOD)
            slowest = max(slowest, time.monotonic() - began)
            scrapes += 1
            check(AREA, status == 200 and "retentiond_build_info" in body, (status, body[:200]))
            time.sleep(0.5)
        ended = time.monotonic()
        check(AREA, slowest < SCRAPE_LIMIT, ("a legitimate scrape took", slowest, scrapes))
        check(AREA, daemon.proc.poll() is None, ("the daemon exited", daemon.log))
        # The main loop kept its pace, and the rule kept running, while under attack.
        gap = pings.longest_gap(started, ended)
        check(AREA, gap < 2.0, ("the main loop stalled for", gap))
        check(AREA, successes() > runs_before, ("no run under attack", daemon.log))
        check(AREA, _purge_entries(state_url) > entries_before, "no new ledger entry under attack")
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=WINDOW + 10)
        pings.close()
    # What the hostile peers got: nothing.
    record(AREA, bad_inputs=len(found.refused) + len(found.oversized) + SLOW_PEERS)
    record(AREA, bad_inputs=IDLE_PEERS + found.reconnects)
    check(AREA, not found.leaked, ("metric data reached a hostile peer", found.leaked))
    check(AREA, len(found.refused) >= 20, ("too few wrong-credential requests", found.refused))
    check(AREA, set(found.refused) == {401}, ("wrong credentials got", set(found.refused)))
    for line in found.oversized:
        ok = line == "closed" or line.split(" ")[1:2] in (["400"], ["414"], ["431"])
        check(AREA, ok, ("an oversized request got", found.oversized))
    check(AREA, len(found.oversized) == 3, found.oversized)
    check(AREA, len(found.slow_cut) == SLOW_PEERS, ("slowloris peers not cut", found.slow_cut))
    check(AREA, max(found.slow_cut) <= 10 + 3, ("a slowloris peer lasted", found.slow_cut))
    code, _ = daemon.stop(timeout=30)
    daemon.close()
    lab.dispose()
    check(AREA, code == 0, ("daemon exit", code))
    check(AREA, "Traceback" not in daemon.log, daemon.log)
