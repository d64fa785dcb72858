"""The fast pass of `verify` in worker processes: each hashes whole blocks, the caller folds them.

RFC 6962 splits a tree at powers of two, so a block of 2**k leaves that starts at a multiple of 2**k
is a perfect subtree: its root depends on its own leaves only. Workers read and hash blocks (leaves
and nodes: nearly all the CPU that `verify` spends) and send back a few hashes each; this process
folds them in order with `TreeBuilder.take`, which gives exactly the tree of the single pass.

Blocks are handed out one at a time, so when another program holds a core the other worker takes
more of them. A block that does not come back with the leaves its span promised (seq numbers
missing, a file changed meanwhile) or a worker that dies ends the fan-out with None: the caller then
makes the single pass, which reports what is wrong and where as it always did.

Workers are forked: they inherit how to read (nothing is pickled but spans and hashes) and open
their own connections or files; the caller's connection stays open, and so keeps its locks, until
they are done. Fork copies only the thread that calls it, so a process running other threads, which
might hold a lock at that moment, gets no workers.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from retentiond.ledger.merkle import CompactRange, TreeBuilder, block_edges, hash_leaves

MAX_WORKERS = 2  # measured on two cores only

# Where a block is (seq numbers, byte offsets: whatever the reader takes) and how many leaves it
# holds: (first, end, leaves). Every block but the last holds a whole block of leaves.
Span = tuple[int, int, int]
# (first, end) -> the block's entries as 0x00 || entry, in order, in batches.
Reader = Callable[[int, int], Iterable[Iterable[bytes]]]
Hashed = tuple[int, dict[int, list[bytes]]]


@dataclass(frozen=True)
class Fanout:
    """How the fast pass is shared among worker processes (1: no workers, this process does it)."""

    workers: int
    # Leaves per block, a power of two: 2**15 entries (about 18 MB) take a worker some 60 ms, so
    # the last block keeps one worker waiting little and handing blocks out costs little.
    block: int = 1 << 15
    min_blocks: int = 4  # fewer, and starting workers costs more than it saves

    def worth(self, leaves: int) -> bool:
        """Whether `leaves` leaves are worth workers."""
        return self.workers > 1 and leaves >= self.min_blocks * self.block


def machine_fanout() -> Fanout:
    """One worker per core this process may use, at most MAX_WORKERS; none on a single core."""
    return Fanout(workers=min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def spans_of(leaves: int, block: int) -> list[Span]:
    """The blocks of a tree of `leaves` leaves whose reader takes leaf (seq) numbers."""
    return [
        (first, min(first + block, leaves), min(block, leaves - first))
        for first in range(0, leaves, block)
    ]


_reader: Reader | None = None  # the worker's own, opened once when it starts


def _start_worker(open_reader: Callable[[], Reader]) -> None:
    global _reader
    _reader = open_reader()


def _hash_block(first: int, end: int, offsets: list[int]) -> Hashed:
    assert _reader is not None
    leaves: list[bytes] = []
    for batch in _reader(first, end):
        leaves += hash_leaves(batch)
    return len(leaves), block_edges(leaves, offsets)


def hash_spans(
    spans: Iterable[Span],
    open_reader: Callable[[], Reader],
    *,
    fanout: Fanout,
    at_sizes: Collection[int] = (),
) -> tuple[CompactRange, dict[int, bytes]] | None:
    """The tree of the blocks at `spans`, from leaf 0, and its roots at the sizes asked for.

    `open_reader` runs in each worker. None when a block did not hold the leaves its span says, a
    worker died, or this process runs other threads: the caller then makes the single pass.
    """
    if threading.active_count() > 1:
        return None
    tree = TreeBuilder(at_sizes, block=fanout.block)
    pool = ProcessPoolExecutor(
        fanout.workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(open_reader,),
    )
    waiting: deque[tuple[int, Future[Hashed]]] = deque()
    try:
        # Spans may come from a reader of their own (the lines of an export): blocks already
        # found are hashed meanwhile, and folded as soon as they are back.
        for index, (first, end, leaves) in enumerate(spans):
            waiting.append((leaves, pool.submit(_hash_block, first, end, tree.offsets(index))))
            while waiting and waiting[0][1].done():
                if not _fold(tree, *waiting.popleft()):
                    return None
        while waiting:
            if not _fold(tree, *waiting.popleft()):
                return None
    except BrokenProcessPool:
        return None
    finally:
        pool.shutdown(cancel_futures=True)
    return tree.finish(), tree.roots


def _fold(tree: TreeBuilder, leaves: int, future: Future[Hashed]) -> bool:
    count, edges = future.result()
    if count != leaves:
        return False
    tree.take(count, edges)
    return True
