"""The age format: files interoperate with pyrage and the `age` command, damage is rejected."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pyrage
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retentiond.seal.agefile import (
    CHUNK,
    AgeError,
    Identity,
    bech32_decode,
    decrypt_stream,
    encrypt_stream,
    parse_recipient,
    read_header,
)

AGE = shutil.which("age")
needs_age = pytest.mark.skipif(
    AGE is None and os.environ.get("CI") != "true", reason="the age command is not installed"
)
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17]


def seal_bytes(data: bytes, identity: Identity) -> bytes:
    out = io.BytesIO()
    source = io.BytesIO(data)
    _share, size = encrypt_stream(source.readinto, out.write, identity.public_bytes())
    assert size == len(out.getvalue())
    return out.getvalue()


def open_bytes(sealed: bytes, identity: Identity) -> bytes:
    stream = io.BufferedReader(io.BytesIO(sealed))  # type: ignore[arg-type]
    out = io.BytesIO()
    decrypt_stream(stream, read_header(stream), identity, out.write)
    return out.getvalue()


def test_keys_match_pyrage_encoding() -> None:
    ours = Identity.generate()
    theirs = pyrage.x25519.Identity.from_str(ours.encode())
    assert str(theirs) == ours.encode()
    assert str(theirs.to_public()) == ours.recipient()
    generated = pyrage.x25519.Identity.generate()
    assert Identity.parse(str(generated)).recipient() == str(generated.to_public())
    assert parse_recipient(ours.recipient()) == ours.public_bytes()


def test_bech32_rejects_damage() -> None:
    text = Identity.generate().recipient()
    flipped = text[:-1] + ("q" if text[-1] != "q" else "p")
    with pytest.raises(ValueError, match="checksum"):
        bech32_decode(flipped)
    with pytest.raises(AgeError):
        Identity.parse(text)  # a recipient is not an identity


@pytest.mark.parametrize("size", SIZES)
def test_pyrage_opens_our_files_and_we_open_theirs(size: int) -> None:
    data = os.urandom(size)
    identity = Identity.generate()
    theirs = pyrage.x25519.Identity.from_str(identity.encode())
    assert pyrage.decrypt(seal_bytes(data, identity), [theirs]) == data
    assert open_bytes(pyrage.encrypt(data, [theirs.to_public()]), identity) == data


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=3 * CHUNK))
def test_round_trip_any_content(data: bytes) -> None:
    identity = Identity.generate()
    assert open_bytes(seal_bytes(data, identity), identity) == data


def test_short_reads_from_a_pipe_still_make_full_chunks() -> None:
    data = os.urandom(3 * CHUNK + 5)
    read_fd, write_fd = os.pipe()

    def trickle() -> None:
        # Small writes with pauses: the reader sees many short reads, as from pg_dump.
        with open(write_fd, "wb", buffering=0) as sink:
            for start in range(0, len(data), 1000):
                sink.write(data[start : start + 1000])

    writer = threading.Thread(target=trickle)
    writer.start()
    identity = Identity.generate()
    out = io.BytesIO()
    with open(read_fd, "rb", buffering=0) as source:
        encrypt_stream(source.readinto, out.write, identity.public_bytes())
    writer.join()
    theirs = pyrage.x25519.Identity.from_str(identity.encode())
    assert pyrage.decrypt(out.getvalue(), [theirs]) == data
    # Full chunks despite short reads: one 64 KiB + tag record per chunk, then the remainder.
    assert len(out.getvalue()) - _payload_start(out.getvalue()) == len(data) + 4 * 16


@needs_age
def test_the_age_command_interoperates(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK + 99)
    identity = Identity.generate()
    (tmp_path / "key.txt").write_text(identity.encode() + "\n")
    (tmp_path / "ours.age").write_bytes(seal_bytes(data, identity))
    opened = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "key.txt"), str(tmp_path / "ours.age")],
        capture_output=True,
        check=True,
    )
    assert opened.stdout == data
    theirs = subprocess.run(
        ["age", "-r", identity.recipient()], input=data, capture_output=True, check=True
    )
    assert open_bytes(theirs.stdout, identity) == data
    recipient = subprocess.run(
        ["age-keygen", "-y", str(tmp_path / "key.txt")], capture_output=True, text=True, check=True
    )
    assert recipient.stdout.strip() == identity.recipient()


def _payload_start(sealed: bytes) -> int:
    return sealed.index(b"\n", sealed.index(b"--- ")) + 1 + 16


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s[: _payload_start(s) + CHUNK + 16], "failed authentication"),  # at a boundary
        (lambda s: s[: _payload_start(s) + 1000], "failed authentication"),  # mid-chunk
        (lambda s: s[: _payload_start(s) + 3], "truncated"),
        (lambda s: s[: _payload_start(s) - 5], "truncated"),
        (lambda s: s[:-1] + bytes([s[-1] ^ 1]), "chunk 1 failed authentication"),
        (lambda s: s + b"trailing", "failed authentication"),
        (lambda s: s.replace(b"X25519", b"X25518", 1), "not encrypted to this identity"),
        (lambda s: s.replace(b"--- ", b"---x", 1), "malformed"),
        (lambda s: s.replace(b"--- ", b"--- A", 1), "MAC does not match"),
        (lambda s: s[:30], "no complete header"),
        (lambda s: b"PK\x03\x04 a zip file\n", "not an age file"),
    ],
)
def test_damaged_files_are_rejected(damage: object, message: str) -> None:
    identity = Identity.generate()
    sealed = seal_bytes(os.urandom(CHUNK + 500), identity)
    with pytest.raises(AgeError, match=message):
        open_bytes(damage(sealed), identity)  # type: ignore[operator]


def test_altered_header_fails_its_mac() -> None:
    identity = Identity.generate()
    sealed = seal_bytes(b"hello", identity)
    # Add a stanza of an unknown type: the X25519 stanza still opens, the MAC no longer matches.
    altered = sealed.replace(b"\n---", b"\n-> extra stanza\n\n---", 1)
    with pytest.raises(AgeError, match="MAC"):
        open_bytes(altered, identity)


def test_another_identity_cannot_open() -> None:
    sealed = seal_bytes(b"secret dump", Identity.generate())
    with pytest.raises(AgeError, match="not encrypted to this identity"):
        open_bytes(sealed, Identity.generate())
