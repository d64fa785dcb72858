"""The Merkle tree of RFC 6962 (section 2.1), its proofs and their verification; pure, no I/O.

Leaf hash SHA-256(0x00 || entry), node hash SHA-256(0x01 || left || right); the root of the empty
tree is SHA-256 of nothing. Proof verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import repeat

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256
# hashlib's HASH.digest, unbound: mapped over many hash objects, it hashes without a Python-level
# step per leaf or node, which is what bounds the speed of `verify`.
_digest = type(_sha256()).digest
_join = b"".join
_NODE_PREFIX = b"\x01"


class ProofError(ValueError):
    """A proof that does not verify, or arguments no proof can have."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one entry."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return _sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The right edge of a tree: the roots of its perfect subtrees, largest first.

    A tree of n leaves has one such root per set bit of n, so an append costs O(log n) hashes (one
    on average) without reading earlier leaves, and the edge serialises to a few hundred bytes.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError("a compact range holds one hash per set bit of its size")
        self.size = size
        self._hashes = list(hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        """Rebuild from `to_bytes` output."""
        if len(data) != HASH_SIZE * size.bit_count():
            raise ValueError("frontier length does not match the tree size")
        hashes = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
        return cls(size, hashes)

    def to_bytes(self) -> bytes:
        """The concatenated subtree roots, largest first."""
        return b"".join(self._hashes)

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange(self.size, self._hashes)

    def append(self, leaf: bytes) -> None:
        """Add the leaf hash `leaf` at index `size`."""
        hashes = self._hashes
        n = self.size
        while n & 1:
            leaf = _sha256(b"\x01" + hashes.pop() + leaf).digest()
            n >>= 1
        hashes.append(leaf)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append every leaf hash of `leaves`."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """The RFC 6962 root hash of the tree so far."""
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            root = _sha256(b"\x01" + left + root).digest()
        return root


def hash_leaves(prefixed: Iterable[bytes]) -> list[bytes]:
    """The leaf hashes of entries given already prefixed with 0x00, in order."""
    return list(map(_digest, map(_sha256, prefixed)))


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    # levels[k][j] is the root of the perfect subtree over leaves [j * 2**k, (j + 1) * 2**k). An
    # odd last node has no parent here: RFC 6962 splits at the largest power of two, so it belongs
    # to a smaller subtree of the compact range, never to a pair with its left neighbour's parent.
    levels = [leaves]
    level = leaves
    while len(level) > 1:
        pairs = zip(repeat(_NODE_PREFIX), level[0::2], level[1::2])
        level = list(map(_digest, map(_sha256, map(_join, pairs))))
        levels.append(level)
    return levels


def _edge_within(levels: list[list[bytes]], offset: int) -> list[bytes]:
    # The compact range of the first `offset` leaves of a block: one perfect subtree per set bit.
    return [
        levels[k][(offset >> k) - 1]
        for k in range(offset.bit_length() - 1, -1, -1)
        if offset >> k & 1
    ]


def block_edges(leaves: list[bytes], offsets: Iterable[int]) -> dict[int, list[bytes]]:
    """The compact range of the first `offset` leaves of a block, for each offset asked for.

    `leaves` start at a multiple of the block size. The range of all of them is always included:
    for a whole block (a power of two) it is its root alone, for a last, shorter block the tree's
    right edge. Offsets beyond the leaves get nothing. Hashing runs in C, with no Python step per
    leaf or node: this is what `verify` costs.
    """
    count = len(leaves)
    if not count:
        return {}
    levels = _levels(leaves)
    return {offset: _edge_within(levels, offset) for offset in {*offsets, count} if offset <= count}


class TreeBuilder:
    """Builds the RFC 6962 tree of a stream of leaf hashes, with its roots at chosen sizes.

    Leaves are taken in blocks of `block` (a power of two): each block is hashed level by level,
    which needs no Python step per node, and its root joins a compact range of whole blocks. The
    roots asked for at sizes inside a block come from that block's levels (no extra hashing), so
    any number of checkpoints costs O(log n) hashes each. Memory holds about two blocks of hashes.

    A block is a perfect subtree that no other leaf changes, so blocks may also be hashed
    elsewhere (`block_edges` over the sizes `offsets` names) and handed over in order with `take`.
    """

    __slots__ = ("_block", "_next", "_outer", "_pending", "_tail", "_tail_size", "_wanted", "roots")

    def __init__(self, at_sizes: Collection[int] = (), *, block: int = 1 << 16) -> None:
        if block < 1 or block & (block - 1):
            raise ValueError("the block size must be a power of two")
        self._block = block
        self._outer = CompactRange()  # one "leaf" per whole block
        self._pending: list[bytes] = []
        self._tail: list[bytes] | None = None  # the edge of a last block short of a whole one
        self._tail_size = 0
        self._wanted = sorted({size for size in at_sizes if size > 0})
        self._next = 0  # index of the first wanted size not reached yet
        self.roots: dict[int, bytes] = {0: EMPTY_ROOT} if 0 in at_sizes else {}

    @property
    def block(self) -> int:
        """Leaves per block."""
        return self._block

    @property
    def size(self) -> int:
        """Leaves added so far."""
        return self._outer.size * self._block + self._tail_size + len(self._pending)

    def offsets(self, index: int) -> list[int]:
        """The sizes asked for inside block `index`, as offsets from its first leaf."""
        base = index * self._block
        start = bisect_right(self._wanted, base)
        stop = bisect_right(self._wanted, base + self._block, lo=start)
        return [size - base for size in self._wanted[start:stop]]

    def add(self, leaves: Iterable[bytes]) -> None:
        """Append these leaf hashes."""
        pending = self._pending
        pending.extend(leaves)
        block = self._block
        if len(pending) < block:
            return
        whole = len(pending) - len(pending) % block
        for start in range(0, whole, block):
            chunk = pending[start : start + block]
            self._fold(block, block_edges(chunk, self.offsets(self._outer.size)))
        del pending[:whole]

    def take(self, count: int, edges: Mapping[int, Sequence[bytes]]) -> None:
        """Append the next block, of `count` leaves, as `block_edges` gave it with `offsets`.

        Only the last block may be short of a whole one, and leaves given to `add` must have
        made whole blocks.
        """
        if self._pending:
            raise ValueError("blocks are taken only after whole blocks of leaves")
        self._fold(count, edges)

    def _fold(self, count: int, edges: Mapping[int, Sequence[bytes]]) -> None:
        if self._tail is not None or not 0 <= count <= self._block:
            raise ValueError("only the last block may be short of a whole block")
        base = self._outer.size * self._block
        whole = count == self._block
        # Inside the block: the whole blocks' edge, then the block's own perfect subtrees.
        for size in self._reach(base + count - 1 if whole else base + count):
            hashes = [*self._outer._hashes, *edges[size - base]]
            self.roots[size] = CompactRange(size, hashes).root()
        if whole:
            self._outer.append(edges[count][0])
            for size in self._reach(base + count):
                self.roots[size] = self._outer.root()
        else:
            self._tail = list(edges.get(count, ()))
            self._tail_size = count

    def _reach(self, end: int) -> list[int]:
        # The wanted sizes up to `end` not reached before.
        stop = bisect_right(self._wanted, end, lo=self._next)
        sizes = self._wanted[self._next : stop]
        self._next = stop
        return sizes

    def finish(self) -> CompactRange:
        """The tree's right edge after every leaf added (the roots asked for are in `roots`)."""
        if self._pending:
            tail = self._pending
            self._pending = []
            self._fold(len(tail), block_edges(tail, self.offsets(self._outer.size)))
        return CompactRange(self.size, [*self._outer._hashes, *(self._tail or ())])


def root_of(leaves: Iterable[bytes]) -> bytes:
    """The root hash of a tree with these leaf hashes (MTH of RFC 6962)."""
    edge = CompactRange()
    edge.extend(leaves)
    return edge.root()


def _split(n: int) -> int:
    # The largest power of two smaller than n (n >= 2): where RFC 6962 splits a tree.
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges [start, end) whose roots form PATH(index, D[size]), leaf side first."""
    if not 0 <= index < size:
        raise ProofError("the index must be inside the tree")
    path: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append((start + k, end))
            end = start + k
        else:
            path.append((start, start + k))
            start += k
    path.reverse()
    return path


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form PROOF(first, D[second]) of RFC 6962 section 2.1.2."""
    if not 0 <= first <= second:
        raise ProofError("the first tree must not be larger than the second")
    if first in (0, second):
        return []
    path: list[tuple[int, int]] = []
    m, start, end, whole = first, 0, second, True
    while True:
        n = end - start
        if m == n:
            if not whole:
                path.append((start, end))
            break
        k = _split(n)
        if m <= k:
            path.append((start + k, end))
            end = start + k
        else:
            path.append((start, start + k))
            m -= k
            start += k
            whole = False
    path.reverse()
    return path


def range_roots(ranges: Sequence[tuple[int, int]], leaves: Iterable[bytes]) -> list[bytes]:
    """The root of each range, reading the leaf hashes once, in order, from index 0."""
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    roots: list[bytes] = [b""] * len(ranges)
    pending = iter(order)
    current = next(pending, None)
    edge = CompactRange()
    for position, leaf in enumerate(leaves):
        if current is None:
            break
        start, end = ranges[current]
        if position < start:
            continue
        edge.append(leaf)
        if position + 1 == end:
            roots[current] = edge.root()
            edge = CompactRange()
            current = next(pending, None)
    if current is not None:
        raise ProofError("fewer leaves than the proof needs")
    return roots


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) over these leaf hashes."""
    return [root_of(leaves[a:b]) for a, b in inclusion_ranges(index, size)]


def consistency_proof(leaves: Sequence[bytes], first: int, second: int) -> list[bytes]:
    """PROOF(first, D[second]) over these leaf hashes."""
    return [root_of(leaves[a:b]) for a, b in consistency_ranges(first, second)]


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` gives for `leaf` at `index` in a tree of `size` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError("the index must be inside the tree")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != HASH_SIZE or sn == 0:
            raise ProofError("inclusion proof has the wrong shape")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `proof` shows `leaf` at `index` under `root`."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless `proof` shows that tree `second` extends tree `first`.

    RFC 9162 section 2.1.4.2; the empty tree is consistent with any tree.
    """
    if not 0 <= first <= second:
        raise ProofError("the first tree must not be larger than the second")
    if first == second:
        if proof or first_root != second_root:
            raise ProofError("trees of one size must have one root and an empty proof")
        return
    if first == 0:
        if proof:
            raise ProofError("the empty tree needs an empty proof")
        return
    if not proof or any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("consistency proof has the wrong shape")
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != first_root or sr != second_root:
        raise ProofError("consistency proof does not lead to both roots")
