"""The keystore against a real state database: the KEK file, wrapping, rotation and its crashes."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from retentiond import keystore
from retentiond.keystore import KeystoreError
from retentiond.state.db import create_state_engine, upgrade
from retentiond.state.models import keystore_meta, keystore_secret


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[sa.Engine, Path]]:
    """A migrated state database and a fresh KEK file beside it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    engine = create_state_engine(url)
    upgrade(engine)
    kek_file = tmp_path / "keys" / "kek"
    assert keystore.create_kek_file(kek_file)
    yield engine, kek_file
    engine.dispose()


def _generation(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(keystore_meta.c.kek_generation)).scalar_one())


def test_create_kek_file_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "kek"
    assert keystore.create_kek_file(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    assert keystore.create_kek_file(path) is False
    assert path.read_bytes() == first
    assert list(keystore.read_kek_file(path)) == [0]
    assert [p.name for p in path.parent.iterdir()] == ["kek"]  # no temporary file left


def test_commitment_key_is_created_once_and_stable(state: tuple[sa.Engine, Path]) -> None:
    engine, kek_file = state
    with engine.begin() as conn:
        keystore.ensure_commitment_key(conn, kek_file)
    with engine.begin() as conn:
        keystore.ensure_commitment_key(conn, kek_file)
    with engine.connect() as conn:
        key = keystore.commitment_key(conn, kek_file)
        rows = conn.execute(sa.select(keystore_secret)).all()
    assert len(key) == 32
    assert len(rows) == 1
    assert key not in rows[0].wrapped  # stored wrapped, never in the clear
    with engine.connect() as conn:
        assert keystore.commitment_key(conn, kek_file) == key


def test_rotation_keeps_secrets_and_kills_old_wrapped_copies(
    state: tuple[sa.Engine, Path], tmp_path: Path
) -> None:
    engine, kek_file = state
    with engine.begin() as conn:
        keystore.ensure_commitment_key(conn, kek_file)
    with engine.connect() as conn:
        key = keystore.commitment_key(conn, kek_file)
        old_row = conn.execute(sa.select(keystore_secret)).one()
    old_kek_bytes = kek_file.read_bytes()
    with engine.begin() as conn:
        current = keystore.open_for_writing(conn, kek_file)
        new = keystore.rotate(conn, kek_file, current)
    assert new.generation == current.generation + 1
    assert keystore.settle(engine, kek_file) == new.generation
    assert list(keystore.read_kek_file(kek_file)) == [new.generation]
    with engine.connect() as conn:
        assert keystore.commitment_key(conn, kek_file) == key
    # The wrapped form from before the rotation (a backup, a dead row) opens under no key that
    # still exists in the key file.
    for kek in keystore.read_kek_file(kek_file).items():
        with pytest.raises(KeystoreError):
            keystore.unwrap(keystore.Kek(*kek), keystore.COMMITMENT_KEY_NAME, old_row.wrapped)
    assert kek_file.read_bytes() != old_kek_bytes
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600


def test_crash_before_commit_keeps_the_old_generation(state: tuple[sa.Engine, Path]) -> None:
    engine, kek_file = state
    with engine.begin() as conn:
        keystore.ensure_commitment_key(conn, kek_file)
    with engine.connect() as conn:
        key = keystore.commitment_key(conn, kek_file)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        keystore.rotate(conn, kek_file, keystore.open_for_writing(conn, kek_file))
        raise RuntimeError("killed before the commit")
    # The file holds both generations, the database the old one: still readable.
    assert sorted(keystore.read_kek_file(kek_file)) == [0, 1]
    with engine.connect() as conn:
        assert keystore.commitment_key(conn, kek_file) == key
    assert keystore.settle(engine, kek_file) == 0
    assert list(keystore.read_kek_file(kek_file)) == [0]
    with engine.connect() as conn:
        assert keystore.commitment_key(conn, kek_file) == key


def test_crash_after_commit_is_settled_to_the_new_generation(
    state: tuple[sa.Engine, Path],
) -> None:
    engine, kek_file = state
    with engine.begin() as conn:
        keystore.ensure_commitment_key(conn, kek_file)
        key = keystore.commitment_key(conn, kek_file)
        keystore.rotate(conn, kek_file, keystore.open_for_writing(conn, kek_file))
    # Committed, but the old generation is still in the file (no settle ran yet).
    assert sorted(keystore.read_kek_file(kek_file)) == [0, 1]
    with engine.connect() as conn:
        assert keystore.commitment_key(conn, kek_file) == key
    with engine.begin() as conn:
        keystore.ensure_commitment_key(conn, kek_file)  # any writer settles first
    assert list(keystore.read_kek_file(kek_file)) == [1]
    assert _generation(engine) == 1


def test_leftover_temporary_key_file_is_scrubbed(state: tuple[sa.Engine, Path]) -> None:
    engine, kek_file = state
    leftover = kek_file.with_name(f".{kek_file.name}.999-dead.tmp")
    leftover.write_bytes(kek_file.read_bytes())
    keystore.settle(engine, kek_file)
    assert not leftover.exists()
    assert [p.name for p in kek_file.parent.iterdir()] == ["kek"]


def test_replaced_or_old_key_file_is_refused(state: tuple[sa.Engine, Path], tmp_path: Path) -> None:
    engine, kek_file = state
    with engine.begin() as conn:
        keystore.ensure_commitment_key(conn, kek_file)
    saved = tmp_path / "old-kek"
    shutil.copy2(kek_file, saved)
    with engine.begin() as conn:
        keystore.rotate(conn, kek_file, keystore.open_for_writing(conn, kek_file))
    keystore.settle(engine, kek_file)
    # Putting the old file back (generation 0 while the keystore is at 1) is reported clearly.
    shutil.copy2(saved, kek_file)
    with engine.connect() as conn, pytest.raises(KeystoreError, match="generation 1"):
        keystore.commitment_key(conn, kek_file)
    # A different key of the same generation (a file made anew by init) does not open it either.
    kek_file.unlink()
    keystore.create_kek_file(kek_file)
    with engine.begin() as conn:
        conn.execute(sa.update(keystore_meta).values(kek_generation=0))
        conn.execute(sa.update(keystore_secret).values(kek_generation=0))
    with engine.connect() as conn, pytest.raises(KeystoreError, match="does not open"):
        keystore.commitment_key(conn, kek_file)


def test_loose_permissions_symlink_and_garbage_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    keystore.create_kek_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeystoreError, match="readable by other users"):
        keystore.read_kek_file(path)
    os.chmod(path, 0o600)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(KeystoreError, match="cannot open"):
        keystore.read_kek_file(link)
    path.write_bytes(b"retentiond-kek-v1\n0 not-base64!\n")
    with pytest.raises(KeystoreError, match="not a retentiond key-encryption key file"):
        keystore.read_kek_file(path)
    with pytest.raises(KeystoreError, match="does not exist"):
        keystore.read_kek_file(tmp_path / "missing")


