"""Inclusion proofs of one entry, as c2sp.org/tlog-proof files that check offline.

The file holds the entry's index, its RFC 6962 audit path and the signed checkpoint, as the spec
lays out; its ``extra`` line carries (base64 of canonical JSON) the entry itself and the ledger's
verifier key, so that the file alone shows what was recorded. Nothing in ``extra`` is trusted: the
entry is bound by the audit path, and the key should be compared with the published one.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from sqlalchemy import Connection

from retentiond.errors import VerificationError
from retentiond.ledger.entry import canonical_json
from retentiond.ledger.merkle import (
    ProofError,
    inclusion_ranges,
    leaf_hash,
    range_roots,
    verify_inclusion,
)
from retentiond.ledger.note import Checkpoint, NoteError, Verifier, open_checkpoint
from retentiond.ledger.scan import content_problem
from retentiond.ledger.store import iter_entries

HEADER = "c2sp.org/tlog-proof@v1"


@dataclass(frozen=True)
class EntryProof:
    """One entry, its audit path, and the signed checkpoint the path leads to."""

    index: int
    entry: bytes
    path: list[bytes]
    note: str
    verifier_key: str | None


def build_proof(conn: Connection, seq: int, note: str, verifier: Verifier, vkey: str) -> EntryProof:
    """The proof of entry `seq` against the signed checkpoint `note` (it must cover `seq`)."""
    checkpoint = open_checkpoint(note, verifier)
    if not 0 <= seq < checkpoint.tree_size:
        raise ProofError(f"seq {seq} is not in the checkpoint of size {checkpoint.tree_size}")
    entry = next((data for _, data, _ in iter_entries(conn, seq, seq + 1)), b"")
    # Leaf hashes are recomputed from the entries, not read from their stored column, and streamed:
    # memory stays O(log n) however long the ledger.
    leaves = (leaf_hash(data) for _, data, _ in iter_entries(conn, 0, checkpoint.tree_size))
    proof = EntryProof(
        index=seq,
        entry=entry,
        path=range_roots(inclusion_ranges(seq, checkpoint.tree_size), leaves),
        note=note,
        verifier_key=vkey,
    )
    check_proof(proof, verifier)  # never hand out a proof that does not check
    return proof


def format_proof(proof: EntryProof) -> str:
    """The proof file's text."""
    extra = {"entry": proof.entry.decode("utf-8"), "verifier_key": proof.verifier_key}
    lines = [
        HEADER,
        "extra " + base64.b64encode(canonical_json(extra)).decode("ascii"),
        f"index {proof.index}",
        *(base64.b64encode(h).decode("ascii") for h in proof.path),
        "",
    ]
    return "\n".join(lines) + "\n" + proof.note


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise VerificationError("proof file: malformed base64") from None


def parse_proof(text: str) -> EntryProof:
    """Read a proof file; raises VerificationError when it is malformed."""
    head, sep, note = text.partition("\n\n")
    lines = head.split("\n")
    if not sep or lines[0] != HEADER or len(lines) < 3 or not lines[1].startswith("extra "):
        raise VerificationError("proof file: not a c2sp.org/tlog-proof@v1 proof with an entry")
    try:
        extra = json.loads(_b64(lines[1][len("extra ") :]).decode("utf-8"))
        entry = extra["entry"].encode("utf-8")
        vkey = extra.get("verifier_key")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise VerificationError("proof file: unreadable extra data") from None
    index_text = lines[2].removeprefix("index ")
    if not lines[2].startswith("index ") or not index_text.isdigit():
        raise VerificationError("proof file: no index line")
    path = [_b64(line) for line in lines[3:]]
    return EntryProof(int(index_text), entry, path, note, vkey if isinstance(vkey, str) else None)


def check_proof(proof: EntryProof, verifier: Verifier) -> Checkpoint:
    """Check the checkpoint's signature, the entry's form and its path; returns the checkpoint."""
    try:
        checkpoint = open_checkpoint(proof.note, verifier)
    except NoteError as exc:
        raise VerificationError(f"proof's checkpoint: {exc}") from None
    problem = content_problem(proof.entry, proof.index, checkpoint.origin)
    if problem is not None:
        raise VerificationError(f"proof's entry: {problem}")
    try:
        leaf = leaf_hash(proof.entry)
        verify_inclusion(proof.index, checkpoint.tree_size, leaf, proof.path, checkpoint.root_hash)
    except ProofError as exc:
        raise VerificationError(f"seq {proof.index}: {exc}") from None
    return checkpoint
