"""`retentiond ledger verify|export|show|proof|check-proof`: the deletion ledger for auditors."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine

from retentiond import humanize
from retentiond.commands.common import open_state
from retentiond.config import LoadedConfig
from retentiond.errors import RetentiondError, UsageError, VerificationError
from retentiond.fileutil import replace_file
from retentiond.ledger.digest import KeyDigest, row_item
from retentiond.ledger.entry import EntryError, parse_entry, parse_time
from retentiond.ledger.export import write_export
from retentiond.ledger.merkle import ProofError
from retentiond.ledger.note import NoteError, Verifier, parse_verifier_key, verifier_key
from retentiond.ledger.proof import build_proof, format_proof, parse_proof
from retentiond.ledger.proof import check_proof as check_entry_proof
from retentiond.ledger.signing import (
    checkpoint_now,
    key_verifier,
    load_signer_key,
    local_copy_path,
    read_local_copy,
)
from retentiond.ledger.store import iter_entries, latest_checkpoint, read_head
from retentiond.ledger.verify import Report, verify_export, verify_state


def _print_report(report: Report, source: str, out: TextIO) -> None:
    """Print a verification report; raise VerificationError (exit 3) when something is wrong."""
    for note in report.notes:
        print(f"note: {note}", file=out)
    if not report.ok:
        lines = [f"{source}: verification FAILED ({len(report.findings.problems)} problems)"]
        raise VerificationError("\n".join(lines + report.findings.lines()))
    latest = report.latest
    covered = f"the newest covers {latest.tree_size}" if latest else "none yet"
    print(
        f"{source}: OK: {report.entries} entries, {report.checkpoints} signed checkpoints "
        f"({covered}), key {report.key_id}",
        file=out,
    )


def _open(config_path: Path | None) -> tuple[LoadedConfig, Engine, str, Verifier]:
    loaded, engine = open_state(config_path)
    signer_key = load_signer_key(loaded.config.ledger.signing_key_file)
    return loaded, engine, signer_key, key_verifier(signer_key)


def _verify_state(loaded: LoadedConfig, engine: Engine, verifier: Verifier) -> Report:
    # The kept copy is read first: it is only ever written after its checkpoint committed.
    kept = read_local_copy(local_copy_path(loaded.config.ledger.signing_key_file))
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return verify_state(conn, verifier, local_copy=kept)


def verify(config_path: Path | None, export_dir: Path | None, out: TextIO) -> int:
    """Check the whole ledger (or an export, offline with nothing but its files); 3 on tampering."""
    if export_dir is not None:
        if not export_dir.is_dir():
            raise UsageError(f"--export: {export_dir} is not a directory")
        _print_report(verify_export(export_dir), f"export {export_dir}", out)
        return 0
    loaded, engine, _key, verifier = _open(config_path)
    try:
        _print_report(_verify_state(loaded, engine, verifier), "ledger", out)
    finally:
        engine.dispose()
    return 0


def export(config_path: Path | None, directory: Path, out: TextIO) -> int:
    """Verify the ledger, sign a checkpoint of it now, and write entries, checkpoint and key."""
    loaded, engine, signer_key, verifier = _open(config_path)
    try:
        report = _verify_state(loaded, engine, verifier)
        if not report.ok:
            _print_report(report, "ledger (nothing exported)", out)
        note = checkpoint_now(engine, loaded.config.ledger.signing_key_file)
        with engine.connect() as conn:
            count = write_export(conn, directory, note, verifier, verifier_key(signer_key))
    finally:
        engine.dispose()
    # What the auditor will run, run here first: an export that does not verify is never handed out.
    _print_report(verify_export(directory), f"export {directory}", out)
    print(f"exported {count} entries to {directory}", file=out)
    return 0


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        return parse_time(text)
    except ValueError:
        raise UsageError(
            f"--since: {text!r} is not a date (YYYY-MM-DD) or an RFC 3339 time"
        ) from None


def _summary(obj: dict[str, Any]) -> list[object]:
    what = obj.get("reason") or obj.get("event") or obj.get("error") or ""
    return [
        obj["seq"],
        str(obj["time"])[:19].replace("T", " "),
        obj["kind"],
        obj.get("rule") or "-",
        obj.get("target") or "-",
        "-" if obj.get("count") is None else obj["count"],
        humanize.size(obj.get("bytes")),
        obj.get("method") or "-",
        what,
    ]


def show(config_path: Path | None, since: str | None, as_json: bool, out: TextIO) -> int:
    """List entries (from `since` on): a table, or with --json the canonical entries, one a line."""
    start = _since(since)
    _loaded, engine = open_state(config_path)
    rows: list[list[object]] = []
    try:
        with engine.connect() as conn:
            for seq, data, _leaf in iter_entries(conn):
                try:
                    obj = parse_entry(data)
                except EntryError as exc:
                    raise VerificationError(
                        f"seq {seq}: malformed entry ({exc}); run `retentiond ledger verify`"
                    ) from None
                if start is not None and parse_time(obj["time"]) < start:
                    continue
                if as_json:
                    print(data.decode("utf-8"), file=out)
                else:
                    rows.append(_summary(obj))
    finally:
        engine.dispose()
    if not as_json:
        headers = ["seq", "time (UTC)", "kind", "rule", "target", "count", "bytes", "method", ""]
        print(humanize.table(headers, rows) if rows else "no entries", file=out)
    return 0


def proof(config_path: Path | None, seq: int, output: Path, out: TextIO) -> int:
    """Write an inclusion proof of entry `seq` against the newest signed checkpoint."""
    loaded, engine, signer_key, verifier = _open(config_path)
    try:
        with engine.connect() as conn:
            head = read_head(conn)
            latest = latest_checkpoint(conn)
        if head is None or not 0 <= seq < head.tree_size:
            size = 0 if head is None else head.tree_size
            raise UsageError(f"no ledger entry {seq} (the ledger has {size} entries)")
        if latest is None or latest.tree_size <= seq:
            note = checkpoint_now(engine, loaded.config.ledger.signing_key_file)
        else:
            note = latest.note
        with engine.connect() as conn:
            try:
                entry_proof = build_proof(conn, seq, note, verifier, verifier_key(signer_key))
            except (ProofError, NoteError) as exc:
                raise VerificationError(f"seq {seq}: {exc}") from None
    finally:
        engine.dispose()
    replace_file(output, [format_proof(entry_proof).encode("utf-8")])
    size = len(entry_proof.path)
    print(f"proof of entry {seq} ({size} hashes) written to {output}", file=out)
    return 0


def check_proof(proof_file: Path, public_key: Path | None, out: TextIO) -> int:
    """Check a proof file alone: the checkpoint's signature, the entry and its path to the root."""
    try:
        parsed = parse_proof(proof_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{proof_file}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        # A proof is ASCII text: bytes that are not UTF-8 mean it was altered or corrupted.
        raise VerificationError(f"{proof_file}: not a proof (not UTF-8 text)") from None
    if public_key is not None:
        try:
            verifier = parse_verifier_key(public_key.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, NoteError) as exc:
            raise UsageError(f"--public-key {public_key}: {exc}") from None
        source = f"key {verifier.key_id} from {public_key}"
    elif parsed.verifier_key is None:
        raise UsageError(f"{proof_file} carries no public key; pass --public-key")
    else:
        try:
            verifier = parse_verifier_key(parsed.verifier_key)
        except NoteError as exc:
            raise VerificationError(f"{proof_file}: its public key: {exc}") from None
        source = (
            f"key {verifier.key_id} carried by the proof itself: compare it with the ledger's "
            "published key"
        )
    try:
        checkpoint = check_entry_proof(parsed, verifier)
    except RetentiondError as exc:
        raise VerificationError(f"{proof_file}: {exc}") from None
    obj = parse_entry(parsed.entry)
    print(f"{proof_file}: OK: entry {parsed.index} is in the signed checkpoint", file=out)
    print(f"  checkpoint: {checkpoint.origin}, {checkpoint.tree_size} entries", file=out)
    print(f"  signed by: {source}", file=out)
    print("  entry: " + json.dumps(obj, sort_keys=True, ensure_ascii=False), file=out)
    return 0


def _key_items(keys_file: Path, kind: str) -> list[bytes]:
    """The digest items of a list of keys: one a line, as the stores encode them."""
    try:
        raw = keys_file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{keys_file}: cannot read: {exc.strerror}") from None
    lines = [line for line in raw.split(b"\n") if line.strip()]
    if kind == "path":
        return lines  # relative paths, raw bytes, exactly as the file store digests them
    items = []
    for number, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except ValueError:
            raise UsageError(
                f"{keys_file}:{number}: not a JSON value (e.g. 40211 or [40211])"
            ) from None
        items.append(row_item(value if isinstance(value, list) else [value]))
    return items


def check_keys(config_path: Path | None, seq: int, keys_file: Path, kind: str, out: TextIO) -> int:
    """Show that entry SEQ deleted exactly the keys listed in KEYS_FILE (exit 0), or not (exit 3).

    The digest in the entry is keyed with the commitment key of the keystore, so this runs where the
    state database and the key-encryption key are; the list of keys never leaves that machine.
    """
    from retentiond import keystore

    loaded, engine = open_state(config_path)
    try:
        with engine.connect() as conn:
            found = [data for _s, data, _l in iter_entries(conn, seq, seq + 1)]
            key = keystore.commitment_key(conn, loaded.config.keys.kek_file)
    finally:
        engine.dispose()
    if not found:
        raise UsageError(f"ledger entry {seq} does not exist")
    entry = parse_entry(found[0])
    if "digest" not in entry:
        raise UsageError(f"ledger entry {seq} ({entry.get('kind')}) records no digest of keys")
    digest = KeyDigest(key)
    digest.update(_key_items(keys_file, kind))
    same = digest.hexdigest() == entry["digest"]
    print(
        f"entry {seq} ({entry.get('kind')}, rule {entry.get('rule')}): "
        f"{'MATCH' if same else 'NO MATCH'}: the {digest.count} listed keys "
        f"{'are exactly' if same else 'are not'} the keys it records (count {entry.get('count')})",
        file=out,
    )
    if not same:
        raise VerificationError(f"entry {seq}: the listed keys do not match its digest")
    return 0
