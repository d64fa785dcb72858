"""Verify the ledger, in the state database or in an export, and say what is wrong and where.

What is checked:

- every entry is re-hashed (SHA-256(0x00 || entry)) and the tree rebuilt as RFC 6962 defines it;
- seq numbers run from 0 without gaps, and each entry's seq field is its position;
- in the state database, each entry matches the leaf hash stored beside it (this locates an edit);
- every checkpoint's signature checks under the ledger's key, its origin is the ledger's, its
  columns agree with its signed note, and the rebuilt tree has exactly its root at its size: the
  checkpoints are thereby consistent with each other and with the entries (stronger than a
  consistency proof, which `merkle` also provides for auditors holding only two checkpoints);
- the `ledger_head` row (size, root, right edge) agrees with the entries;
- entries not covered by any signed checkpoint are fully re-parsed and re-canonicalised (known
  fields, canonical form, seq field, origin) and compared with their stored leaf hash. Entries
  covered by one were, at signing time: `store.write_checkpoint` re-checks every entry appended
  since the previous checkpoint before it signs, and afterwards the signed root pins their bytes, so
  the pass over them only hashes (that is what makes `verify` fast; on a long ledger, worker
  processes share it, see `fanout`). Any disagreement (a root, a gap) triggers a second pass that
  checks every entry from where the trees diverge, to say exactly where. ``deep=True`` checks every
  entry's form in the first pass.

What an insider with write access to the state database, but not to the signing key, can do:

- cannot change, remove, insert or reorder an entry covered by a checkpoint, nor forge or replace a
  checkpoint: the root or the signature no longer checks (reported with the seq range concerned,
  and the exact seq where the stored leaf hash or the seq field betrays it);
- cannot truncate the log below a checkpoint: the checkpoint then covers more entries than remain;
- cannot roll the checkpoint table back to an older checkpoint unnoticed on the machine that signs:
  a copy of the newest checkpoint is kept beside the signing key, outside the database (see
  `signing`); the database's checkpoints must reach it and agree with it. Elsewhere (another
  machine, copy missing) `verify` says that a rollback cannot be ruled out;
- can append well-formed entries, or rewrite entries that no checkpoint covers yet, exactly as the
  daemon would: nothing tells those apart until they are signed. A checkpoint is written after every
  run and at least every `checkpoint_interval`, which bounds that window, and `verify` reports how
  many entries are not signed yet.

An export (entries.jsonl, checkpoint, ledger.pub) is checked with nothing else: every entry must be
covered by its checkpoint, so an edited, removed, inserted, reordered or appended line, a truncated
file, a checkpoint signed by another key or an older checkpoint are all reported. Whoever replaces
both the checkpoint and the public key is only caught by comparing the key id `verify` prints with
the one published by the ledger's owner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from retentiond.ledger.fanout import Fanout, Reader, Span, hash_spans, machine_fanout, spans_of
from retentiond.ledger.merkle import CompactRange
from retentiond.ledger.note import (
    Checkpoint,
    NoteError,
    Verifier,
    open_checkpoint,
    parse_verifier_key,
)
from retentiond.ledger.scan import Findings, Scan, hash_tree, scan_entries, span
from retentiond.ledger.store import (
    Head,
    StoredCheckpoint,
    iter_entries,
    last_seq,
    leaf_input_batches,
    list_checkpoints,
    read_head,
    seq_span,
)
from retentiond.state.db import create_state_engine

ENTRIES_FILE = "entries.jsonl"
CHECKPOINT_FILE = "checkpoint"
PUBLIC_KEY_FILE = "ledger.pub"
_EXPORT_BATCH = 1 << 18  # bytes of entries.jsonl read at a time: hashed while still in cache
_ENTRY_BYTES = 512  # a run's entry, with its digests: how many lines a file of this size holds


@dataclass
class Report:
    """The outcome of a verification: problems (tampering) and notes (facts worth knowing)."""

    key_id: str
    entries: int = 0
    checkpoints: int = 0
    latest: Checkpoint | None = None
    findings: Findings = field(default_factory=Findings)
    notes: list[str] = field(default_factory=list)
    processes: int = 1  # that hashed the entries covered by checkpoints

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.findings

    def take(self, findings: Findings) -> None:
        """Add the problems a scan found."""
        for problem in findings.problems:
            self.findings.add(problem.where, problem.what)
        self.findings.suppressed += findings.suppressed


@dataclass(frozen=True)
class _Signed:
    label: str  # "checkpoint #7", "the kept checkpoint copy", "the checkpoint"
    checkpoint: Checkpoint


def _check_roots(signed: list[_Signed], roots: dict[int, bytes], size: int, report: Report) -> int:
    """Compare each signed root with the rebuilt tree; returns the first seq that may be bad."""
    suspect = size
    good = 0
    for item in sorted(signed, key=lambda s: s.checkpoint.tree_size):
        cp = item.checkpoint
        if cp.tree_size > size:
            report.findings.add(
                span(size, cp.tree_size - 1),
                f"missing: {item.label} covers {cp.tree_size} entries, only {size} remain",
            )
            suspect = min(suspect, good)  # removed lines may be anywhere after the last good root
        elif roots.get(cp.tree_size) != cp.root_hash:
            report.findings.add(
                span(good, cp.tree_size - 1),
                f"the entries no longer hash to the root signed in {item.label} "
                "(changed, removed, inserted or reordered)",
            )
            suspect = min(suspect, good)
        else:
            good = cp.tree_size
    return suspect


def _signed_checkpoints(
    stored: list[StoredCheckpoint], verifier: Verifier, origin: str, report: Report
) -> list[_Signed]:
    """The stored checkpoints whose signature checks; problems with the others are reported."""
    signed: list[_Signed] = []
    largest = 0
    for row in stored:
        label = f"checkpoint #{row.id}"
        try:
            cp = open_checkpoint(row.note, verifier)
        except NoteError as exc:
            report.findings.add(label, str(exc))
            continue
        if cp.origin != origin:
            report.findings.add(label, "signed for another origin")
        if (cp.tree_size, cp.root_hash) != (row.tree_size, row.root_hash):
            report.findings.add(label, "its columns disagree with its signed note")
        if cp.tree_size < largest:
            report.findings.add(label, "covers fewer entries than an earlier checkpoint")
        largest = max(largest, cp.tree_size)
        signed.append(_Signed(label, cp))
    return signed


def _kept_copy(
    local_copy: str | None, verifier: Verifier, largest: int, report: Report
) -> list[_Signed]:
    """Check the checkpoint kept beside the signing key against the database's newest one."""
    if local_copy is None:
        if largest:
            report.notes.append(
                "no copy of the newest checkpoint beside the signing key: a rollback of the "
                "checkpoint table cannot be ruled out here"
            )
        return []
    try:
        kept = open_checkpoint(local_copy, verifier)
    except NoteError as exc:
        report.findings.add("kept checkpoint copy", str(exc))
        return []
    if kept.tree_size > largest:
        report.findings.add(
            "checkpoints",
            f"the newest signed checkpoint (size {kept.tree_size}, kept beside the signing key) "
            f"is missing: the checkpoint table was rolled back to size {largest}",
        )
    return [_Signed("the kept checkpoint copy", kept)]


