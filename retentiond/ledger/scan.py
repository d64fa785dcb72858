"""Passes over ledger entries: rebuild the tree, and say what is wrong and where.

Pure: entries come in order from the state database or an export. `hash_tree` is the fast pass
from seq 0 (hashing only, the cost of `verify`); `scan_entries` also checks each entry's form and
its stored leaf hash, for entries no signature covers yet, before signing, and to locate damage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from retentiond.ledger.entry import EntryError, parse_entry
from retentiond.ledger.merkle import CompactRange, TreeBuilder, hash_leaves

MAX_PROBLEMS = 50  # past this many, problems are counted, not listed: one bad edit can shift all


def span(first: int, last: int) -> str:
    """Where, for a range of entries: "seq 5" or "seq 5-9"."""
    return f"seq {first}" if first == last else f"seq {first}-{last}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the ledger: where (seq numbers, a checkpoint) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Findings:
    """What a scan found; problems are capped at MAX_PROBLEMS, `suppressed` counts the rest."""

    problems: list[Problem] = field(default_factory=list)
    suppressed: int = 0

    def add(self, where: str, what: str) -> None:
        """Record a problem."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(where, what))
        else:
            self.suppressed += 1

    def lines(self) -> list[str]:
        """The problems as lines for the user."""
        out = [str(p) for p in self.problems]
        if self.suppressed:
            out.append(f"... and {self.suppressed} more problems")
        return out

    def __bool__(self) -> bool:
        return bool(self.problems)


@dataclass
class Scan:
    """The tree built by a scan, the roots seen at the requested sizes, and the findings."""

    edge: CompactRange
    roots: dict[int, bytes]
    findings: Findings


def content_problem(data: bytes, seq: int, origin: str) -> str | None:
    """What is wrong with the content of the entry at `seq`, or None when it is sound."""
    try:
        obj = parse_entry(data)
    except EntryError as exc:
        return f"malformed entry ({exc})"
    if obj["seq"] != seq:
        return "its seq field is not its position (moved, inserted or removed entries)"
    if obj["origin"] != origin:
        return "its origin is not this ledger's"
    return None


def hash_tree(
    batches: Iterable[Iterable[bytes]], *, at_sizes: Collection[int] = ()
) -> tuple[CompactRange, dict[int, bytes]]:
    """The tree of these entries from seq 0, and its roots at the sizes asked for.

    Each batch holds entries already prefixed with 0x00 (the input of their leaf hash), so that
    neither the leaves nor the nodes need a Python step each: this pass is what `verify` costs.
    """
    tree = TreeBuilder(at_sizes)
    for batch in batches:
        tree.add(hash_leaves(batch))
    return tree.finish(), tree.roots


def scan_entries(
    rows: Iterable[tuple[int, bytes, bytes | None]],
    *,
    start: CompactRange,
    origin: str,
    at_sizes: Collection[int] = (),
    check_from: int = 0,
    findings: Findings | None = None,
) -> Scan:
    """Extend `start` (a copy is used) with `rows`, which must begin at seq `start.size`.

    Every entry is re-hashed and compared with its stored leaf hash (when there is one), and seq
    numbers must run without gaps. Entries at or after `check_from` are also re-parsed: canonical
    form, known fields, seq field equal to the position, origin. Those before it are covered by a
    signed checkpoint that checked them so before signing (see verify.py); any later change to them
    shows as a root that no longer matches, and the caller then scans again from there with
    `check_from` lowered to say where.
    """
    findings = Findings() if findings is None else findings
    edge = start.copy()
    hashes = edge._hashes  # the loop appends inline: this pass is the cost of `verify`
    sizes = set(at_sizes)
    roots: dict[int, bytes] = {}
    sha256 = hashlib.sha256
    size = edge.size
    expected = size
    if size in sizes:
        roots[size] = edge.root()
    for seq, data, stored in rows:
        if seq != expected:
            if seq > expected:
                findings.add(span(expected, seq - 1), "entries missing (removed or truncated)")
            else:
                findings.add(f"seq {seq}", "entry out of order")
        expected = seq + 1
        leaf = sha256(b"\x00" + data).digest()
        if stored is not None and stored != leaf:
            findings.add(f"seq {seq}", "entry does not match its stored leaf hash (edited)")
        if seq >= check_from:
            problem = content_problem(data, seq, origin)
            if problem is not None:
                findings.add(f"seq {seq}", problem)
        n = size
        while n & 1:
            leaf = sha256(b"\x01" + hashes.pop() + leaf).digest()
            n >>= 1
        hashes.append(leaf)
        size += 1
        if size in sizes:
            edge.size = size
            roots[size] = edge.root()
    edge.size = size
    return Scan(edge=edge, roots=roots, findings=findings)
