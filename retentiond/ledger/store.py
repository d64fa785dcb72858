"""The ledger in the state database: appends, checkpoints, and reading entries back.

Appends are serialized through the single `ledger_head` row, which keeps the tree's size, root and
right edge: an append locks it (PostgreSQL: SELECT ... FOR UPDATE; SQLite: a write first, so the
transaction holds the database's write lock before it reads), adds one leaf in O(log n) and updates
it. Two daemons on one PostgreSQL state database therefore still write one linear log. The lock is
held until the caller's transaction ends: append last, commit soon.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Connection, LargeBinary, bindparam, func, insert, literal, select, update
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects import postgresql, sqlite

from retentiond.errors import RetentiondError, VerificationError
from retentiond.ledger.entry import build_entry
from retentiond.ledger.merkle import EMPTY_ROOT, CompactRange, leaf_hash
from retentiond.ledger.note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    open_checkpoint,
    parse_signer_key,
    sign_checkpoint,
)
from retentiond.ledger.scan import scan_entries
from retentiond.state.models import ledger_checkpoint, ledger_entry, ledger_head

_HEAD_ID = 1
_PAGE = 10_000  # rows a PostgreSQL server-side cursor brings per round trip
_FAST_PAGE = 2048  # rows per batch of the fast read from a server: one round trip each
_LOCAL_PAGE = 128  # rows per batch from SQLite (no round trips): small enough to stay in cache
_first = itemgetter(0)

# Statements of the append path, built once: building them costs more than running them.
_HEAD = select(ledger_head).where(ledger_head.c.id == _HEAD_ID)
_TAKE_WRITE_LOCK = (
    update(ledger_head)
    .where(ledger_head.c.id == _HEAD_ID)
    .values(tree_size=ledger_head.c.tree_size)
)
_INSERT_ENTRY = insert(ledger_entry).values(
    seq=bindparam("new_seq"),
    entry=bindparam("new_entry"),
    leaf_hash=bindparam("new_leaf"),
    recorded_at=bindparam("new_time"),
)
_MOVE_HEAD = (
    update(ledger_head)
    .where(ledger_head.c.id == _HEAD_ID)
    .values(
        tree_size=bindparam("new_size"),
        root_hash=bindparam("new_root"),
        frontier=bindparam("new_frontier"),
        last_time=bindparam("new_last"),
    )
)
# PostgreSQL takes both writes in one statement (one round trip fewer while the head is locked).
_INSERT_AND_MOVE = _MOVE_HEAD.add_cte(_INSERT_ENTRY.cte("new_entry"))


class LedgerError(RetentiondError):
    """The ledger cannot be used as asked (not initialised, a key for another log)."""


@dataclass(frozen=True)
class Head:
    """The tree as the last append left it."""

    origin: str
    tree_size: int
    root_hash: bytes
    frontier: bytes
    last_time: datetime | None


@dataclass(frozen=True)
class StoredCheckpoint:
    """A row of `ledger_checkpoint`: the signed note and the tree's right edge at its size."""

    id: int
    tree_size: int
    root_hash: bytes
    note: str
    created_at: datetime
    frontier: bytes


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything the ledger stores is UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _head(conn: Connection, *, lock: bool) -> Head | None:
    query = _HEAD
    if lock:
        if conn.dialect.name == "sqlite":
            # A deferred SQLite transaction that reads and then writes fails with "database is
            # locked" when another process wrote meanwhile; writing first waits for the lock.
            conn.execute(_TAKE_WRITE_LOCK)
        query = _HEAD.with_for_update()
    row = conn.execute(query).one_or_none()
    if row is None:
        return None
    return Head(
        origin=row.origin,
        tree_size=row.tree_size,
        root_hash=bytes(row.root_hash),
        frontier=bytes(row.frontier),
        last_time=_aware(row.last_time),
    )


def read_head(conn: Connection) -> Head | None:
    """The ledger head, or None before `ensure_ledger`."""
    return _head(conn, lock=False)


def _locked_head(conn: Connection) -> Head:
    head = _head(conn, lock=True)
    if head is None:
        raise LedgerError("the ledger is not initialised; run `retentiond init`")
    return head


def ensure_ledger(conn: Connection, origin: str) -> None:
    """Create the empty ledger named `origin` if absent (idempotent; `init` calls it)."""
    values = {
        "id": _HEAD_ID,
        "origin": origin,
        "tree_size": 0,
        "root_hash": EMPTY_ROOT,
        "frontier": b"",
        "last_time": None,
    }
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(ledger_head).values(values).on_conflict_do_nothing())
    elif conn.dialect.name == "sqlite":
        conn.execute(sqlite.insert(ledger_head).values(values).on_conflict_do_nothing())
    elif read_head(conn) is None:
        conn.execute(insert(ledger_head).values(values))
    head = read_head(conn)
    assert head is not None
    if head.origin != origin:
        raise LedgerError(
            f"ledger.origin is {origin!r} but this state database's ledger is {head.origin!r}; "
            "a ledger keeps the name it was created with"
        )