def _seq_gaps(conn: Connection, covered: int, read: int, findings: Findings) -> None:
    """Say whether seq 0..covered-1 has gaps, when the fast pass read another number of entries.

    seq is a unique integer, so `covered` entries below `covered` are exactly 0..covered-1: only
    a short read needs this (slower) aggregate query to tell gaps from a truncated tail.
    """
    if read == covered:
        return
    count, low, high = seq_span(conn, covered)
    if count and (low != 0 or high != count - 1):
        findings.add(f"seq 0-{covered - 1}", "seq numbers have gaps (entries removed)")


def _state_reader(url: URL) -> Callable[[], Reader]:
    def open_reader() -> Reader:
        # In a worker: an engine of its own, so that no connection of the caller is ever used (or
        # closed) there.
        engine: Engine = create_state_engine(url)

        def read(first: int, end: int) -> Iterator[list[bytes]]:
            with engine.connect() as conn:
                yield from leaf_input_batches(conn, first, end)

        return read

    return open_reader


def _hash_shared(
    shared: bool,
    spans: Iterable[Span],
    open_reader: Callable[[], Reader],
    serial: Iterable[list[bytes]],
    at_sizes: set[int],
    fanout: Fanout,
    report: Report,
) -> tuple[CompactRange, dict[int, bytes]]:
    """The tree hashed by worker processes over `spans` when `shared` says they pay, otherwise
    (or when the fan-out gives up) in one pass over `serial`. Both iterables are lazy: only the
    one used is read."""
    if shared:
        hashed = hash_spans(spans, open_reader, fanout=fanout, at_sizes=at_sizes)
        if hashed is not None:
            report.processes = fanout.workers
            return hashed
    return hash_tree(serial, at_sizes=at_sizes)