def test_wrapped_secret_is_bound_to_its_name_and_generation() -> None:
    kek = keystore.Kek(3, b"k" * 32)
    wrapped = keystore.wrap(kek, "sealed-copy:a", b"secret")
    assert keystore.unwrap(kek, "sealed-copy:a", wrapped) == b"secret"
    with pytest.raises(KeystoreError):
        keystore.unwrap(kek, "sealed-copy:b", wrapped)
    with pytest.raises(KeystoreError):
        keystore.unwrap(keystore.Kek(4, b"k" * 32), "sealed-copy:a", wrapped)
    with pytest.raises(KeystoreError, match="too short"):
        keystore.unwrap(kek, "sealed-copy:a", b"x")


def test_writers_are_serialized_on_postgres(pg_database: str, tmp_path: Path) -> None:
    engine = create_state_engine(pg_database)
    upgrade(engine)
    kek_file = tmp_path / "kek"
    keystore.create_kek_file(kek_file)
    keystore.settle(engine, kek_file)
    try:
        with engine.begin() as first:
            keystore.open_for_writing(first, kek_file)
            with engine.connect() as second:
                second.execute(sa.text("SET lock_timeout = '200ms'"))
                with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                    keystore.open_for_writing(second, kek_file)
    finally:
        engine.dispose()
