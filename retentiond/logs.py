"""Logging to stderr in a form journald shows well (priority prefixes when run by systemd)."""

from __future__ import annotations

import logging
import os
import sys

# sd-daemon(3) priority prefixes: journald turns "<3>" into an error-level line.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(verbose: bool = False, level: str | None = None) -> None:
    """Send logs to stderr; under systemd (JOURNAL_STREAM set) use journald priorities."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    chosen = "debug" if verbose else (level or "info")
    root.setLevel(getattr(logging, chosen.upper()))
    for noisy in ("sqlalchemy", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A pooled connection whose server went away fails its reset and is discarded; the pool logs
    # the driver's traceback at ERROR although nothing failed. What does fail reaches our code.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