def _hash_covered(
    conn: Connection, covered: int, sizes: set[int], fanout: Fanout, report: Report
) -> tuple[CompactRange, dict[int, bytes]]:
    """The tree of the entries below `covered` (those checkpoints cover): hashing only."""
    url = conn.engine.url
    separate = url.get_backend_name() != "sqlite" or url.database not in (None, "", ":memory:")
    return _hash_shared(
        separate and fanout.worth(covered),
        spans_of(covered, fanout.block),
        _state_reader(url),
        leaf_input_batches(conn, 0, covered),
        sizes,
        fanout,
        report,
    )


def verify_state(
    conn: Connection,
    verifier: Verifier,
    *,
    local_copy: str | None = None,
    deep: bool = False,
    fanout: Fanout | None = None,
) -> Report:
    """Verify the ledger of a state database against the ledger's verifier key.

    `local_copy` is the checkpoint kept beside the signing key, read before this call: reads go
    copy, checkpoints, head, entries, so that appends and checkpoints made meanwhile by a running
    daemon are never mistaken for tampering. `fanout` shares the hashing of a long ledger among
    worker processes (by default, one per core, up to two).
    """
    report = Report(key_id=verifier.key_id)
    stored = list_checkpoints(conn)
    head = read_head(conn)
    origin = verifier.name if head is None else head.origin
    if head is None and stored:
        report.findings.add("ledger head", "missing while checkpoints exist")
    if verifier.name != origin:
        report.findings.add("signing key", f"belongs to {verifier.name!r}, not to {origin!r}")
    signed = _signed_checkpoints(stored, verifier, origin, report)
    largest = max((item.checkpoint.tree_size for item in signed), default=0)
    report.checkpoints = len(signed)
    report.latest = signed[-1].checkpoint if signed else None
    signed += _kept_copy(local_copy, verifier, largest, report)
    end = None if head is None else head.tree_size
    covered = 0 if deep else min(largest, end or 0)
    sizes = {item.checkpoint.tree_size for item in signed}
    fanout = machine_fanout() if fanout is None else fanout
    edge, roots = _hash_covered(conn, covered, sizes, fanout, report)
    gaps = Findings()
    _seq_gaps(conn, covered, edge.size, gaps)
    tail = scan_entries(
        iter_entries(conn, edge.size, end),
        start=edge,
        origin=origin,
        at_sizes=sizes,
        check_from=edge.size,
    )
    roots.update(tail.roots)
    size = tail.edge.size
    report.entries = size
    suspect = _check_roots(signed, roots, size, report)
    scan: Scan = tail
    if gaps or suspect < edge.size:
        # Locate the damage: check every entry, its form and its stored leaf hash, from there.
        scan = scan_entries(
            iter_entries(conn, 0, end), start=CompactRange(), origin=origin, check_from=suspect
        )
    report.take(scan.findings)
    if head is not None:
        if head.tree_size != size:
            report.findings.add(
                "ledger head", f"records {head.tree_size} entries, {size} are stored"
            )
        elif (head.frontier, head.root_hash) != (scan.edge.to_bytes(), scan.edge.root()):
            report.findings.add("ledger head", "its tree disagrees with the entries")
    _check_beyond_head(conn, head, report)
    if size > largest:
        report.notes.append(
            f"{size - largest} entries from seq {largest} on are not signed yet "
            "(their form was checked)"
        )
    return report


def _check_beyond_head(conn: Connection, head: Head | None, report: Report) -> None:
    """Entries past the head are either appended meanwhile (the head moved) or planted."""
    last = last_seq(conn)
    size = 0 if head is None else head.tree_size
    if last is None or last < size:
        return
    now = read_head(conn)
    if now is None or now.tree_size <= last:
        report.findings.add(span(size, last), "stored beyond the ledger head (inserted)")
    else:
        report.notes.append(f"{last + 1 - size} entries were appended during verification")


def export_leaf_inputs(
    path: Path, chunk: int = _EXPORT_BATCH, span: tuple[int, int] | None = None
) -> Iterator[list[bytes]]:
    """0x00 || line for each line of entries.jsonl, a batch at a time (the fast read).

    One replace puts the prefix after every newline and one split cuts the lines: no Python step
    per line. A last line without its newline is an entry too, an empty line an empty entry.
    `span` limits the read to bytes [first, end), which must start a line.
    """
    first, end = span or (0, None)
    # The start of a line that a later chunk ends, joined once: a long line costs no quadratic copy.
    held = [b"\x00"]
    with open(path, "rb", buffering=0) as handle:
        handle.seek(first)
        left = None if end is None else end - first
        while data := handle.read(chunk if left is None else min(chunk, left)):
            if left is not None:
                left -= len(data)
            pieces = data.replace(b"\n", b"\n\x00").split(b"\n")
            if len(pieces) == 1:
                held.append(data)
                continue
            held.append(pieces[0])
            pieces[0] = b"".join(held)
            held = [pieces.pop()]
            yield pieces
    last = b"".join(held)
    if last != b"\x00":
        yield [last]


