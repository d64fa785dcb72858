"""The RFC 6962 tree: the reference test vectors, proofs, and the append-only right edge."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retentiond.ledger import merkle
from retentiond.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_roots,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The inputs and expected hashes used by the RFC 6962 reference implementations (certificate
# transparency, Trillian): eight leaves, the root of every prefix, and some audit paths.
LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
HASHES = [leaf_hash(leaf) for leaf in LEAVES]


def reference_root(leaves: list[bytes]) -> bytes:
    """MTH exactly as RFC 6962 section 2.1 writes it, recursively, from leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


def test_hash_prefixes_follow_the_rfc() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    )
    assert ROOTS[0] == EMPTY_ROOT


@pytest.mark.parametrize("size", range(9))
def test_roots_of_every_prefix_match_the_vectors(size: int) -> None:
    assert root_of(HASHES[:size]) == ROOTS[size]
    edge = CompactRange()
    edge.extend(HASHES[:size])
    assert edge.root() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_match_and_verify(index: int, size: int, path: list[str]) -> None:
    proof = inclusion_proof(HASHES, index, size)
    assert [h.hex() for h in proof] == path
    verify_inclusion(index, size, HASHES[index], proof, ROOTS[size])


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_consistency_proofs_match_and_verify(first: int, second: int, path: list[str]) -> None:
    proof = consistency_proof(HASHES, first, second)
    assert [h.hex() for h in proof] == path
    verify_consistency(first, second, ROOTS[first], ROOTS[second], proof)


def test_wrong_inclusion_claims_are_refused() -> None:
    index, size = 5, 8
    proof = inclusion_proof(HASHES, index, size)
    wrong = [
        (index - 1, size, HASHES[index], proof, ROOTS[size]),  # another index
        (index + 1, size, HASHES[index], proof, ROOTS[size]),
        (index, size * 2, HASHES[index], proof, ROOTS[size]),  # another tree size
        (index, size // 2, HASHES[index], proof, ROOTS[size]),
        (index, size, leaf_hash(b"WrongLeaf"), proof, ROOTS[size]),
        (index, size, HASHES[index], proof, EMPTY_ROOT),
        (index, size, HASHES[index], proof[:-1], ROOTS[size]),  # truncated
        (index, size, HASHES[index], [*proof, ROOTS[size]], ROOTS[size]),  # trailing garbage
        (index, size, HASHES[index], [ROOTS[size], *proof], ROOTS[size]),  # leading garbage
        (index, size, HASHES[index], [EMPTY_ROOT, *proof[1:]], ROOTS[size]),  # one hash changed
        (8, 8, HASHES[index], proof, ROOTS[size]),  # outside the tree
    ]
    for args in wrong:
        with pytest.raises(ProofError):
            verify_inclusion(*args)


def test_wrong_consistency_claims_are_refused() -> None:
    proof = consistency_proof(HASHES, 6, 8)
    wrong = [
        (5, 8, ROOTS[6], ROOTS[8], proof),
        (7, 8, ROOTS[6], ROOTS[8], proof),
        (6, 16, ROOTS[6], ROOTS[8], proof),  # another tree size (sizes are bound by signatures)
        (6, 8, ROOTS[5], ROOTS[8], proof),  # a first tree that is not a prefix
        (6, 8, ROOTS[6], ROOTS[7], proof),
        (6, 8, ROOTS[8], ROOTS[6], proof),  # roots swapped
        (6, 8, ROOTS[6], ROOTS[8], []),
        (6, 8, ROOTS[6], ROOTS[8], proof[:-1]),
        (6, 8, ROOTS[6], ROOTS[8], [*proof, ROOTS[6]]),
        (6, 8, ROOTS[6], ROOTS[8], [proof[0], *proof]),
        (8, 6, ROOTS[8], ROOTS[6], proof),  # time travel
        (1, 1, ROOTS[1], ROOTS[2], []),  # same size, different roots
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),  # same size, a proof that should be empty
    ]
    for args in wrong:
        with pytest.raises(ProofError):
            verify_consistency(*args)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=70))
def test_any_tree_matches_the_recursive_definition(data: list[bytes]) -> None:
    leaves = [leaf_hash(d) for d in data]
    assert root_of(leaves) == reference_root(leaves)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.integers(1, 70), st.data())
def test_every_proof_of_any_tree_verifies(size: int, draw: st.DataObject) -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(size)]
    index = draw.draw(st.integers(0, size - 1))
    first = draw.draw(st.integers(0, size))
    root = reference_root(leaves)
    proof = inclusion_proof(leaves, index, size)
    verify_inclusion(index, size, leaves[index], proof, root)
    # The streaming computation (what `ledger proof` uses) gives the same path.
    assert range_roots(merkle.inclusion_ranges(index, size), iter(leaves)) == proof
    verify_consistency(
        first, size, reference_root(leaves[:first]), root, consistency_proof(leaves, first, size)
    )


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.integers(0, 300), st.integers(0, 40))
def test_the_right_edge_survives_storage_and_keeps_growing(size: int, more: int) -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(size + more)]
    edge = CompactRange()
    edge.extend(leaves[:size])
    stored = CompactRange.from_bytes(size, edge.to_bytes())
    assert len(edge.to_bytes()) == 32 * size.bit_count()
    stored.extend(leaves[size:])
    assert stored.root() == reference_root(leaves)


def test_a_right_edge_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="frontier"):
        CompactRange.from_bytes(3, b"\x00" * 32)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.integers(0, 300), st.sampled_from([1, 2, 4, 8, 32, 256]), st.data())
def test_the_block_builder_gives_the_rfc_tree_and_its_roots_at_any_size(
    size: int, block: int, draw: st.DataObject
) -> None:
    data = [b"%d" % i for i in range(size)]
    leaves = [leaf_hash(d) for d in data]
    assert merkle.hash_leaves(b"\x00" + d for d in data) == leaves
    wanted = draw.draw(st.sets(st.integers(0, size + 3), max_size=12))
    tree = merkle.TreeBuilder(wanted, block=block)
    # Leaves arrive in batches of any length, across block boundaries.
    cuts = sorted(draw.draw(st.lists(st.integers(0, size), max_size=6)))
    for start, end in zip([0, *cuts], [*cuts, size], strict=True):
        tree.add(leaves[start:end])
    assert tree.size == size
    edge = tree.finish()
    expected = CompactRange()
    expected.extend(leaves)
    assert (edge.size, edge.to_bytes(), edge.root()) == (size, expected.to_bytes(), root_of(leaves))
    assert edge.root() == reference_root(leaves)
    # Every size asked for that the tree reaches has its root; sizes beyond it have none.
    assert tree.roots == {s: reference_root(leaves[:s]) for s in wanted if s <= size}


def test_the_block_builder_spans_many_default_blocks() -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(3 * (1 << 16) + 5)]
    sizes = {1, 1 << 16, (1 << 16) + 1, 2 * (1 << 16) - 1, 3 * (1 << 16) + 4, len(leaves)}
    tree = merkle.TreeBuilder(sizes)
    for start in range(0, len(leaves), 5000):
        tree.add(leaves[start : start + 5000])
    edge = tree.finish()
    expected = CompactRange()
    for size in range(1, len(leaves) + 1):
        expected.append(leaves[size - 1])
        if size in sizes:
            assert tree.roots[size] == expected.root(), size
    assert edge.to_bytes() == expected.to_bytes()


def test_a_block_size_that_is_not_a_power_of_two_is_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        merkle.TreeBuilder(block=3)
