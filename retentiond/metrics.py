"""Every metric of DESIGN.md on a private registry, and the HTTP endpoint that serves them.

Labels are only configured names (rule, result, version): never keys, paths or error texts. Gauges
that describe a rule (overdue items, last success...) come from the state database's `rule_state`,
so that every daemon sharing it, and a restarted one, shows the same values; counters count what
this process did since it started, as Prometheus counters do.

The endpoint runs in its own threads, with a bounded number of connections and a deadline on each,
so a slow or oversized request never stalls the main loop nor holds a scrape for long.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import bcrypt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import exposition as prom_exposition

from retentiond import __version__
from retentiond.config.model import MetricsSection
from retentiond.errors import RetentiondError
from retentiond.runner import RunReport

log = logging.getLogger(__name__)

RESULTS = ("success", "failure", "refused")
ItemKind = Literal["rows", "files", "copies"]
# `_created` series double the size of a scrape and no alert or panel of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
DURATION_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


@dataclass(frozen=True)
class RuleSnapshot:
    """A rule's last run as `rule_state` keeps it."""

    rule: str
    last_result: str | None = None
    last_run_at: datetime | None = None
    last_success_at: datetime | None = None
    overdue_items: int | None = None
    oldest_item_age_seconds: float | None = None
    held_items: int | None = None


