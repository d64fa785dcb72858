"""The keystore: secrets wrapped under a key-encryption key (KEK) kept outside the state database.

Every secret (the ledger's commitment key, each sealed copy's age identity) is stored in the state
database wrapped with AES-256-GCM under the KEK, which lives in its own file (`[keys] kek_file`,
mode 0600). Destroying a secret deletes its wrapped form *and* rotates the KEK: the survivors are
re-wrapped under a new generation and the old key file is overwritten, so a stale copy of the
destroyed wrapped secret (dead rows, WAL, a backup of the state database) opens with no key that
still exists.

Crash safety of a rotation rests on one invariant: the KEK file always holds the key of the
generation committed in `keystore_meta`. A rotation (1) writes a file holding generations N and N+1
(fsynced, renamed into place), (2) re-wraps everything and records N+1 in one database
transaction, (3) rewrites the file with N+1 alone. Every change of the file happens while the writer
holds the lock of the `keystore_meta` row, and `settle` (run by every writer before it starts)
reduces the file to the committed generation, so a kill -9 at any point leaves either N or N+1
usable and the other removed at the next start. Overwriting a replaced key file with zeros is best
effort: SSDs and copy-on-write file systems may keep the old blocks.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from retentiond.errors import RetentiondError
from retentiond.fileutil import write_private_file
from retentiond.state.models import keystore_meta, keystore_secret, sealed_copy

COMMITMENT_KEY_NAME = "ledger-commitment"
_FILE_MAGIC = "retentiond-kek-v1"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_AAD_PREFIX = b"retentiond/keystore/v1\x00"
_TEMP_SUFFIX = ".tmp"


class KeystoreError(RetentiondError):
    """The keystore or its key file is missing, damaged or does not match (exit code 1)."""


@dataclass(frozen=True)
class Kek:
    """One generation of the key-encryption key."""

    generation: int
    key: bytes = field(repr=False)


# --- the key file -------------------------------------------------------------------------------


def _render(keys: Mapping[int, bytes]) -> bytes:
    lines = [_FILE_MAGIC]
    lines += [f"{gen} {base64.b64encode(key).decode()}" for gen, key in sorted(keys.items())]
    return ("\n".join(lines) + "\n").encode()


def _parse(data: bytes, path: Path) -> dict[int, bytes]:
    bad = KeystoreError(f"keys.kek_file: {path} is not a retentiond key-encryption key file")
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise bad from None
    if not lines or lines[0] != _FILE_MAGIC or len(lines) < 2:
        raise bad
    keys: dict[int, bytes] = {}
    for line in lines[1:]:
        gen_text, _, key_text = line.partition(" ")
        try:
            gen, key = int(gen_text), base64.b64decode(key_text, validate=True)
        except (ValueError, binascii.Error):
            raise bad from None
        if gen < 0 or len(key) != _KEY_BYTES or gen in keys:
            raise bad
        keys[gen] = key
    return keys


def read_kek_file(path: Path) -> dict[int, bytes]:
    """The generations held by the key file; refuses a symlink or a file others can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeystoreError(
            f"keys.kek_file: {path} does not exist; run `retentiond init`"
        ) from None
    except OSError as exc:
        # ELOOP: the path is a symlink. A key file is never followed through one.
        raise KeystoreError(f"keys.kek_file: cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeystoreError(f"keys.kek_file: {path} is not a regular file")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeystoreError(f"keys.kek_file: {path} is readable by other users; chmod 600 it")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(64 * 1024)
    finally:
        os.close(fd)
    return _parse(data, path)


def create_kek_file(path: Path) -> bool:
    """Create the key-encryption key file (generation 0, mode 0600) if absent; True when created."""
    return write_private_file(path, _render({0: secrets.token_bytes(_KEY_BYTES)}))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scrub(fd: int) -> None:
    """Overwrite an open file's bytes with zeros and fsync (best effort on SSD and COW)."""
    size = os.fstat(fd).st_size
    zeros = bytes(min(size, 64 * 1024))
    offset = 0
    while offset < size:
        offset += os.pwrite(fd, zeros[: size - offset], offset)
    os.fsync(fd)


def _scrub_and_unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _scrub(fd)
        finally:
            os.close(fd)
        os.unlink(path)


def _temp_files(path: Path) -> Iterator[Path]:
    prefix = f".{path.name}."
    with os.scandir(path.parent) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(_TEMP_SUFFIX):
                yield path.parent / entry.name


def _replace_kek_file(path: Path, keys: Mapping[int, bytes]) -> None:
    """Atomically replace the key file, then overwrite the replaced file's bytes with zeros."""
    temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    try:
        # Held open across the rename so that its blocks can be zeroed once no name points at them.
        old = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o600)
            try:
                os.write(fd, _render(keys))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
            _fsync_dir(path.parent)
            _scrub(old)
        finally:
            os.close(old)
    except OSError as exc:
        _scrub_and_unlink(temp)
        # A rotation needs a writable key file in a writable directory (the daemon's state
        # directory), not a read-only credential.
        raise KeystoreError(
            f"keys.kek_file: cannot replace {path} ({exc.strerror}); the key-encryption key is "
            "rotated whenever a key is destroyed, so the file and its directory must be writable"
        ) from None


