"""The /metrics endpoint: basic auth, TLS, /healthz, and peers that are slow or send too much."""

from __future__ import annotations

import base64
import ipaddress
import select
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from retentiond.config.model import MetricsSection
from retentiond.metrics import MAX_CONNECTIONS, Metrics, MetricsServer
from tests.daemon_support import free_port

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _get(
    url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


class Health:
    """A health callback the test flips."""

    def __init__(self) -> None:
        self.ok = True

    def __call__(self) -> tuple[bool, str]:
        return (True, "ok") if self.ok else (False, "main loop stalled for 99s")


def _serve(section: MetricsSection, health: Health | None = None) -> Iterator[MetricsServer]:
    metrics = Metrics()
    metrics.set_rules({"lab-results": "rows"})
    server = MetricsServer(section, metrics, health or Health())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def plain() -> Iterator[tuple[str, Health]]:
    health = Health()
    port = free_port()
    for _ in _serve(MetricsSection(listen=f"127.0.0.1:{port}"), health):
        yield f"http://127.0.0.1:{port}", health


@pytest.fixture
def with_auth() -> Iterator[str]:
    port = free_port()
    section = MetricsSection(listen=f"127.0.0.1:{port}", basic_auth_users={"prometheus": HASH})
    for _ in _serve(section):
        yield f"http://127.0.0.1:{port}"


def test_metrics_and_healthz_are_served(plain: tuple[str, Health]) -> None:
    url, health = plain
    status, body, headers = _get(url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert 'retentiond_rows_deleted_total{rule="lab-results"} 0.0' in body
    assert _get(url + "/healthz")[:2] == (200, "ok\n")
    health.ok = False
    status, body, _ = _get(url + "/healthz")
    assert (status, body) == (503, "main loop stalled for 99s\n")
    assert _get(url + "/nothing")[0] == 404
    request = urllib.request.Request(url + "/metrics", data=b"x" * 10, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 405


def test_openmetrics_is_negotiated(plain: tuple[str, Health]) -> None:
    url, _ = plain
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    status, body, headers = _get(url + "/metrics", accept)
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_basic_auth_refuses_without_valid_credentials(with_auth: str) -> None:
    for headers in (
        {},
        _basic("prometheus", "wrong"),
        _basic("nobody", PASSWORD),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer " + PASSWORD},
        _basic("prometheus", "x" * 100),  # longer than bcrypt accepts
    ):
        for path in ("/metrics", "/healthz"):
            status, body, response_headers = _get(with_auth + path, headers)
            assert status == 401
            assert "retentiond_" not in body and "ok" not in body
            assert response_headers["WWW-Authenticate"].startswith("Basic ")
    status, body, _ = _get(with_auth + "/metrics", _basic("prometheus", PASSWORD))
    assert status == 200 and "retentiond_build_info" in body


def test_a_cached_password_still_checks_the_password(with_auth: str) -> None:
    good = _basic("prometheus", PASSWORD)
    for _ in range(3):
        assert _get(with_auth + "/metrics", good)[0] == 200
    assert _get(with_auth + "/metrics", _basic("prometheus", PASSWORD + "!"))[0] == 401


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def test_tls_with_basic_auth(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    port = free_port()
    section = MetricsSection(
        listen=f"127.0.0.1:{port}",
        basic_auth_users={"prometheus": HASH},
        tls_cert_file=cert_file,
        tls_key_file=key_file,
    )
    trust = ssl.create_default_context(cafile=str(cert_file))
    for _ in _serve(section):
        url = f"https://127.0.0.1:{port}/metrics"
        assert _get(url, context=trust)[0] == 401
        status, body, _ = _get(url, _basic("prometheus", PASSWORD), context=trust)
        assert status == 200 and "retentiond_build_info" in body
        # Plain HTTP to the TLS port gets nothing, and the server goes on serving.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert _get(url, _basic("prometheus", PASSWORD), context=trust)[0] == 200


def test_slow_and_oversized_requests_do_not_hold_the_endpoint(plain: tuple[str, Health]) -> None:
    url, _ = plain
    port = int(url.rsplit(":", 1)[1])
    # A handful of peers that open a connection and trickle nothing.
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        started = time.monotonic()
        assert _get(url + "/metrics")[0] == 200
        assert time.monotonic() - started < 2
        # Headers far too big are refused with an error, not read forever.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as big:
            big.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            big.sendall(b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n")
            reply = big.recv(200)
        assert reply.startswith(b"HTTP/1.1 431") or reply.startswith(b"HTTP/1.0 431")
    finally:
        for conn in idle:
            conn.close()


def test_more_idle_connections_than_allowed_give_way_to_a_scrape(
    plain: tuple[str, Health],
) -> None:
    url, _ = plain
    port = int(url.rsplit(":", 1)[1])
    hogs = []
    for _ in range(MAX_CONNECTIONS):
        hogs.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.01)  # in order: the first one has waited longest
    try:
        time.sleep(0.3)
        # Every slot is held by a peer that sent nothing: the one that waited longest is dropped
        # for the newcomer, which is served at once.
        started = time.monotonic()
        assert _get(url + "/metrics")[0] == 200
        assert time.monotonic() - started < 2
        readable = select.select(hogs, [], [], 0.5)[0]
        dropped = [h for h in hogs if h in readable and not h.recv(10)]
        assert dropped[:1] == hogs[:1]
        assert len(dropped) < MAX_CONNECTIONS
    finally:
        for conn in hogs:
            conn.close()


def test_a_peer_trickling_bytes_is_cut_off_at_the_deadline(
    plain: tuple[str, Health], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = plain
    port = int(url.rsplit(":", 1)[1])
    monkeypatch.setattr("retentiond.metrics.REQUEST_DEADLINE", 1.0)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        cut = False
        while time.monotonic() - started < 4:
            try:
                slow.sendall(b"X")  # one byte at a time, each well within the read timeout
            except OSError:
                cut = True
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    assert cut, "the connection was still open after 4s"
    assert elapsed < 3


def test_reconfigure_moves_adds_auth_and_survives_a_bad_certificate(tmp_path: Path) -> None:
    from retentiond.errors import RetentiondError

    first, second = free_port(), free_port()
    metrics = Metrics()
    server = MetricsServer(MetricsSection(listen=f"127.0.0.1:{first}"), metrics, Health())
    server.start()
    try:
        assert _get(f"http://127.0.0.1:{first}/metrics")[0] == 200
        # Another port: the new one serves, the old one is closed.
        server.reconfigure(MetricsSection(listen=f"127.0.0.1:{second}"))
        assert _get(f"http://127.0.0.1:{second}/metrics")[0] == 200
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=2)
        # Same port, now with basic auth.
        secured = MetricsSection(listen=f"127.0.0.1:{second}", basic_auth_users={"p": HASH})
        server.reconfigure(secured)
        assert _get(f"http://127.0.0.1:{second}/metrics")[0] == 401
        # A certificate that is not one: refused, and the endpoint goes on as it was.
        bad = tmp_path / "bad.pem"
        bad.write_text("not a certificate\n")
        broken = MetricsSection(
            listen=f"127.0.0.1:{second}",
            basic_auth_users={"p": HASH},
            tls_cert_file=bad,
            tls_key_file=bad,
        )
        with pytest.raises(RetentiondError, match=r"metrics\.tls_cert_file"):
            server.reconfigure(broken)
        assert _get(f"http://127.0.0.1:{second}/metrics", _basic("p", PASSWORD))[0] == 200
        assert server.section == secured
    finally:
        server.stop()
