"""Signing checkpoints with the daemon's key file, and the copy of the newest one kept beside it.

Whoever can write to the state database can delete checkpoint rows, then rewrite the entries that no
remaining checkpoint covers. The copy of the newest signed checkpoint kept next to the signing key
(``<signing_key_file>.checkpoint``, outside the state database, as private as the key) lets `verify`
see such a rollback: the database's newest checkpoint must be at least that new and agree with it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sqlalchemy import Engine

from retentiond.config.secrets import read_secret_file
from retentiond.errors import RetentiondError
from retentiond.fileutil import replace_file
from retentiond.ledger.note import NoteError, Verifier, open_checkpoint, parse_signer_key
from retentiond.ledger.store import signer_verifier, write_checkpoint


def load_signer_key(path: Path) -> str:
    """The signer key in `path`; refuses a file others can read, and never echoes the key."""
    text = read_secret_file(path, "ledger.signing_key_file")
    try:
        parse_signer_key(text)
    except NoteError as exc:
        raise RetentiondError(f"ledger.signing_key_file: {path}: {exc}") from None
    return text


def key_verifier(signer_key: str) -> Verifier:
    """The verifier that checks what `signer_key` signs."""
    return signer_verifier(parse_signer_key(signer_key))


def local_copy_path(signing_key_file: Path) -> Path:
    """Where the newest checkpoint signed on this machine is kept."""
    return signing_key_file.with_name(signing_key_file.name + ".checkpoint")


def read_local_copy(path: Path) -> str | None:
    """The kept checkpoint note, or None when there is none yet."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def save_local_copy(path: Path, note: str, verifier: Verifier) -> None:
    """Keep `note` as the newest checkpoint unless the kept one is newer (atomic replace)."""
    new_size = open_checkpoint(note, verifier).tree_size
    current = read_local_copy(path)
    if current is not None:
        with contextlib.suppress(NoteError):
            if open_checkpoint(current, verifier).tree_size > new_size:
                return
    replace_file(path, [note.encode("utf-8")], mode=0o600)


def checkpoint_now(engine: Engine, signing_key_file: Path) -> str:
    """Sign a checkpoint of the current tree in its own transaction, then keep a copy of it.

    The copy is written only after the commit: a copy newer than the database would be reported as
    a rollback.
    """
    signer_key = load_signer_key(signing_key_file)
    kept_path = local_copy_path(signing_key_file)
    with engine.begin() as conn:
        note = write_checkpoint(conn, signer_key, kept_copy=read_local_copy(kept_path))
    save_local_copy(kept_path, note, key_verifier(signer_key))
    return note