class Metrics:
    """The daemon's metrics; safe to update from any thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Gauge(
            "retentiond_build_info",
            "Version of the running daemon (always 1).",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        self.reload_ok = Gauge(
            "retentiond_config_last_reload_successful",
            "1 when the last config (re)load succeeded, 0 when a reload was refused.",
            registry=r,
        )
        self.reload_time = Gauge(
            "retentiond_config_last_reload_success_timestamp_seconds",
            "Time of the last successful config (re)load.",
            registry=r,
        )
        self.last_success = Gauge(
            "retentiond_rule_last_success_timestamp_seconds",
            "Time of the rule's last successful run (any daemon), 0 when never.",
            ["rule"],
            registry=r,
        )
        self.last_result = Gauge(
            "retentiond_rule_last_result",
            "1 for the result of the rule's last run (any daemon), 0 for the others.",
            ["rule", "result"],
            registry=r,
        )
        self.runs = Counter(
            "retentiond_rule_runs",
            "Runs of the rule by this daemon, by result.",
            ["rule", "result"],
            registry=r,
        )
        self.duration = Histogram(
            "retentiond_rule_run_duration_seconds",
            "How long runs of the rule took.",
            ["rule"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.items: dict[ItemKind, Counter] = {
            "rows": Counter(
                "retentiond_rows_deleted",
                "Rows deleted (or masked, for mask rules).",
                ["rule"],
                registry=r,
            ),
            "files": Counter(
                "retentiond_files_deleted",
                "Files (and directory copies) deleted.",
                ["rule"],
                registry=r,
            ),
            "copies": Counter(
                "retentiond_copies_shredded", "Sealed copies crypto-shredded.", ["rule"], registry=r
            ),
        }
        self.bytes = Counter(
            "retentiond_bytes_deleted", "Bytes removed by the rule's runs.", ["rule"], registry=r
        )
        self.overdue = Gauge(
            "retentiond_rule_overdue_items",
            "Expired, unheld items still present after the rule's last run (the compliance signal).",
            ["rule"],
            registry=r,
        )
        self.oldest = Gauge(
            "retentiond_rule_oldest_item_age_seconds",
            "Age of the oldest expired item still present (0 when none).",
            ["rule"],
            registry=r,
        )
        self.held = Gauge(
            "retentiond_rule_held_items",
            "Expired items kept by holds at the rule's last run.",
            ["rule"],
            registry=r,
        )
        self.ledger_entries = Gauge(
            "retentiond_ledger_entries", "Entries in the deletion ledger.", registry=r
        )
        self.ledger_checkpoint = Gauge(
            "retentiond_ledger_last_checkpoint_timestamp_seconds",
            "Time of the newest signed ledger checkpoint.",
            registry=r,
        )
        self._rules: dict[str, ItemKind] = {}
        self._lock = threading.Lock()
        # Scrapes are answered from the last rendering until something changes: rendering 100
        # rules takes tens of milliseconds, and values change only after runs and refreshes.
        self._version = 0
        self._rendered: dict[str, tuple[int, bytes]] = {}

    def _changed(self) -> None:
        with self._lock:
            self._version += 1

    def set_rules(self, kinds: Mapping[str, ItemKind]) -> None:
        """Declare the configured rules: their series start at 0; removed rules' series go."""
        with self._lock:
            for rule in set(self._rules) - set(kinds):
                self._forget(rule, self._rules[rule])
            for rule, kind in kinds.items():
                if self._rules.get(rule) not in (None, kind):
                    self._forget(rule, self._rules[rule])
                for result in RESULTS:
                    self.runs.labels(rule=rule, result=result)
                    self.last_result.labels(rule=rule, result=result)
                self.duration.labels(rule=rule)
                self.items[kind].labels(rule=rule)
                self.bytes.labels(rule=rule)
                for gauge in (self.last_success, self.overdue, self.oldest, self.held):
                    gauge.labels(rule=rule)
            self._rules = dict(kinds)
            self._version += 1

    def _forget(self, rule: str, kind: ItemKind) -> None:
        for result in RESULTS:
            for labelled in (self.runs, self.last_result):
                _remove(labelled, rule, result)
        for metric in (
            self.duration,
            self.items[kind],
            self.bytes,
            self.last_success,
            self.overdue,
            self.oldest,
            self.held,
        ):
            _remove(metric, rule)

    def config_loaded(self, ok: bool, when: datetime) -> None:
        """Record a config load or reload."""
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set(when.timestamp())
        self._changed()

    def observe_run(self, report: RunReport) -> None:
        """Count one run of this daemon."""
        kind = self._rules.get(report.rule)
        if kind is None:
            return  # the rule was removed by a reload while it ran
        self.runs.labels(rule=report.rule, result=report.result).inc()
        self.duration.labels(rule=report.rule).observe(report.seconds)
        # What a failed run did commit is in its outcome (or nothing): count only that.
        if report.outcome is not None:
            self.items[kind].labels(rule=report.rule).inc(report.outcome.items)
            self.bytes.labels(rule=report.rule).inc(report.outcome.bytes)
        self._changed()

    def update_rules(self, snapshots: Iterable[RuleSnapshot], now: datetime) -> None:
        """Set the per-rule gauges from `rule_state`."""
        for snap in snapshots:
            if snap.rule not in self._rules:
                continue
            for result in RESULTS:
                self.last_result.labels(rule=snap.rule, result=result).set(
                    1 if snap.last_result == result else 0
                )
            success = snap.last_success_at.timestamp() if snap.last_success_at else 0
            self.last_success.labels(rule=snap.rule).set(success)
            overdue = snap.overdue_items or 0
            self.overdue.labels(rule=snap.rule).set(overdue)
            self.held.labels(rule=snap.rule).set(snap.held_items or 0)
            age = 0.0
            if overdue and snap.oldest_item_age_seconds is not None:
                # Data left behind keeps aging between runs.
                since = (now - snap.last_run_at).total_seconds() if snap.last_run_at else 0.0
                age = snap.oldest_item_age_seconds + max(0.0, since)
            self.oldest.labels(rule=snap.rule).set(age)
        self._changed()

    def update_ledger(self, entries: int, checkpoint: datetime | None) -> None:
        """Set the ledger gauges."""
        self.ledger_entries.set(entries)
        self.ledger_checkpoint.set(checkpoint.timestamp() if checkpoint else 0)
        self._changed()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when asked) and its content type."""
        encoder, content_type = prom_exposition.choose_encoder(accept)
        version = self._version
        cached = self._rendered.get(content_type)
        if cached is not None and cached[0] == version:
            return cached[1], content_type
        # A change while rendering bumps the version: this rendering is then redone next time.
        body = encoder(self.registry)
        self._rendered[content_type] = (version, body)
        return body, content_type


def _remove(metric: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


# --- the HTTP endpoint -------------------------------------------------------------------------

MAX_CONNECTIONS = 16  # a scrape is one connection every few seconds; see _Server._make_room
REQUEST_TIMEOUT = 5.0  # seconds a socket read or write may block
REQUEST_DEADLINE = 10.0  # seconds a connection may live, however slowly it trickles
_AUTH_CACHE_SIZE = 64


@functools.cache
def _dummy_hash() -> bytes:
    """A bcrypt hash checked for unknown users, so that timing does not tell which users exist."""
    return bcrypt.hashpw(b"retentiond-no-such-user", bcrypt.gensalt(10))


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, as Prometheus web-config files do."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {u: h.encode() for u, h in users.items()}
        # sha256 of credentials accepted before: bcrypt is slow by design, a scrape must not be.
        self._ok: dict[bytes, None] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when users are configured."""
        return bool(self._users)

    def check(self, header: str | None) -> bool:
        """True when `header` carries a valid user and password."""
        if not self._users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        hashed = self._users.get(user.decode("utf-8", "replace"))
        memo = hashlib.sha256(b"\0".join((user, password, hashed or b""))).digest()
        with self._lock:
            if memo in self._ok:
                return True
        try:
            valid = bcrypt.checkpw(password, hashed or _dummy_hash()) and hashed is not None
        except ValueError:  # bcrypt refuses passwords longer than 72 bytes
            valid = False
        if valid:
            with self._lock:
                if len(self._ok) >= _AUTH_CACHE_SIZE:
                    self._ok.pop(next(iter(self._ok)))
                self._ok[memo] = None
        return valid


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "retentiond"
    sys_version = ""

    def setup(self) -> None:
        # A hard deadline: a peer trickling bytes slower than the read timeout is cut off anyway.
        self._deadline = threading.Timer(REQUEST_DEADLINE, _shutdown, (self.request,))
        self._deadline.daemon = True
        self._deadline.start()
        self.server.waiting(self.request, True)
        try:
            super().setup()
            if isinstance(self.request, ssl.SSLSocket):
                self.request.do_handshake()  # here, in the connection's thread, under its timeout
        except BaseException:
            self._deadline.cancel()  # finish() is not called when setup() fails
            self.server.waiting(self.request, False)
            raise

    def handle_one_request(self) -> None:
        self.server.waiting(self.request, True)  # until a whole request head has come
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.server.waiting(self.request, False)
        return parsed

    def finish(self) -> None:
        self._deadline.cancel()
        self.server.waiting(self.request, False)
        with contextlib.suppress(OSError):
            super().finish()

    def _reply(self, code: int, body: bytes, content_type: str, head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if code == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="retentiond", charset="UTF-8"')
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        if not self.server.auth.check(self.headers.get("Authorization")):
            self._reply(401, b"Unauthorized\n", "text/plain; charset=utf-8", head)
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = self.server.metrics.render(self.headers.get("Accept", ""))
            self._reply(200, body, content_type, head)
        elif path == "/healthz":
            healthy, text = self.server.health()
            self._reply(200 if healthy else 503, text.encode() + b"\n", "text/plain", head)
        elif path == "/":
            page = b'<html><body><a href="/metrics">metrics</a> <a href="/healthz">healthz</a>'
            self._reply(200, page + b"</body></html>\n", "text/html", head)
        else:
            self._reply(404, b"Not Found\n", "text/plain", head)

    def do_GET(self) -> None:  # the name http.server dispatches to
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse_method(self) -> None:
        self.close_connection = True  # a body may follow that we will not read
        self._reply(405, b"Method Not Allowed\n", "text/plain")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics endpoint: " + format, *args)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


Health = Callable[[], tuple[bool, str]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = MAX_CONNECTIONS

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        metrics: Metrics,
        auth: BasicAuth,
        health: Health,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.address_family = family
        self.metrics = metrics
        self.auth = auth
        self.health = health
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        # Connections still waiting for a request head, and since when (monotonic).
        self._waiting: dict[Any, float] = {}
        self._waiting_lock = threading.Lock()
        super().__init__(address, _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def waiting(self, request: Any, idle: bool) -> None:
        """Mark a connection as waiting for a request head (it may be dropped), or not."""
        with self._waiting_lock:
            if idle:
                self._waiting.setdefault(request, time.monotonic())
            else:
                self._waiting.pop(request, None)

    def _make_room(self) -> bool:
        """Every slot is taken: drop the connection that has waited longest for a request head
        (idle or trickling peers must not lock a scrape out); True when a slot came free."""
        with self._waiting_lock:
            oldest = min(self._waiting, key=self._waiting.__getitem__, default=None)
            if oldest is not None:
                del self._waiting[oldest]
        if oldest is None:
            return False
        _shutdown(oldest)  # its thread's read ends now, and the thread gives its slot back
        return self._slots.acquire(timeout=1.0)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False) and not self._make_room():
            # Full of requests being answered: refuse at once rather than queue behind them.
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Broken connections, failed handshakes and timeouts are the peer's business, not an alarm.
        log.debug("metrics endpoint: a request failed", exc_info=True)


def parse_listen(listen: str) -> tuple[str, int, socket.AddressFamily]:
    """host:port (or [v6]:port) -> (host, port, address family)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host, int(port), family


def tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from PEM files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class MetricsServer:
    """/metrics and /healthz served from background threads; reconfigurable on reload."""

    def __init__(self, section: MetricsSection, metrics: Metrics, health: Health) -> None:
        self._metrics = metrics
        self._health = health
        self.section = section
        self._server = self._bind(section)
        self._thread: threading.Thread | None = None

    def _bind(self, section: MetricsSection) -> _Server:
        """A bound, not yet serving, server for `section`; RetentiondError naming the key."""
        host, port, family = parse_listen(section.listen)
        tls = None
        try:
            if section.tls_cert_file is not None and section.tls_key_file is not None:
                tls = tls_context(section.tls_cert_file, section.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise RetentiondError(f"metrics.tls_cert_file: cannot use it: {reason}") from None
        auth = BasicAuth(section.basic_auth_users)
        try:
            return _Server((host, port), family, self._metrics, auth, self._health, tls)
        except OSError as exc:
            raise RetentiondError(
                f"metrics.listen: cannot serve on {section.listen}: {exc.strerror or exc}"
            ) from None

    @property
    def port(self) -> int:
        """The bound port (useful when listening on port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving."""
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="metrics-http",
            daemon=True,
        )
        self._thread.start()
        scheme = "https" if isinstance(self._server.socket, ssl.SSLSocket) else "http"
        auth = " with basic auth" if self._server.auth.enabled else ""
        log.info("metrics at %s://%s/metrics%s", scheme, self.section.listen, auth)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def reconfigure(self, section: MetricsSection) -> None:
        """Serve `section` instead; when it cannot be served, the current one goes on."""
        if section.listen != self.section.listen:
            fresh = self._bind(section)  # bound before the old one stops: no gap, no loss
            self.stop()
        else:
            self.stop()  # the same port must be free first
            try:
                fresh = self._bind(section)
            except RetentiondError:
                self._server = self._bind(self.section)
                self.start()
                raise
        self._server, self.section = fresh, section
        self.start()


def serve_metrics(section: MetricsSection, metrics: Metrics, health: Health) -> MetricsServer:
    """Start serving `section`; RetentiondError naming the key when it cannot be served."""
    server = MetricsServer(section, metrics, health)
    server.start()
    return server
