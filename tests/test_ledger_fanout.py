"""The fast pass of `verify` shared among worker processes builds exactly the single pass's tree.

Workers hash whole blocks and the caller folds them; blocks that do not hold what their span says
make the caller fall back to the single pass. Exports are cut into runs of lines the way the
single pass reads them, whatever the line endings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retentiond.ledger.fanout import Fanout, Reader, hash_spans, spans_of
from retentiond.ledger.merkle import CompactRange, leaf_hash, root_of
from retentiond.ledger.scan import hash_tree
from retentiond.ledger.verify import export_leaf_inputs, export_spans
from tests.ledger_support import EXPORT_CONTENTS

ENTRIES = [b'{"seq":%d}' % i for i in range(300)]


def memory_reader(entries: dict[int, bytes]) -> Reader:
    """Like the state database: the entries whose seq is in [first, end), in batches of 3."""

    def read(first: int, end: int) -> Iterator[list[bytes]]:
        rows = [b"\x00" + entries[seq] for seq in range(first, end) if seq in entries]
        for start in range(0, len(rows), 3):
            yield rows[start : start + 3]

    return read


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=25)
@given(
    st.integers(1, 300),
    st.sampled_from([1, 2, 4, 16, 64]),
    st.sets(st.integers(0, 310), max_size=8),
)
def test_workers_build_the_tree_and_roots_of_the_single_pass(
    size: int, block: int, wanted: set[int]
) -> None:
    entries = ENTRIES[:size]
    single_edge, single_roots = hash_tree([[b"\x00" + data for data in entries]], at_sizes=wanted)
    hashed = hash_spans(
        spans_of(size, block),
        lambda: memory_reader(dict(enumerate(entries))),
        fanout=Fanout(workers=2, block=block),
        at_sizes=wanted,
    )
    assert hashed is not None
    edge, roots = hashed
    leaves = [leaf_hash(data) for data in entries]
    assert (edge.size, edge.to_bytes()) == (single_edge.size, single_edge.to_bytes())
    assert edge.root() == root_of(leaves)
    assert roots == single_roots
    assert roots == {s: root_of(leaves[:s]) for s in wanted if s <= size}


def test_a_block_short_of_its_span_ends_the_fanout() -> None:
    # Seq 37 missing: the block holding it comes back short, the caller makes the single pass.
    entries = {seq: data for seq, data in enumerate(ENTRIES[:100]) if seq != 37}
    spans = spans_of(100, 8)
    hashed = hash_spans(
        spans, lambda: memory_reader(entries), fanout=Fanout(workers=2, block=8), at_sizes={64}
    )
    assert hashed is None


def test_an_error_in_a_worker_reaches_the_caller() -> None:
    def failing() -> Reader:
        def read(first: int, end: int) -> Iterator[list[bytes]]:
            raise OSError(f"cannot read {first}-{end}")
            yield []

        return read

    with pytest.raises(OSError, match="cannot read"):
        hash_spans(spans_of(40, 8), failing, fanout=Fanout(workers=2, block=8))


@pytest.mark.parametrize("content", EXPORT_CONTENTS)
def test_export_runs_of_lines_cut_as_the_single_pass_reads(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "entries.jsonl"
    path.write_bytes(content)
    lines = [piece for batch in export_leaf_inputs(path) for piece in batch]
    for block in (1, 2, 4):
        for chunk in (1, 3, 1 << 20):
            spans = list(export_spans(path, block, chunk))
            assert [leaves for _, _, leaves in spans[:-1]] == [block] * (len(spans) - 1)
            assert sum(leaves for _, _, leaves in spans) == len(lines), (block, chunk)
            runs = [
                [p for batch in export_leaf_inputs(path, 2, (first, end)) for p in batch]
                for first, end, _ in spans
            ]
            assert [len(run) for run in runs] == [leaves for _, _, leaves in spans]
            assert [p for run in runs for p in run] == lines, (block, chunk)


def test_an_export_hashed_by_workers_has_the_tree_of_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "entries.jsonl"
    path.write_bytes(b"\n".join(ENTRIES[:77]) + b"\n")
    hashed = hash_spans(
        export_spans(path, 8),
        lambda: lambda first, end: export_leaf_inputs(path, span=(first, end)),
        fanout=Fanout(workers=2, block=8),
        at_sizes={50, 77},
    )
    assert hashed is not None
    expected = CompactRange()
    expected.extend(leaf_hash(data) for data in ENTRIES[:77])
    assert hashed[0].to_bytes() == expected.to_bytes()
    assert hashed[1] == {50: root_of([leaf_hash(d) for d in ENTRIES[:50]]), 77: expected.root()}
