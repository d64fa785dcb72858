"""Keeping one held lease alive while a run goes on in the caller's thread, then giving it back.

`retentiond apply` runs a rule in its main thread; a small thread renews the rule's lease every third
of its TTL meanwhile, so that a run longer than the TTL keeps it, and the lease is released when the
run ends, however it ends. The daemon renews from its main loop instead (daemon.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType

from retentiond.errors import describe_error
from retentiond.lease import Lease, LeaseBook

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews `lease` from a background thread until closed, then releases it.

    `on_lost` is called (from that thread) when the lease was lost: it expired while the state
    database was out of reach and another process took the rule. The run should then stop after
    its batch.
    """

    def __init__(
        self, book: LeaseBook, lease: Lease, ttl: timedelta, on_lost: Callable[[], None]
    ) -> None:
        self.book = book
        self.lease = lease
        self.ttl = ttl
        self.on_lost = on_lost
        self.lost = False
        self._closed = threading.Event()
        # Held while the lease is renewed or released, so that a release never uses a stale lease.
        self._guard = threading.Lock()
        self._thread = threading.Thread(
            target=self._renew_until_closed, name=f"lease-{lease.rule}", daemon=True
        )

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _renew_until_closed(self) -> None:
        while not self._closed.wait(self.ttl.total_seconds() / 3):
            with self._guard:
                if self._closed.is_set():
                    return
                try:
                    renewed = self.book.renew(self.lease, self.ttl)
                except Exception as exc:  # the state database is away: try again next time
                    log.warning(
                        "rule %s: cannot renew the lease yet: %s",
                        self.lease.rule,
                        describe_error(exc),
                    )
                    continue
                if renewed is None:
                    log.error("rule %s: lease lost; the run stops after its batch", self.lease.rule)
                    self.lost = True
                    self.on_lost()
                    return
                self.lease = renewed

    def close(self) -> None:
        """Stop renewing and release the lease (a lease that cannot be released expires)."""
        self._closed.set()
        with self._guard:
            if not self.lost:
                try:
                    self.book.release(self.lease)
                except Exception as exc:
                    log.warning(
                        "rule %s: cannot release the lease; it expires within %ds: %s",
                        self.lease.rule,
                        self.ttl.total_seconds(),
                        describe_error(exc),
                    )
        self._thread.join()
