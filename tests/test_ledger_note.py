"""Signed notes and checkpoints: byte for byte what golang.org/x/mod/sumdb/note writes and reads."""

from __future__ import annotations

import base64

import pytest

from retentiond.ledger.note import (
    Checkpoint,
    NoteError,
    generate_signer_key,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_signer_key,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key,
)

# The example key pair and note of the reference implementation's tests (note_test.go).
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n"
)


def test_the_reference_keys_and_signature_are_reproduced_exactly() -> None:
    assert verifier_key(GO_SIGNER) == GO_VERIFIER
    assert sign_note(GO_TEXT, GO_SIGNER) == GO_NOTE
    assert open_note(GO_NOTE, GO_VERIFIER) == GO_TEXT


def test_a_changed_text_or_signature_does_not_open() -> None:
    with pytest.raises(NoteError, match="does not verify"):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), GO_VERIFIER)
    with pytest.raises(NoteError):
        open_note(GO_NOTE.replace("x08go", "x08gp"), GO_VERIFIER)


def test_a_note_signed_by_another_key_does_not_open() -> None:
    other = generate_signer_key("PeterNeumann")  # same name, another key
    with pytest.raises(NoteError, match="not signed by PeterNeumann"):
        open_note(sign_note(GO_TEXT, other), GO_VERIFIER)


def test_signatures_by_unknown_keys_are_ignored_as_the_spec_asks() -> None:
    witness = generate_signer_key("witness.example")
    cosigned = GO_NOTE + sign_note(GO_TEXT, witness).split("\n\n", 1)[1]
    assert open_note(cosigned, GO_VERIFIER) == GO_TEXT
    assert open_note(cosigned, verifier_key(witness)) == GO_TEXT


@pytest.mark.parametrize(
    "note",
    [
        GO_TEXT,  # no signature block
        GO_NOTE.rstrip("\n"),  # no final newline
        GO_NOTE.replace("\u2014 ", "-- "),  # a hyphen instead of the em dash
        GO_NOTE.replace("x08go/", "x08go\t"),  # a control character
        GO_TEXT + "\n\u2014 PeterNeumann AAAA\n",  # too short to hold a key hash and a signature
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(NoteError):
        open_note(note, GO_VERIFIER)


def test_generated_keys_round_trip_and_sign_checkpoints() -> None:
    signer = generate_signer_key("lab.example.org/retentiond")
    vkey = verifier_key(signer)
    name, key_hash, encoded = vkey.split("+", 2)
    assert name == "lab.example.org/retentiond" and len(key_hash) == 8
    assert base64.b64decode(encoded)[0] == 0x01 and len(base64.b64decode(encoded)) == 33
    checkpoint = Checkpoint("lab.example.org/retentiond", 42, bytes(range(32)))
    note = sign_checkpoint(checkpoint, signer)
    assert note.startswith(
        "lab.example.org/retentiond\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n"
    )
    assert open_checkpoint(note, vkey) == checkpoint
    assert parse_verifier_key(vkey).key_id == f"lab.example.org/retentiond+{key_hash}"
    assert parse_signer_key(signer).name == "lab.example.org/retentiond"


@pytest.mark.parametrize(
    "key",
    [
        GO_VERIFIER.replace("c74f20a3", "c74f20a4"),  # hash of another key
        GO_VERIFIER.replace("+ARpc", "+AhpC"),  # not Ed25519 / altered key
        GO_VERIFIER[:-4],  # truncated
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in name
        "PeterNeumann+c74f20a3",
    ],
)
def test_malformed_verifier_keys_are_refused(key: str) -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(key)


def test_malformed_signer_keys_are_refused_without_echoing_the_key() -> None:
    bad = GO_SIGNER.replace("c74f20a3", "00000000")
    with pytest.raises(NoteError) as caught:
        parse_signer_key(bad)
    assert "AYEKFALV" not in str(caught.value)
    with pytest.raises(NoteError):
        generate_signer_key("has space")
    with pytest.raises(NoteError):
        generate_signer_key("has+plus")


def test_checkpoint_bodies_follow_c2sp() -> None:
    # The example of c2sp.org/tlog-checkpoint.
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    checkpoint = parse_checkpoint(body)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.tree_size == 20852163
    assert checkpoint.body() == body
    assert parse_checkpoint(body + "extension line\n").tree_size == 20852163
    for bad in [
        body.rstrip("\n"),
        body.replace("20852163", "020852163"),  # leading zero
        body.replace("20852163", "-1"),
        body.replace("CsUYap", "CsUY"),  # not 32 bytes
        "example.com/x\n1\n",
        body + "\n",  # an empty extension line
    ]:
        with pytest.raises(NoteError):
            parse_checkpoint(bad)
