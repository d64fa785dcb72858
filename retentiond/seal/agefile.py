"""The age file format (age-encryption.org/v1) for X25519 recipients, streaming in both directions.

Identities and recipients use age's Bech32 encodings (`AGE-SECRET-KEY-1...`, `age1...`), so a
sealed copy opens with the `age` command, rage or pyrage given the exported identity, and files
those tools write for an identity open here. The primitives are `cryptography`'s (OpenSSL): X25519,
HKDF-SHA256, HMAC-SHA256 and ChaCha20-Poly1305 in the STREAM construction of 64 KiB chunks. They
are used instead of pyrage's streaming calls because OpenSSL's ChaCha20-Poly1305 is about three
times faster here, which is what lets a seal keep up with the `age` command on large dumps; the
tests check the files against pyrage and the `age` command in both directions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from retentiond.errors import RetentiondError

VERSION_LINE = b"age-encryption.org/v1"
CHUNK = 64 * 1024
TAG = 16
_BATCH = 16  # chunks per read and write: a tenth of the system calls of chunk-sized I/O
_X25519_INFO = b"age-encryption.org/v1/X25519"
_MAX_HEADER = 64 * 1024
_COLUMNS = 64
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_SECRET_HRP = "age-secret-key-"  # noqa: S105 - a format prefix, not a secret
_PUBLIC_HRP = "age"

Reader = Callable[[memoryview], int]
Writer = Callable[[memoryview], object]


class AgeError(RetentiondError):
    """A file that is not a valid age file, or does not open with the identity (exit code 1)."""


# --- Bech32 (BIP 173, without its 90-character limit, as age uses it) ---------------------------


def _polymod(values: list[int]) -> int:
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            check ^= generator[i] if (top >> i) & 1 else 0
    return check


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: bytes | list[int], source: int, target: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out: list[int] = []
    for value in data:
        acc = (acc << source) | value
        bits += source
        while bits >= target:
            bits -= target
            out.append((acc >> bits) & ((1 << target) - 1))
    if pad and bits:
        out.append((acc << (target - bits)) & ((1 << target) - 1))
    elif not pad and (bits >= source or (acc << (target - bits)) & ((1 << target) - 1)):
        return None
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Bech32 text of `data` under human-readable part `hrp` (lower case)."""
    words = _convert(data, 8, 5, pad=True) or []
    check = _polymod([*_hrp_expand(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ 1
    words += [(check >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[w] for w in words)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(hrp, data) of a Bech32 string; ValueError when it is malformed or its checksum fails."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    hrp, sep, rest = text.rpartition("1")
    if not sep or not hrp or len(rest) < 6 or any(c not in _BECH32 for c in rest):
        raise ValueError("not bech32")
    words = [_BECH32.index(c) for c in rest]
    if _polymod([*_hrp_expand(hrp), *words]) != 1:
        raise ValueError("bad checksum")
    data = _convert(words[:-6], 5, 8, pad=False)
    if data is None:
        raise ValueError("bad padding")
    return hrp, bytes(data)


# --- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """An X25519 age identity (the 32-byte secret scalar)."""

    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh identity from the operating system's random source."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def parse(cls, text: str) -> Identity:
        """An identity from its `AGE-SECRET-KEY-1...` text."""
        try:
            hrp, data = bech32_decode(text.strip())
        except ValueError:
            raise AgeError("not an age identity (AGE-SECRET-KEY-1...)") from None
        if hrp != _SECRET_HRP or len(data) != 32:
            raise AgeError("not an age X25519 identity")
        return cls(data)

    def encode(self) -> str:
        """The identity as age writes it: `AGE-SECRET-KEY-1...`."""
        return bech32_encode(_SECRET_HRP, self.secret).upper()

    def public_bytes(self) -> bytes:
        """The X25519 public key of this identity."""
        return X25519PrivateKey.from_private_bytes(self.secret).public_key().public_bytes_raw()

    def recipient(self) -> str:
        """The recipient (`age1...`) that encrypts to this identity."""
        return bech32_encode(_PUBLIC_HRP, self.public_bytes())


def parse_recipient(text: str) -> bytes:
    """The X25519 public key of an `age1...` recipient."""
    try:
        hrp, data = bech32_decode(text.strip())
    except ValueError:
        raise AgeError("not an age recipient (age1...)") from None
    if hrp != _PUBLIC_HRP or len(data) != 32:
        raise AgeError("not an age X25519 recipient")
    return data


# --- header -------------------------------------------------------------------------------------


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    # age uses unpadded canonical base64; anything else is a different (malleable) encoding.
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise AgeError("the age header is malformed (bad base64)") from None
    if _b64(data) != text:
        raise AgeError("the age header is malformed (non-canonical base64)")
    return data


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _x25519_wrap_key(shared: bytes, share: bytes, public: bytes) -> bytes:
    if shared == bytes(32):
        raise AgeError("X25519 produced an all-zero shared secret (invalid share or recipient)")
    return _hkdf(shared, share + public, _X25519_INFO)


def _header_mac(file_key: bytes, header: bytes) -> bytes:
    return hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()


def copy_id_of(share: bytes) -> str:
    """The sealed copy's id, derived from its header's X25519 share.

    Any copy of the file, wherever it was copied to, therefore names its keystore entry, and the
    file carries no extra (non-standard) field. The share is random, so the id is too.
    """
    digest = hashlib.sha256(b"retentiond sealed copy id\x00" + share).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


@dataclass(frozen=True)
class Header:
    """A parsed age header: its stanzas and the bytes covered by its MAC."""

    stanzas: tuple[tuple[tuple[bytes, ...], bytes], ...]  # (arguments, body) of each stanza
    mac: bytes
    covered: bytes  # everything up to and including "---", as the MAC covers it

    def x25519_share(self) -> bytes:
        """The ephemeral share of the (first) X25519 stanza."""
        for args, _body in self.stanzas:
            if args[0] == b"X25519":
                return _unb64(args[1])
        raise AgeError("the age file has no X25519 recipient stanza")

    def file_key(self, identity: Identity) -> bytes:
        """Unwrap the file key with `identity` and check the header MAC."""
        private = X25519PrivateKey.from_private_bytes(identity.secret)
        public = identity.public_bytes()
        for args, body in self.stanzas:
            if args[0] != b"X25519":
                continue
            share = _unb64(args[1])
            shared = private.exchange(X25519PublicKey.from_public_bytes(share))
            try:
                key = ChaCha20Poly1305(_x25519_wrap_key(shared, share, public)).decrypt(
                    bytes(12), body, None
                )
            except InvalidTag:
                continue
            if not hmac.compare_digest(_header_mac(key, self.covered), self.mac):
                raise AgeError("the age header was altered (its MAC does not match)")
            return key
        raise AgeError("the age file was not encrypted to this identity")


def _stanza_lines(share: bytes, body: bytes) -> bytes:
    lines = b"-> X25519 " + _b64(share) + b"\n"
    encoded = _b64(body)
    # Body lines are full 64-column lines ended by a shorter (possibly empty) one.
    for start in range(0, len(encoded) + 1, _COLUMNS):
        lines += encoded[start : start + _COLUMNS] + b"\n"
    return lines


def build_header(recipient: bytes, file_key: bytes) -> tuple[bytes, bytes]:
    """(header bytes, X25519 share) for one X25519 recipient."""
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    body = ChaCha20Poly1305(_x25519_wrap_key(shared, share, recipient)).encrypt(
        bytes(12), file_key, None
    )
    covered = VERSION_LINE + b"\n" + _stanza_lines(share, body) + b"---"
    return covered + b" " + _b64(_header_mac(file_key, covered)) + b"\n", share


def read_header(stream: BinaryIO) -> Header:
    """Parse the header at the start of `stream`, leaving it at the payload nonce."""
    covered = bytearray()

    def line() -> bytes:
        raw = stream.readline(_MAX_HEADER)
        if not raw.endswith(b"\n") or len(covered) + len(raw) > _MAX_HEADER:
            raise AgeError("not an age file (no complete header)")
        return bytes(raw)

    first = line()
    if first != VERSION_LINE + b"\n":
        raise AgeError("not an age file (age-encryption.org/v1)")
    covered += first
    stanzas: list[tuple[tuple[bytes, ...], bytes]] = []
    current = line()
    while current.startswith(b"-> "):
        covered += current
        args = tuple(current[3:-1].split(b" "))
        if not args or not all(args) or any(c < 33 or c > 126 for a in args for c in a):
            raise AgeError("the age header is malformed (bad stanza)")
        if args[0] == b"X25519" and len(args) != 2:
            raise AgeError("the age header is malformed (bad X25519 stanza)")
        body = b""
        while True:
            body_line = line()
            covered += body_line
            body += body_line[:-1]
            if len(body_line) - 1 > _COLUMNS:
                raise AgeError("the age header is malformed (long body line)")
            if len(body_line) - 1 < _COLUMNS:
                break
        stanzas.append((args, _unb64(body)))
        current = line()
    if not stanzas or not current.startswith(b"--- "):
        raise AgeError("the age header is malformed (no recipient or no MAC)")
    covered += b"---"
    return Header(tuple(stanzas), _unb64(current[4:-1]), bytes(covered))


# --- payload (STREAM) -----------------------------------------------------------------------------


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _fill(read: Reader, buffer: memoryview) -> int:
    """Read until `buffer` is full or the input ends (pipes return short reads)."""
    filled = 0
    while filled < len(buffer):
        got = read(buffer[filled:])
        if not got:
            break
        filled += got
    return filled


def _blocks(read: Reader, unit: int) -> Iterator[tuple[memoryview, bool]]:
    """(block, final) pairs of up to `_BATCH` whole units, reading one block ahead.

    The STREAM construction flags the last chunk, so a block is handed out only once the next one
    (or the end of input) is known. A block stays valid until the next one is asked for.
    """
    size = unit * _BATCH
    current, ahead = memoryview(bytearray(size)), memoryview(bytearray(size))
    filled = _fill(read, current)
    while True:
        following = _fill(read, ahead) if filled == size else 0
        yield current[:filled], following == 0
        if following == 0:
            return
        current, ahead, filled = ahead, current, following


def encrypt_stream(read: Reader, write: Writer, recipient: bytes) -> tuple[bytes, int]:
    """Encrypt everything `read` yields to `recipient`; returns (X25519 share, ciphertext bytes).

    Memory stays at a few blocks of 1 MiB whatever the input size.
    """
    file_key = secrets.token_bytes(16)
    header, share = build_header(recipient, file_key)
    nonce = secrets.token_bytes(16)
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    write(memoryview(header + nonce))
    written = len(header) + len(nonce)
    out = memoryview(bytearray(_BATCH * (CHUNK + TAG)))
    counter = 0
    for block, final in _blocks(read, CHUNK):
        chunks = max(1, -(-len(block) // CHUNK))  # an empty input is one empty chunk
        position = 0
        for index in range(chunks):
            piece = block[index * CHUNK : (index + 1) * CHUNK]
            nonce_i = _nonce(counter, final and index == chunks - 1)
            end = position + len(piece) + TAG
            aead.encrypt_into(nonce_i, piece, None, out[position:end])
            position = end
            counter += 1
        write(out[:position])
        written += position
    return share, written


def decrypt_stream(stream: BinaryIO, header: Header, identity: Identity, write: Writer) -> int:
    """Decrypt the payload that follows `header` in `stream`; returns the plaintext bytes.

    Every chunk is authenticated before it is written; a truncated or altered file raises AgeError
    at the first bad chunk (blocks before it were already written).
    """
    file_key = header.file_key(identity)
    read: Reader = stream.readinto  # type: ignore[attr-defined]
    nonce = bytearray(16)
    if _fill(read, memoryview(nonce)) != 16:
        raise AgeError("the sealed copy is truncated (no payload)")
    aead = ChaCha20Poly1305(_hkdf(file_key, bytes(nonce), b"payload"))
    plain = memoryview(bytearray(_BATCH * CHUNK))
    unit = CHUNK + TAG
    counter = total = 0
    for block, final in _blocks(read, unit):
        chunks = max(1, -(-len(block) // unit))
        position = 0
        for index in range(chunks):
            piece = block[index * unit : (index + 1) * unit]
            last = final and index == chunks - 1
            if len(piece) < TAG or (last and len(piece) == TAG and counter > 0):
                raise AgeError(f"the sealed copy is truncated or damaged at chunk {counter}")
            end = position + len(piece) - TAG
            try:
                aead.decrypt_into(_nonce(counter, last), piece, None, plain[position:end])
            except InvalidTag:
                raise AgeError(
                    f"the sealed copy is truncated or damaged: chunk {counter} failed "
                    "authentication"
                ) from None
            position = end
            counter += 1
        write(plain[:position])
        total += position
    return total
