"""Write an export an auditor verifies offline: entries.jsonl, checkpoint and ledger.pub."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Connection

from retentiond.errors import VerificationError
from retentiond.fileutil import replace_file
from retentiond.ledger.note import Verifier, open_checkpoint
from retentiond.ledger.store import iter_entries
from retentiond.ledger.verify import CHECKPOINT_FILE, ENTRIES_FILE, PUBLIC_KEY_FILE


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
    replace_file(directory / ENTRIES_FILE, _lines(conn, checkpoint.tree_size))
    replace_file(directory / CHECKPOINT_FILE, [note.encode("utf-8")])
    replace_file(directory / PUBLIC_KEY_FILE, [(verifier_key.strip() + "\n").encode("ascii")])
    return checkpoint.tree_size