def export_spans(path: Path, block: int, chunk: int = 1 << 20) -> Iterator[Span]:
    """(first byte, end byte, lines) of each run of `block` lines of entries.jsonl, then the rest.

    Lines as `export_leaf_inputs` cuts them. Newlines are counted in C, a chunk at a time; only
    in the chunk where a run ends are they found one by one.
    """
    start = lines = offset = 0  # where the current run starts, its newlines, bytes read
    ends_line = True
    with open(path, "rb", buffering=0) as handle:
        while data := handle.read(chunk):
            count = data.count(b"\n")
            at = 0
            while lines + count >= block:
                for _ in range(block - lines):
                    at = data.index(b"\n", at) + 1
                count -= block - lines
                yield start, offset + at, block
                start, lines = offset + at, 0
            lines += count
            offset += len(data)
            ends_line = data.endswith(b"\n")
    if offset > start:
        yield start, offset, lines if ends_line else lines + 1


def _export_reader(path: Path) -> Callable[[], Reader]:
    def open_reader() -> Reader:
        return lambda first, end: export_leaf_inputs(path, span=(first, end))

    return open_reader


def _hash_export(
    path: Path, at_sizes: set[int], fanout: Fanout, report: Report
) -> tuple[CompactRange, dict[int, bytes]]:
    """The tree of every line of entries.jsonl: hashing only."""
    # The size tells whether workers pay: lines are counted only while the workers hash.
    return _hash_shared(
        fanout.worth(path.stat().st_size // _ENTRY_BYTES),
        export_spans(path, fanout.block),
        _export_reader(path),
        export_leaf_inputs(path),
        at_sizes,
        fanout,
        report,
    )


def _export_rows(path: Path) -> Iterator[tuple[int, bytes, bytes | None]]:
    seq = 0
    for batch in export_leaf_inputs(path):
        for piece in batch:
            yield seq, piece[1:], None
            seq += 1


def verify_export(
    directory: Path,
    *,
    public_key: str | None = None,
    deep: bool = False,
    fanout: Fanout | None = None,
) -> Report:
    """Verify an export with nothing but its files (or another public key given by the auditor).

    `fanout` as for `verify_state`.
    """
    report = Report(key_id="?")
    paths = {name: directory / name for name in (ENTRIES_FILE, CHECKPOINT_FILE, PUBLIC_KEY_FILE)}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if public_key is not None and PUBLIC_KEY_FILE in missing:
        missing.remove(PUBLIC_KEY_FILE)
    if missing:
        report.findings.add("export", f"missing file(s): {', '.join(missing)}")
        return report
    try:
        key_text = public_key or paths[PUBLIC_KEY_FILE].read_text(encoding="utf-8")
        verifier = parse_verifier_key(key_text)
    except (NoteError, UnicodeDecodeError) as exc:
        report.findings.add(PUBLIC_KEY_FILE, f"unreadable public key ({exc})")
        return report
    report.key_id = verifier.key_id
    try:
        cp = open_checkpoint(paths[CHECKPOINT_FILE].read_text(encoding="utf-8"), verifier)
    except (NoteError, UnicodeDecodeError) as exc:
        report.findings.add(CHECKPOINT_FILE, str(exc))
        return report
    if cp.origin != verifier.name:
        report.findings.add(CHECKPOINT_FILE, "its origin is not the key's name")
    report.checkpoints, report.latest = 1, cp
    entries = paths[ENTRIES_FILE]
    # Every line must be covered by the checkpoint: hash them all, then look at what is past it.
    fanout = machine_fanout() if fanout is None else fanout
    edge, roots = _hash_export(entries, {cp.tree_size}, fanout, report)
    report.entries = edge.size
    suspect = _check_roots([_Signed("the checkpoint", cp)], roots, edge.size, report)
    if edge.size > cp.tree_size:
        report.findings.add(
            span(cp.tree_size, edge.size - 1),
            "not covered by the signed checkpoint (added lines, or an older checkpoint)",
        )
    if deep or suspect < edge.size:
        # Check every line's form from where the tree diverges, to say which lines are wrong.
        first = 0 if deep else suspect
        scan = scan_entries(
            _export_rows(entries), start=CompactRange(), origin=cp.origin, check_from=first
        )
        report.take(scan.findings)
    return report
