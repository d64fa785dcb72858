"""Errors that reach the command line, each with the exit code DESIGN.md gives it."""

from __future__ import annotations

from collections.abc import Iterable


class RetentiondError(Exception):
    """A failure reported to the user; `exit_code` is what the process exits with."""

    exit_code = 1


class UsageError(RetentiondError):
    """A bad argument or a bad config: nothing was done."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more config problems, each already rendered as `file: key.path: reason`."""

    def __init__(self, messages: Iterable[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


class VerificationError(RetentiondError):
    """The ledger or an export failed verification (tampering or corruption)."""

    exit_code = 3


class GuardRefused(RetentiondError):
    """A guard refused a run, or some rules failed while others succeeded."""

    exit_code = 4


class NotAvailable(RetentiondError):
    """A command whose capability is not in this build."""

    exit_code = 1


class RuleError(RetentiondError):
    """A rule failed for a reason we recognise; the message names the rule and key, never data."""


class ClockError(RetentiondError):
    """The local clock is earlier than the newest ledger entry: it went back, so file ages lie."""


# What SQLite's own result codes mean, in the words an administrator searches for.
_SQLITE_WORDS = {
    "SQLITE_BUSY": "the database is locked by another process",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "the database is read-only",
    "SQLITE_CANTOPEN": "the database file cannot be opened",
}


def describe_error(exc: BaseException) -> str:
    """Our own message, or a driver error's class and code: never a driver's message text, which
    may quote row values."""
    if isinstance(exc, RetentiondError):
        return str(exc)
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    code = (
        getattr(orig, "sqlite_errorname", None)  # SQLite
        or getattr(orig, "sqlstate", None)  # PostgreSQL
        or (args[0] if args and isinstance(args[0], int) else None)  # MySQL, MariaDB
    )
    if code is None:
        return type(exc).__name__
    words = _SQLITE_WORDS.get(str(code))
    return f"{type(exc).__name__} ({code}{': ' + words if words else ''})"
