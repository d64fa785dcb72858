"""Ledger entries: which fields they carry, their canonical JSON, and checking it back.

An entry is one flat JSON object with sorted keys, no insignificant whitespace and raw UTF-8
(``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``). Its bytes are the
Merkle leaf, so one object has exactly one encoding, and any other encoding of it is tampering.
Values are JSON scalars; floats are refused because their text form is not canonical across
implementations (use integers: milliseconds, bytes, parts per million).

Entries never carry row values, key values or file names: deleted keys and paths appear only as a
keyed digest (see `digest`), and strings are short labels chosen by the code or the config (rule,
store, target as configured, method, reason).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

KINDS = frozenset({"purge", "drop", "shred", "refused", "hold", "config", "error"})

# Present in every entry (null when they do not apply), so that every entry has one shape.
COMMON_FIELDS = (
    "seq",  # position in the log, 0-based: the Merkle leaf index
    "time",  # RFC 3339 UTC time of the append (local clock)
    "origin",  # the log's name, as in its checkpoints
    "kind",
    "rule",  # rule name
    "rule_hash",  # sha256:<hex> of the rule's canonical settings
    "store",
    "target",  # the target as configured (table, glob, "sealed copies"), never a key or a path
    "cutoff",  # RFC 3339: items older than this were expired
    "count",  # items removed (rows, files, copies)
    "bytes",
    "method",  # how: "ctid-ranges", "pk-ranges", "partition-drop", "unlink", "crypto-erase"...
    "run_id",
    "digest",  # hmac-sha256-sum:<hex> over the removed keys, paths or copy ids
)

# Fields a kind may add. Callers pass only these; anything else is refused, so that a value cannot
# slip into the ledger under an unexpected name.
EXTRA_FIELDS = frozenset(
    {
        "action",  # hold: add, release; config: what changed
        "batches",
        "clock",  # where the cutoff's "now" came from: database or local
        "config_hash",
        "copy_id",  # a sealed copy's id (a random UUID, not personal data)
        "duration_ms",
        "error",  # error: the exception's class name
        "errors",  # items that could not be removed
        "event",  # hold: added, released
        "expired",  # items the plan found expired
        "held",  # expired items kept by holds
        "interrupted",  # true for a run completed at the next start after a crash
        "hold_digest",  # hold: keyed digest of the hold's key values
        "hold_id",
        "kek_generation",
        "key_exported",
        "legal_basis",
        "limit",  # refused: the guard limit that was exceeded
        "message",  # error: a short message free of personal data
        "reason",  # refused, hold, config: a reason chosen by the code or the config
        "remaining_expired",  # post-check: expired, unheld items still present
        "result",  # success, partial...
        "total",  # items in the whole target (the denominator of max_fraction)
        "until",
    }
)

ENTRY_FIELDS = frozenset(COMMON_FIELDS) | EXTRA_FIELDS
ASSIGNED_FIELDS = frozenset({"seq", "time", "origin"})  # set by the ledger, never by callers
MAX_STRING = 1024
MAX_MESSAGE = 300


class EntryError(ValueError):
    """An entry that is malformed, non-canonical or carries a forbidden field.

    Messages name the field but never repeat its value.
    """


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. 2026-11-28T15:02:03.123456Z."""
    if moment.tzinfo is None:
        raise EntryError("times must carry a time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse the `format_time` form (and other RFC 3339 UTC forms) into an aware datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("time without a zone")
    return moment.astimezone(UTC)


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """The canonical encoding of a flat entry object."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        raise EntryError("entry is not encodable as canonical JSON") from None


def _scalar(name: str, value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, float):
        raise EntryError(f"{name}: floats are not canonical; use an integer or a string")
    if isinstance(value, str):
        if name == "message" and len(value) > MAX_MESSAGE:
            return value[: MAX_MESSAGE - 3] + "..."
        if len(value) > MAX_STRING:
            raise EntryError(f"{name}: string longer than {MAX_STRING} characters")
        return value
    raise EntryError(f"{name}: {type(value).__name__} is not a JSON scalar")


def build_entry(fields: Mapping[str, Any], *, seq: int, time: datetime, origin: str) -> bytes:
    """The canonical bytes of an entry from a caller's `fields` plus the ledger's own."""
    unknown = sorted(set(fields) - ENTRY_FIELDS)
    if unknown:
        raise EntryError(f"unknown ledger field(s): {', '.join(unknown)}")
    assigned = sorted(set(fields) & ASSIGNED_FIELDS)
    if assigned:
        raise EntryError(f"field(s) set by the ledger itself: {', '.join(assigned)}")
    if fields.get("kind") not in KINDS:
        raise EntryError(f"kind must be one of {', '.join(sorted(KINDS))}")
    obj: dict[str, Any] = dict.fromkeys(COMMON_FIELDS)
    for name, value in fields.items():
        obj[name] = _scalar(name, value)
    obj["seq"] = seq
    obj["time"] = format_time(time)
    obj["origin"] = origin
    return canonical_json(obj)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise EntryError("duplicate field")
    return obj


def _reject_float(_text: str) -> Any:
    raise EntryError("float value")


def parse_entry(data: bytes) -> dict[str, Any]:
    """Parse and check stored entry bytes: canonical, flat, known fields, a known kind.

    Raises EntryError naming what is wrong; the caller adds where.
    """
    try:
        obj = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_float,
        )
    except UnicodeDecodeError:
        raise EntryError("not UTF-8") from None
    except json.JSONDecodeError:
        raise EntryError("not JSON") from None
    if not isinstance(obj, dict):
        raise EntryError("not a JSON object")
    unknown = set(obj) - ENTRY_FIELDS
    if unknown:
        raise EntryError(f"unknown field(s): {', '.join(sorted(unknown))}")
    missing = [name for name in COMMON_FIELDS if name not in obj]
    if missing:
        raise EntryError(f"missing field(s): {', '.join(missing)}")
    if any(isinstance(value, dict | list) for value in obj.values()):
        raise EntryError("nested value")
    if obj["kind"] not in KINDS:
        raise EntryError("unknown kind")
    if not isinstance(obj["seq"], int) or isinstance(obj["seq"], bool):
        raise EntryError("seq is not an integer")
    if not isinstance(obj["time"], str):
        raise EntryError("time is not a string")
    if canonical_json(obj) != data:
        raise EntryError("not in canonical form")
    return obj
