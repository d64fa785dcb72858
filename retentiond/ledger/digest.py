"""Keyed digests of deleted keys and paths: proof of exactly what went, revealing nothing.

A ledger entry never carries a row key or a file name. It carries
``hmac-sha256-sum:<64 hex>``: the sum modulo 2**256 of HMAC-SHA256(commitment key, item) over the
items removed. The commitment key is a secret of the keystore, so the digest tells a reader of the
ledger nothing (not even whether a guessed key is among the items). Whoever holds the list of keys
(a court, the data-protection officer) and access to the keystore recomputes the digest with
`KeyDigest` and compares it with the entry's: equal digests and counts show that exactly those items
were deleted.

A sum is order-independent and can be merged, so that a run records its deletions batch by batch and
adds the batches up, in O(1) memory. Each item must be added once: a row or a file is deleted once,
and the stores add what they really removed. Item encodings:

- a SQL row: the canonical JSON array of its primary-key values (sorted keys, no spaces), UTF-8,
  see `row_item`;
- a file: its path relative to the store root, as raw bytes (``os.fsencode``);
- a sealed copy: its id, UTF-8.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from typing import Any

PREFIX = "hmac-sha256-sum:"
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_MODULUS = 1 << 256


def row_item(key_values: Sequence[Any]) -> bytes:
    """The digest item of a SQL row: the canonical JSON array of its primary-key values."""
    return json.dumps(
        list(key_values), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class KeyDigest:
    """An order-independent, mergeable keyed digest of a set of items."""

    __slots__ = ("_count", "_key", "_sum")

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the commitment key must be at least 16 bytes")
        self._key = bytes(key)
        self._sum = 0
        self._count = 0

    @classmethod
    def restore(cls, key: bytes, hexdigest: str, count: int) -> KeyDigest:
        """A digest as stored earlier (a batch's `hexdigest()` and `count`), to merge into."""
        if not hexdigest.startswith(PREFIX):
            raise ValueError("not a keyed digest")
        digest = cls(key)
        digest._sum = int(hexdigest.removeprefix(PREFIX), 16) % _MODULUS
        digest._count = count
        return digest

    def add(self, item: bytes) -> None:
        """Add one item (a row key, a relative path, a copy id), encoded as the module says."""
        self._sum += int.from_bytes(hmac.digest(self._key, item, "sha256"), "big")
        self._count += 1

    def update(self, items: Iterable[bytes]) -> None:
        """Add every item of `items`."""
        # HMAC-SHA256 from the key's inner and outer pad states, hashed once and copied per item:
        # the same value as hmac.digest, without re-deriving the pads for each of millions of keys.
        key = self._key if len(self._key) <= 64 else hashlib.sha256(self._key).digest()
        key = key.ljust(64, b"\0")
        inner_copy = hashlib.sha256(key.translate(_IPAD)).copy
        outer_copy = hashlib.sha256(key.translate(_OPAD)).copy
        total = 0
        count = 0
        for item in items:
            inner = inner_copy()
            inner.update(item)
            outer = outer_copy()
            outer.update(inner.digest())
            total += int.from_bytes(outer.digest(), "big")
            count += 1
        # Reducing once per batch instead of per item keeps the loop to one addition.
        self._sum = (self._sum + total) % _MODULUS
        self._count += count

    def merge(self, other: KeyDigest) -> None:
        """Add the items of `other` (a batch digested under the same key)."""
        if not hmac.compare_digest(self._key, other._key):
            raise ValueError("cannot merge digests made under different commitment keys")
        self._sum = (self._sum + other._sum) % _MODULUS
        self._count += other._count

    @property
    def count(self) -> int:
        """How many items were added."""
        return self._count

    def hexdigest(self) -> str:
        """The digest as written in ledger entries: ``hmac-sha256-sum:<64 hex>``."""
        return PREFIX + format(self._sum % _MODULUS, "064x")

    def __repr__(self) -> str:
        # Never the key; the digest alone reveals nothing.
        return f"KeyDigest(count={self._count}, {self.hexdigest()})"
