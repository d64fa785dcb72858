"""sd_notify without libsystemd, checked against real datagram sockets and a real daemon."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from retentiond.systemd import Notifier, monotonic_usec, watchdog_interval
from tests.daemon_support import (
    SHRED_RULE,
    DaemonProcess,
    NotifyListener,
    cli,
    free_port,
    write_daemon_config,
)


def test_notifier_speaks_the_protocol(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        notifier = Notifier(str(listener.path))
        assert notifier.enabled
        assert notifier.ready("3 rules\nsecond line")
        assert listener.wait_for(lambda m: "READY" in m) == {
            "READY": "1",
            "STATUS": "3 rules second line",
        }
        assert not notifier.status("3 rules second line")  # unchanged: not sent again
        assert notifier.status("3 rules; running lab-results")
        assert listener.wait_for(lambda m: "running" in m.get("STATUS", ""))
        before = monotonic_usec()
        assert notifier.reloading()
        reloading = listener.wait_for(lambda m: "RELOADING" in m)
        assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        assert notifier.watchdog()
        assert listener.wait_for(lambda m: "WATCHDOG" in m) == {"WATCHDOG": "1"}
        assert notifier.stopping()
        assert listener.wait_for(lambda m: "STOPPING" in m)["STOPPING"] == "1"
        notifier.close()
    finally:
        listener.close()


def test_abstract_socket_names(tmp_path: Path) -> None:
    name = f"retentiond-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    server.settimeout(2)
    try:
        assert Notifier("@" + name).ready("ok")
        assert server.recv(100) == b"READY=1\nSTATUS=ok"
    finally:
        server.close()


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready("x")
    # A socket that vanished is not an error either: the daemon goes on.
    assert not Notifier("/nonexistent/notify.sock").watchdog()


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None


def test_daemon_pings_the_watchdog_from_its_loop(tmp_path: Path) -> None:
    port = free_port()
    config = write_daemon_config(tmp_path, SHRED_RULE.format(name="sealed-copies"), port=port)
    assert cli(config, "init").returncode == 0
    listener = NotifyListener(tmp_path / "notify.sock")
    daemon = DaemonProcess(config, port, notify=listener.path, env={"WATCHDOG_USEC": "600000"})
    try:
        listener.wait_for(lambda m: m.get("READY") == "1")
        started = time.monotonic()
        pings = listener.count(lambda m: m.get("WATCHDOG") == "1", at_least=5, timeout=5)
        # Every 0.3 s (half of WATCHDOG_USEC): five pings take about 1.5 s, not a 5 s heartbeat.
        assert pings >= 5
        assert time.monotonic() - started < 3
        status = [m["STATUS"] for m in listener.messages if "STATUS" in m]
        assert any("since start 1 ok" in s for s in status), status
        code, _ = daemon.stop()
        assert code == 0
    finally:
        daemon.close()
        listener.close()
