"""Keyed digests of deleted keys: order-free, mergeable, and recomputable by the key holder only."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retentiond.ledger.digest import PREFIX, KeyDigest, row_item

KEY = bytes(range(32))


def digest_of(items: list[bytes], key: bytes = KEY) -> KeyDigest:
    digest = KeyDigest(key)
    digest.update(items)
    return digest


def test_the_digest_is_the_sum_of_hmacs_modulo_2_256() -> None:
    items = [b"[40211]", b"[40212]", os.fsencode("exports/2026/patients.csv")]
    expected = sum(int.from_bytes(hmac.digest(KEY, i, "sha256"), "big") for i in items) % 2**256
    digest = digest_of(items)
    assert digest.hexdigest() == PREFIX + format(expected, "064x")
    assert digest.count == 3


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=30), unique=True, max_size=40), st.randoms())
def test_order_and_batching_do_not_matter(items: list[bytes], rnd: object) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    whole = digest_of(items)
    batched = KeyDigest(KEY)
    for start in range(0, len(shuffled), 7):
        batch = KeyDigest(KEY)
        for item in shuffled[start : start + 7]:
            batch.add(item)
        batched.merge(batch)
    assert batched.hexdigest() == whole.hexdigest()
    assert batched.count == whole.count == len(items)


def test_a_key_holder_proves_exactly_which_keys_went() -> None:
    deleted = [row_item([40000 + i]) for i in range(100)]
    recorded = digest_of(deleted).hexdigest()  # what the ledger entry says
    assert digest_of(list(reversed(deleted))).hexdigest() == recorded  # the same list
    assert digest_of(deleted[:-1]).hexdigest() != recorded  # one key short
    assert digest_of([*deleted[:-1], row_item([99999])]).hexdigest() != recorded  # one key swapped
    assert digest_of(deleted, key=os.urandom(32)).hexdigest() != recorded  # without the key


def test_saved_batches_are_restored_and_merged() -> None:
    first, second = digest_of([b"a", b"b"]), digest_of([b"c"])
    total = KeyDigest.restore(KEY, first.hexdigest(), first.count)
    total.merge(second)
    assert total.hexdigest() == digest_of([b"a", b"b", b"c"]).hexdigest()
    assert total.count == 3


def test_digests_under_different_keys_do_not_merge_and_never_show_the_key() -> None:
    with pytest.raises(ValueError, match="different commitment keys"):
        digest_of([b"a"]).merge(digest_of([b"b"], key=b"k" * 32))
    with pytest.raises(ValueError):
        KeyDigest(b"short")
    assert KEY.hex() not in repr(digest_of([b"a"]))


def test_row_items_are_canonical_json_arrays() -> None:
    assert row_item([40211]) == b"[40211]"
    assert row_item(["Dupont", 3]) == b'["Dupont",3]'
    assert row_item(["Zoé"]) == '["Zoé"]'.encode()
    # An empty digest is well-formed: a run that deleted nothing.
    assert KeyDigest(KEY).hexdigest() == PREFIX + "0" * 64
    assert len(hashlib.sha256().hexdigest()) == 64