# --- wrapping -----------------------------------------------------------------------------------


def _aad(name: str, generation: int) -> bytes:
    # Binding the name and generation stops a wrapped blob being moved to another row or replayed
    # under another generation.
    return _AAD_PREFIX + name.encode() + b"\x00" + struct.pack(">Q", generation)


def wrap(kek: Kek, name: str, secret: bytes) -> bytes:
    """`secret` encrypted under `kek` (AES-256-GCM): nonce || ciphertext || tag."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(kek.key).encrypt(nonce, secret, _aad(name, kek.generation))


def unwrap(kek: Kek, name: str, wrapped: bytes) -> bytes:
    """The secret wrapped by `wrap`; KeystoreError when the key or the blob does not match."""
    if len(wrapped) < _NONCE_BYTES + 16:
        raise KeystoreError(f"keystore secret {name} is damaged (too short)")
    try:
        return AESGCM(kek.key).decrypt(
            wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], _aad(name, kek.generation)
        )
    except InvalidTag:
        raise KeystoreError(
            f"keystore secret {name} does not open under key-encryption key generation "
            f"{kek.generation}: the key file or the state database was replaced or damaged"
        ) from None


def copy_secret_name(copy_id: str) -> str:
    """The wrapping name of a sealed copy's identity."""
    return f"sealed-copy:{copy_id}"


# --- the generation in the state database -------------------------------------------------------


def _lock_generation(conn: sa.Connection, kek_file: Path) -> int:
    """Take the keystore lock (the meta row) in `conn`'s transaction; returns the generation."""
    # A no-op UPDATE locks the row on PostgreSQL and takes the write lock on SQLite, so every
    # writer of the key file is serialized, and no writer can wrap under a generation that a
    # concurrent rotation is about to remove.
    locked = conn.execute(
        sa.update(keystore_meta)
        .where(keystore_meta.c.id == 1)
        .values(kek_generation=keystore_meta.c.kek_generation)
    )
    if locked.rowcount == 0:
        # First use: the keystore adopts the newest generation of the (fresh) key file.
        generation = max(read_kek_file(kek_file))
        conn.execute(sa.insert(keystore_meta).values(id=1, kek_generation=generation))
        return generation
    current: int = conn.execute(
        sa.select(keystore_meta.c.kek_generation).where(keystore_meta.c.id == 1)
    ).scalar_one()
    return current


def _generation(conn: sa.Connection) -> int | None:
    row = conn.execute(
        sa.select(keystore_meta.c.kek_generation).where(keystore_meta.c.id == 1)
    ).scalar_one_or_none()
    return None if row is None else int(row)


def _pick(keys: Mapping[int, bytes], generation: int, kek_file: Path) -> Kek:
    if generation not in keys and generation < max(keys):
        raise KeystoreError(
            f"the keystore is at generation {generation} but keys.kek_file holds only newer "
            f"generation(s) {sorted(keys)}: the state database was restored from an older copy "
            "(whose destroyed keys stay destroyed), or a rotation ran meanwhile; try again"
        )
    if generation not in keys:
        raise KeystoreError(
            f"keys.kek_file: {kek_file} holds generation(s) {sorted(keys)} but the keystore is at "
            f"generation {generation}: the file was replaced or restored from an old copy, and "
            "the keystore's secrets cannot be opened with it"
        )
    return Kek(generation, keys[generation])


def open_for_writing(conn: sa.Connection, kek_file: Path) -> Kek:
    """Lock the keystore in `conn`'s transaction, settle the key file, return the current KEK.

    Settling reduces the file to the committed generation and scrubs leftover temporary files, which
    finishes any rotation that a crash interrupted.
    """
    generation = _lock_generation(conn, kek_file)
    keys = read_kek_file(kek_file)
    kek = _pick(keys, generation, kek_file)
    for leftover in list(_temp_files(kek_file)):
        _scrub_and_unlink(leftover)
    if set(keys) != {generation}:
        _replace_kek_file(kek_file, {generation: kek.key})
    return kek


