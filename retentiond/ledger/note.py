"""C2SP signed notes with Ed25519 keys, and tlog checkpoints carried in them.

Key and note formats are those of golang.org/x/mod/sumdb/note (c2sp.org/signed-note), so that a
checkpoint written here is checked by tools we did not write:

- signer key   ``PRIVATE+KEY+<name>+<hash8hex>+<base64(0x01 || ed25519 seed)>``
- verifier key ``<name>+<hash8hex>+<base64(0x01 || ed25519 public key)>``
- key hash     first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key), big-endian
- note         ``<text ending in \\n>\\n— <name> <base64(key hash || signature)>\\n``...

A checkpoint (c2sp.org/tlog-checkpoint) is a note whose text is
``<origin>\\n<tree size>\\n<base64 root hash>\\n``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "  # an em dash and a space open every signature line
_MAX_SIGNATURES = 100  # the reference implementation's cap: parsing stays cheap on hostile input
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class NoteError(ValueError):
    """A key or note that is malformed, or a signature that does not verify."""


@dataclass(frozen=True)
class Signer:
    """A parsed signer key: its name, key hash and Ed25519 private key."""

    name: str
    key_hash: int
    private_key: Ed25519PrivateKey


@dataclass(frozen=True)
class Verifier:
    """A parsed verifier key: its name, key hash and Ed25519 public key."""

    name: str
    key_hash: int
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        """The key's short id, ``<name>+<hash8hex>``, to compare with a published fingerprint."""
        return f"{self.name}+{self.key_hash:08x}"


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and its RFC 6962 root hash."""

    origin: str
    tree_size: int
    root_hash: bytes

    def body(self) -> str:
        """The checkpoint's note text, as signed."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        return f"{self.origin}\n{self.tree_size}\n{root}\n"


def valid_key_name(name: str) -> bool:
    """True for a non-empty key name without spaces or '+' (the signed-note rule)."""
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


def _key_hash(name: str, key: bytes) -> int:
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise NoteError("malformed base64") from None


def _public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes_raw()


def generate_signer_key(name: str) -> str:
    """A fresh Ed25519 signer key named `name`, in the note text form (keep it secret)."""
    if not valid_key_name(name):
        raise NoteError("a key name must be non-empty, without spaces or '+'")
    seed = secrets.token_bytes(32)
    public = _public_bytes(Ed25519PrivateKey.from_private_bytes(seed))
    key_hash = _key_hash(name, bytes([ALG_ED25519]) + public)
    encoded = base64.b64encode(bytes([ALG_ED25519]) + seed).decode("ascii")
    return f"PRIVATE+KEY+{name}+{key_hash:08x}+{encoded}"


def parse_signer_key(text: str) -> Signer:
    """Parse a signer key; raises NoteError without repeating any of the secret."""
    # The base64 key may itself hold '+': split off the fixed fields only.
    parts = text.strip().split("+", 4)
    if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
        raise NoteError("malformed signer key")
    name, hash_hex, encoded = parts[2], parts[3], parts[4]
    if not valid_key_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
        raise NoteError("malformed signer key")
    try:
        raw = _b64decode(encoded)
    except NoteError:
        raise NoteError("malformed signer key") from None
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("malformed signer key (not an Ed25519 key)")
    private_key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    key_hash = _key_hash(name, bytes([ALG_ED25519]) + _public_bytes(private_key))
    if key_hash != int(hash_hex, 16):
        raise NoteError("signer key hash does not match its key")
    return Signer(name=name, key_hash=key_hash, private_key=private_key)


def verifier_key(signer_key: str) -> str:
    """The public verifier key (C2SP vkey) of a signer key."""
    signer = parse_signer_key(signer_key)
    raw = bytes([ALG_ED25519]) + _public_bytes(signer.private_key)
    return f"{signer.name}+{signer.key_hash:08x}+{base64.b64encode(raw).decode('ascii')}"


def parse_verifier_key(text: str) -> Verifier:
    """Parse a verifier key ``<name>+<hash8hex>+<base64 key>``."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError("malformed verifier key")
    name, hash_hex, encoded = parts
    if not valid_key_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
        raise NoteError("malformed verifier key")
    raw = _b64decode(encoded)
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("malformed verifier key (not an Ed25519 key)")
    key_hash = _key_hash(name, raw)
    if key_hash != int(hash_hex, 16):
        raise NoteError("verifier key hash does not match its key")
    return Verifier(
        name=name, key_hash=key_hash, public_key=Ed25519PublicKey.from_public_bytes(raw[1:])
    )


def _check_text(text: str) -> None:
    # The rules of the reference parser: a note it could not read back is never written.
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        raise NoteError("note text must not hold control characters")


def sign_note(text: str, signer: Signer | str) -> str:
    """`text` followed by a blank line and the signer's signature line."""
    if isinstance(signer, str):
        signer = parse_signer_key(signer)
    _check_text(text)
    signature = signer.private_key.sign(text.encode("utf-8"))
    blob = signer.key_hash.to_bytes(4, "big") + signature
    return f"{text}\n{_SIG_PREFIX}{signer.name} {base64.b64encode(blob).decode('ascii')}\n"


def open_note(note: str, verifier: Verifier | str) -> str:
    """The text of `note` once a signature by `verifier` on it checks; raises NoteError otherwise.

    Signatures by other keys are ignored (a witness may cosign), as the signed-note spec asks.
    """
    if isinstance(verifier, str):
        verifier = parse_verifier_key(verifier)
    if any(ord(ch) < 0x20 and ch != "\n" for ch in note):
        raise NoteError("malformed note: control characters")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no signature block")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("malformed note: signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise NoteError("malformed note: too many signatures")
    verified = False
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("malformed note: bad signature line")
        name, _, encoded = line[len(_SIG_PREFIX) :].partition(" ")
        if not valid_key_name(name) or not encoded:
            raise NoteError("malformed note: bad signature line")
        blob = _b64decode(encoded)
        if len(blob) < 5:
            raise NoteError("malformed note: short signature")
        if name != verifier.name or int.from_bytes(blob[:4], "big") != verifier.key_hash:
            continue
        try:
            verifier.public_key.verify(blob[4:], text.encode("utf-8"))
        except InvalidSignature:
            raise NoteError(f"signature by {verifier.key_id} does not verify") from None
        verified = True
    if not verified:
        raise NoteError(f"note is not signed by {verifier.key_id}")
    return text


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint's note text (origin, size, root hash, optional extension lines)."""
    if not text.endswith("\n"):
        raise NoteError("malformed checkpoint: no final newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or any(not line for line in lines):
        raise NoteError("malformed checkpoint: needs origin, size and root hash lines")
    origin, size, root_b64 = lines[0], lines[1], lines[2]
    if not _DECIMAL.fullmatch(size):
        raise NoteError("malformed checkpoint: tree size is not a decimal number")
    root = _b64decode(root_b64)
    if len(root) != 32:
        raise NoteError("malformed checkpoint: root hash is not 32 bytes")
    return Checkpoint(origin=origin, tree_size=int(size), root_hash=root)


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer | str) -> str:
    """The signed note of `checkpoint`."""
    return sign_note(checkpoint.body(), signer)


def open_checkpoint(note: str, verifier: Verifier | str) -> Checkpoint:
    """The checkpoint in `note`, once its signature by `verifier` checks."""
    return parse_checkpoint(open_note(note, verifier))