def append_entry(conn: Connection, fields: Mapping[str, Any]) -> int:
    """Append an entry inside the caller's transaction (the caller commits); returns its seq.

    The ledger assigns seq, time and origin; `fields` holds the rest (see entry.ENTRY_FIELDS).
    """
    head = _locked_head(conn)
    now = datetime.now(UTC)
    seq = head.tree_size
    data = build_entry(fields, seq=seq, time=now, origin=head.origin)
    leaf = leaf_hash(data)
    edge = CompactRange.from_bytes(seq, head.frontier)
    edge.append(leaf)
    params = {
        "new_seq": seq,
        "new_entry": data.decode("utf-8"),
        "new_leaf": leaf,
        "new_time": now,
        "new_size": seq + 1,
        "new_root": edge.root(),
        "new_frontier": edge.to_bytes(),
        "new_last": now if head.last_time is None or now > head.last_time else head.last_time,
    }
    if conn.dialect.name == "postgresql":
        conn.execute(_INSERT_AND_MOVE, params)
    else:
        conn.execute(_INSERT_ENTRY, params)
        conn.execute(_MOVE_HEAD, params)
    return seq


def newest_entry_time(conn: Connection) -> datetime | None:
    """The time of the newest entry (by the clocks that wrote them), None for an empty ledger."""
    head = read_head(conn)
    return None if head is None else head.last_time


_LEAF_PREFIX = literal(b"\x00", LargeBinary())


def _entry_cursor(conn: Connection, start: int, end: int | None, *, full: bool) -> Any:
    """An executed driver cursor over entries in [start, end), in seq order.

    This read is most of what `verify` costs, so rows come straight from the driver's cursor (the
    statement is still built and compiled by SQLAlchemy), the entry text turned into UTF-8 bytes by
    the database. PostgreSQL streams through a server-side cursor (binary results), SQLite through
    its own cursor. With `full`, rows are (seq, entry, stored leaf hash); otherwise one column, the
    leaf hash's input 0x00 || entry (made by the database on PostgreSQL and SQLite: no Python step
    per row).
    """
    table = ledger_entry.c
    dialect = conn.dialect.name
    if dialect == "postgresql":
        entry_bytes: Any = func.convert_to(table.entry, literal("UTF8"))
        leaf_input: Any = _LEAF_PREFIX.op("||", return_type=LargeBinary())(entry_bytes)
    elif dialect == "sqlite":
        # SQLite's || joins the bytes as they are (UTF-8 text); the cast hands them back as bytes.
        entry_bytes = sa_cast(table.entry, LargeBinary)
        leaf_input = sa_cast(_LEAF_PREFIX.op("||")(table.entry), LargeBinary)
    else:
        entry_bytes = leaf_input = table.entry
    columns = (table.seq, entry_bytes, table.leaf_hash) if full else (leaf_input,)
    query = select(*columns).where(table.seq >= start)
    if end is not None:
        query = query.where(table.seq < end)
    compiled = query.order_by(table.seq).compile(dialect=conn.dialect)
    params: Any = compiled.params
    if compiled.positiontup is not None:
        params = tuple(params[name] for name in compiled.positiontup)
    driver: Any = conn.connection.driver_connection
    if dialect == "postgresql":
        # Binary results: bytea arrives as its bytes, not as hex text twice its size to decode.
        cursor = driver.cursor(name=f"ledger_scan_{secrets.token_hex(4)}", binary=True)
        cursor.itersize = _PAGE
    else:
        cursor = driver.cursor()
    cursor.execute(str(compiled), params)
    return cursor


def _as_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def iter_entries(
    conn: Connection, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, bytes, bytes]]:
    """(seq, entry bytes, stored leaf hash) for seq in [start, end), in order, streamed."""
    cursor = _entry_cursor(conn, start, end, full=True)
    try:
        for seq, entry, leaf in cursor:
            yield seq, _as_bytes(entry), bytes(leaf)
    finally:
        cursor.close()


def leaf_input_batches(
    conn: Connection, start: int = 0, end: int | None = None
) -> Iterator[list[bytes]]:
    """0x00 || entry for the entries in [start, end), in order, a page at a time (the fast read).

    Pages are small so that the bytes are still in the CPU's cache when they are hashed.
    """
    cursor = _entry_cursor(conn, start, end, full=False)
    native = conn.dialect.name in ("postgresql", "sqlite")  # the query already made them
    page = _LOCAL_PAGE if conn.dialect.name == "sqlite" else _FAST_PAGE
    try:
        while rows := cursor.fetchmany(page):
            if native:
                yield list(map(_first, rows))
            else:
                yield [b"\x00" + _as_bytes(entry) for (entry,) in rows]
    finally:
        cursor.close()


def seq_span(conn: Connection, end: int) -> tuple[int, int | None, int | None]:
    """(count, smallest seq, largest seq) of the entries below `end`: contiguity without a scan."""
    table = ledger_entry.c
    query = select(func.count(), func.min(table.seq), func.max(table.seq)).where(table.seq < end)
    row = cast(tuple[int, int | None, int | None], tuple(conn.execute(query).one()))
    return row