def current_kek(conn: sa.Connection, kek_file: Path) -> Kek:
    """The KEK of the committed generation, without taking the lock (for readers)."""
    generation = _generation(conn)
    if generation is None:
        raise KeystoreError("the keystore is empty; run `retentiond init`")
    return _pick(read_kek_file(kek_file), generation, kek_file)


def settle(engine: sa.Engine, kek_file: Path) -> int:
    """Finish an interrupted or just-committed rotation; returns the current generation."""
    with engine.begin() as conn:
        return open_for_writing(conn, kek_file).generation


def rotate(conn: sa.Connection, kek_file: Path, current: Kek) -> Kek:
    """Re-wrap every remaining secret under a new KEK generation, in `conn`'s transaction.

    The caller holds the lock (`open_for_writing`) and has already removed the wrapped secrets to
    destroy. After the caller commits, `settle` removes the old generation from the key file; until
    then the file holds both, so a crash on either side of the commit leaves a usable key.
    """
    new = Kek(current.generation + 1, secrets.token_bytes(_KEY_BYTES))
    _replace_kek_file(kek_file, {current.generation: current.key, new.generation: new.key})
    secrets_rows = conn.execute(
        sa.select(
            keystore_secret.c.name, keystore_secret.c.wrapped, keystore_secret.c.kek_generation
        )
    ).all()
    for row in secrets_rows:
        conn.execute(
            sa.update(keystore_secret)
            .where(keystore_secret.c.name == row.name)
            .values(wrapped=_rewrap(row.name, row.wrapped, row.kek_generation, current, new))
            .values(kek_generation=new.generation)
        )
    copies = conn.execute(
        sa.select(
            sealed_copy.c.id, sealed_copy.c.wrapped_identity, sealed_copy.c.kek_generation
        ).where(sealed_copy.c.wrapped_identity.is_not(None))
    ).all()
    for row in copies:
        rewrapped = _rewrap(
            copy_secret_name(row.id), row.wrapped_identity, row.kek_generation, current, new
        )
        conn.execute(
            sa.update(sealed_copy)
            .where(sealed_copy.c.id == row.id)
            .values(wrapped_identity=rewrapped, kek_generation=new.generation)
        )
    conn.execute(
        sa.update(keystore_meta)
        .where(keystore_meta.c.id == 1)
        .values(kek_generation=new.generation, rotated_at=datetime.now(UTC))
    )
    return new


def _rewrap(name: str, wrapped: bytes, generation: int, current: Kek, new: Kek) -> bytes:
    if generation != current.generation:
        raise KeystoreError(
            f"keystore secret {name} is wrapped under generation {generation}, not the current "
            f"{current.generation}: the state database was edited or partly restored"
        )
    return wrap(new, name, unwrap(current, name, wrapped))


# --- the ledger's commitment key ----------------------------------------------------------------


def ensure_commitment_key(conn: sa.Connection, kek_file: Path) -> None:
    """Create and store the ledger's secret commitment key (32 random bytes) if absent."""
    kek = open_for_writing(conn, kek_file)
    exists = conn.execute(
        sa.select(keystore_secret.c.kek_generation).where(
            keystore_secret.c.name == COMMITMENT_KEY_NAME
        )
    ).scalar_one_or_none()
    if exists is not None:
        return
    conn.execute(
        sa.insert(keystore_secret).values(
            name=COMMITMENT_KEY_NAME,
            wrapped=wrap(kek, COMMITMENT_KEY_NAME, secrets.token_bytes(32)),
            kek_generation=kek.generation,
            created_at=datetime.now(UTC),
        )
    )


def commitment_key(conn: sa.Connection, kek_file: Path) -> bytes:
    """The ledger's commitment key (the HMAC key of keyed digests)."""
    row = conn.execute(
        sa.select(keystore_secret.c.wrapped, keystore_secret.c.kek_generation).where(
            keystore_secret.c.name == COMMITMENT_KEY_NAME
        )
    ).one_or_none()
    if row is None:
        raise KeystoreError("the ledger's commitment key is missing; run `retentiond init`")
    kek = _pick(read_kek_file(kek_file), row.kek_generation, kek_file)
    return unwrap(kek, COMMITMENT_KEY_NAME, row.wrapped)
