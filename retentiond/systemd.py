"""sd_notify without libsystemd: readiness, status, watchdog, reload and stop notifications.

The protocol is one datagram of `KEY=VALUE` lines sent to the AF_UNIX socket named by
$NOTIFY_SOCKET (a path, or an abstract name written with a leading `@`). Outside systemd the variable
is unset and every call is a no-op, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

NOTIFY_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
_MAX_STATUS = 200  # STATUS= is shown by `systemctl status`: one short line


def _address(value: str) -> str | bytes:
    # An abstract socket's name starts with a NUL byte, which the variable spells as "@".
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval() -> float | None:
    """Seconds between two WATCHDOG=1 pings (half of $WATCHDOG_USEC), None when not asked for."""
    usec = os.environ.get(WATCHDOG_USEC_ENV, "")
    pid = os.environ.get(WATCHDOG_PID_ENV, "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is meant for another process (a wrapper started us)
    return int(usec) / 2_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends state changes to systemd; silent when not run by systemd."""

    def __init__(self, socket_path: str | None = None) -> None:
        target = socket_path if socket_path is not None else os.environ.get(NOTIFY_ENV)
        self._address = _address(target) if target else None
        self._socket: socket.socket | None = None
        self._last_status: str | None = None
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        """True when $NOTIFY_SOCKET named a socket."""
        return self._socket is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields in one datagram; False when not sent (no socket, or an error)."""
        if self._socket is None or self._address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            self._socket.sendto(message, self._address)
        except OSError as exc:
            # systemd gone or the socket full: the daemon goes on; the watchdog will tell.
            log.debug("sd_notify failed: %s", type(exc).__name__)
            return False
        return True

    def ready(self, status: str) -> bool:
        """READY=1 with a first status line."""
        self._last_status = _one_line(status)
        return self.send("READY=1", f"STATUS={self._last_status}")

    def status(self, text: str) -> bool:
        """STATUS=, sent only when the line changed."""
        line = _one_line(text)
        if line == self._last_status:
            return False
        self._last_status = line
        return self.send(f"STATUS={line}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the main loop is alive."""
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, before a reload (systemd 253+ expects the timestamp)."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading")

    def reloaded(self, status: str) -> bool:
        """READY=1 again after a reload, successful or not."""
        return self.ready(status)

    def stopping(self) -> bool:
        """STOPPING=1: shutdown began."""
        return self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_STATUS else line[: _MAX_STATUS - 3] + "..."
