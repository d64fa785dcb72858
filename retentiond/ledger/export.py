"""Write an export an auditor verifies offline: entries.jsonl, checkpoint and ledger.pub."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Connection

from retentiond.errors import VerificationError
from retentiond.ledger.note import Verifier, open_checkpoint
from retentiond.ledger.store import iter_entries
from retentiond.ledger.verify import CHECKPOINT_FILE, ENTRIES_FILE, PUBLIC_KEY_FILE


def _write_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _lines(conn: Connection, size: int) -> Iterable[bytes]:
    expected = 0
    for seq, entry, _leaf in iter_entries(conn, 0, size):
        if seq != expected:
            raise VerificationError(f"seq {expected}: missing from the state database")
        expected += 1
        yield entry + b"\n"
    if expected != size:
        raise VerificationError(f"seq {expected}-{size - 1}: missing from the state database")


def write_export(
    conn: Connection, directory: Path, note: str, verifier: Verifier, verifier_key: str
) -> int:
    """Write the entries covered by the signed checkpoint `note`, the note and the public key.

    Returns the number of entries written. Files are replaced atomically, one by one.
    """
    checkpoint = open_checkpoint(note, verifier)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / ENTRIES_FILE, _lines(conn, checkpoint.tree_size))
    _write_atomic(directory / CHECKPOINT_FILE, [note.encode("utf-8")])
    _write_atomic(directory / PUBLIC_KEY_FILE, [(verifier_key.strip() + "\n").encode("ascii")])
    return checkpoint.tree_size
