"""Sealed copies: seal a stream, register it in the keystore, open it while its key lives.

A seal writes only ciphertext: the plaintext comes from a file or a pipe, is encrypted chunk by
chunk in memory, and the ciphertext goes to a nameless file in the output directory that gets its
name once the copy is registered. A failed seal therefore leaves no output and no temporary file.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import sqlalchemy as sa

from retentiond import keystore
from retentiond.errors import RetentiondError
from retentiond.seal.agefile import (
    AgeError,
    Header,
    Identity,
    Reader,
    copy_id_of,
    decrypt_stream,
    encrypt_stream,
    read_header,
)
from retentiond.seal.output import PendingFile
from retentiond.state.models import sealed_copy

TARGET = "sealed copies"


class CopyShredded(RetentiondError):
    """The copy's key was destroyed: it can never be opened again (exit code 1)."""


@dataclass(frozen=True)
class SealedCopy:
    """A registered copy, as the keystore knows it (never its key)."""

    id: str
    path: str
    size: int
    created_at: datetime
    expires_at: datetime
    recipient: str
    key_exported: bool
    shredded_at: datetime | None
    shred_seq: int | None
    shred_rule: str | None


def utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime (SQLite hands back naive UTC values)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _copy(row: Any) -> SealedCopy:
    return SealedCopy(
        id=row.id,
        path=row.path,
        size=row.size,
        created_at=utc(row.created_at),
        expires_at=utc(row.expires_at),
        recipient=row.recipient,
        key_exported=bool(row.key_exported),
        shredded_at=None if row.shredded_at is None else utc(row.shredded_at),
        shred_seq=row.shred_seq,
        shred_rule=row.shred_rule,
    )


def find_copy(conn: sa.Connection, copy_id: str) -> SealedCopy | None:
    """The registered copy with this id, or None."""
    row = conn.execute(sa.select(sealed_copy).where(sealed_copy.c.id == copy_id)).one_or_none()
    return None if row is None else _copy(row)


def label_digest(key: bytes, label: str) -> str:
    """A keyed digest of a label (labels may name people; only the digest is stored)."""
    return "hmac-sha256:" + hmac.new(key, label.encode("utf-8"), hashlib.sha256).hexdigest()


def seal_copy(
    engine: sa.Engine,
    kek_file: Path,
    read: Reader,
    target: Path,
    expires_at: datetime,
    label: str | None,
) -> SealedCopy:
    """Encrypt everything `read` yields into `target` and register the copy until `expires_at`."""
    # Fail on a missing or wrong key file before consuming the input.
    keystore.settle(engine, kek_file)
    identity = Identity.generate()
    with PendingFile(target) as pending:
        share, size = encrypt_stream(read, pending.write, identity.public_bytes())
        return register_copy(engine, kek_file, pending, identity, share, size, expires_at, label)


def register_copy(
    engine: sa.Engine,
    kek_file: Path,
    pending: PendingFile,
    identity: Identity,
    share: bytes,
    size: int,
    expires_at: datetime,
    label: str | None,
) -> SealedCopy:
    """Register the copy encrypted into `pending`, then give the file its name.

    The copy is registered (its identity wrapped in the keystore) before the file gets its name, so
    a crash can leave a registered copy whose file is missing, never a file whose key was not kept.
    """
    copy_id = copy_id_of(share)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        kek = keystore.open_for_writing(conn, kek_file)
        digest = None
        if label is not None:
            digest = label_digest(keystore.commitment_key(conn, kek_file), label)
        conn.execute(
            sa.insert(sealed_copy).values(
                id=copy_id,
                path=str(pending.target),
                size=size,
                created_at=now,
                expires_at=expires_at,
                label_digest=digest,
                recipient=identity.recipient(),
                wrapped_identity=keystore.wrap(
                    kek, keystore.copy_secret_name(copy_id), identity.secret
                ),
                kek_generation=kek.generation,
                key_exported=False,
            )
        )
    try:
        pending.publish()
    except BaseException:
        with engine.begin() as conn:
            conn.execute(sa.delete(sealed_copy).where(sealed_copy.c.id == copy_id))
        raise
    return SealedCopy(
        copy_id,
        str(pending.target),
        size,
        now,
        expires_at,
        identity.recipient(),
        False,
        None,
        None,
        None,
    )


def _shredded_error(copy: SealedCopy) -> CopyShredded:
    when = copy.shredded_at.isoformat(timespec="seconds") if copy.shredded_at else "?"
    return CopyShredded(
        f"sealed copy {copy.id} was shredded at {when} by rule {copy.shred_rule} "
        f"(ledger entry {copy.shred_seq}): its key no longer exists and it cannot be opened"
    )


def _live_copy(conn: sa.Connection, header: Header) -> tuple[SealedCopy, bytes]:
    copy_id = copy_id_of(header.x25519_share())
    row = conn.execute(sa.select(sealed_copy).where(sealed_copy.c.id == copy_id)).one_or_none()
    if row is None:
        raise AgeError("this file is not a copy sealed with this keystore")
    copy = _copy(row)
    if copy.shredded_at is not None or row.wrapped_identity is None:
        raise _shredded_error(copy)
    return copy, row.wrapped_identity


def _identity(kek: keystore.Kek, copy: SealedCopy, wrapped: bytes) -> Identity:
    return Identity(keystore.unwrap(kek, keystore.copy_secret_name(copy.id), wrapped))


def unseal_copy(
    engine: sa.Engine, kek_file: Path, stream: BinaryIO, write: Callable[[memoryview], object]
) -> tuple[SealedCopy, int]:
    """Decrypt a sealed copy read from `stream` into `write`; returns (copy, plaintext bytes)."""
    header = read_header(stream)
    with engine.connect() as conn:
        copy, wrapped = _live_copy(conn, header)
        identity = _identity(keystore.current_kek(conn, kek_file), copy, wrapped)
    return copy, decrypt_stream(stream, header, identity, write)


def export_identity(
    engine: sa.Engine, kek_file: Path, stream: BinaryIO
) -> tuple[SealedCopy, Identity, int]:
    """The identity of the sealed copy read from `stream`, recorded as having left the keystore.

    Returns (copy, identity, ledger sequence number). The mark on the copy and the ledger entry
    commit together before the identity is handed out.
    """
    # Imported here: seal and unseal, which start often, do not need the ledger's modules.
    from retentiond.ledger.digest import KeyDigest
    from retentiond.ledger.store import append_entry

    header = read_header(stream)
    with engine.begin() as conn:
        kek = keystore.open_for_writing(conn, kek_file)
        copy, wrapped = _live_copy(conn, header)
        identity = _identity(kek, copy, wrapped)
        header.file_key(identity)  # the file really is this copy (its MAC checks out)
        digest = KeyDigest(keystore.commitment_key(conn, kek_file))
        digest.add(copy.id.encode())
        seq = append_entry(
            conn,
            {
                "kind": "config",
                "target": TARGET,
                "count": 1,
                "method": "export-identity",
                "digest": digest.hexdigest(),
                "reason": "a sealed copy's identity was exported from the keystore",
            },
        )
        conn.execute(
            sa.update(sealed_copy).where(sealed_copy.c.id == copy.id).values(key_exported=True)
        )
    return copy, identity, seq