def last_seq(conn: Connection) -> int | None:
    """The largest stored seq, or None when there are no entries."""
    value: int | None = conn.execute(select(func.max(ledger_entry.c.seq))).scalar_one()
    return value


def _stored(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(
        id=row.id,
        tree_size=row.tree_size,
        root_hash=bytes(row.root_hash),
        note=row.note,
        created_at=_aware(row.created_at) or datetime.min.replace(tzinfo=UTC),
        frontier=bytes(row.frontier),
    )


def list_checkpoints(conn: Connection) -> list[StoredCheckpoint]:
    """Every stored checkpoint, oldest first."""
    rows = conn.execute(select(ledger_checkpoint).order_by(ledger_checkpoint.c.id)).all()
    return [_stored(row) for row in rows]


def latest_checkpoint(conn: Connection) -> StoredCheckpoint | None:
    """The newest stored checkpoint, or None."""
    query = select(ledger_checkpoint).order_by(ledger_checkpoint.c.id.desc()).limit(1)
    row = conn.execute(query).one_or_none()
    return None if row is None else _stored(row)


def signer_verifier(signer: Signer) -> Verifier:
    """The verifier of a parsed signer key."""
    return Verifier(signer.name, signer.key_hash, signer.private_key.public_key())


def checkpoint_edge(stored: StoredCheckpoint, verifier: Verifier) -> CompactRange:
    """The tree's right edge at a stored checkpoint, once its signature and columns check."""
    where = f"checkpoint #{stored.id}"
    try:
        checkpoint = open_checkpoint(stored.note, verifier)
    except NoteError as exc:
        raise VerificationError(f"{where}: {exc}") from None
    if (checkpoint.tree_size, checkpoint.root_hash) != (stored.tree_size, stored.root_hash):
        raise VerificationError(f"{where}: its columns disagree with its signed note")
    try:
        edge = CompactRange.from_bytes(stored.tree_size, stored.frontier)
    except ValueError:
        raise VerificationError(f"{where}: stored tree edge has the wrong length") from None
    if edge.root() != checkpoint.root_hash:
        raise VerificationError(f"{where}: stored tree edge does not match its signed root")
    return edge


def _kept(kept_copy: str | None, verifier: Verifier) -> Checkpoint | None:
    if kept_copy is None:
        return None
    try:
        return open_checkpoint(kept_copy, verifier)
    except NoteError as exc:
        raise VerificationError(f"the checkpoint kept beside the signing key: {exc}") from None


def write_checkpoint(conn: Connection, signer_key: str, *, kept_copy: str | None = None) -> str:
    """Sign and store a checkpoint of the current tree; returns the signed note.

    Before signing, the entries appended since the previous checkpoint are re-hashed and fully
    re-checked from that checkpoint's signed tree edge, so a signature never covers an entry altered
    in the state database, nor a head that disagrees with the entries (VerificationError). With
    `kept_copy` (the newest checkpoint this machine signed, see `signing`), the tree must also still
    have that checkpoint's root: a rolled-back and rewritten ledger is never signed again.
    """
    signer = parse_signer_key(signer_key)
    verifier = signer_verifier(signer)
    head = _locked_head(conn)
    if signer.name != head.origin:
        raise LedgerError(
            f"the signing key is named {signer.name!r} but the ledger's origin is {head.origin!r}"
        )
    previous = latest_checkpoint(conn)
    start = CompactRange() if previous is None else checkpoint_edge(previous, verifier)
    kept = _kept(kept_copy, verifier)
    covered = max(start.size, 0 if kept is None else kept.tree_size)
    if covered > head.tree_size:
        raise VerificationError(
            f"ledger head: {head.tree_size} entries, but a signed checkpoint already covered "
            f"{covered} (entries removed)"
        )
    # A kept checkpoint older than the database's newest lies before where this scan starts;
    # `verify`, which rebuilds the whole tree, checks it.
    watch = kept if kept is not None and kept.tree_size >= start.size else None
    scan = scan_entries(
        iter_entries(conn, start.size, head.tree_size),
        start=start,
        origin=head.origin,
        at_sizes=() if watch is None else {watch.tree_size},
    )
    if scan.findings:
        raise VerificationError("\n".join(scan.findings.lines()))
    if watch is not None and scan.roots.get(watch.tree_size) != watch.root_hash:
        raise VerificationError(
            f"the entries no longer have the root of the checkpoint of size {watch.tree_size} "
            "kept beside the signing key: the ledger was rolled back or rewritten"
        )
    root = scan.edge.root()
    edge = (scan.edge.size, scan.edge.to_bytes(), root)
    if edge != (head.tree_size, head.frontier, head.root_hash):
        raise VerificationError("ledger head: disagrees with the entries")
    note = sign_checkpoint(Checkpoint(head.origin, head.tree_size, root), signer)
    conn.execute(
        insert(ledger_checkpoint).values(
            tree_size=head.tree_size,
            root_hash=root,
            note=note,
            created_at=datetime.now(UTC),
            frontier=scan.edge.to_bytes(),
        )
    )
    return note
