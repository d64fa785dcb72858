"""Ledger entries: one canonical encoding, known fields only, and every other encoding refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retentiond.ledger.entry import (
    COMMON_FIELDS,
    EXTRA_FIELDS,
    EntryError,
    build_entry,
    format_time,
    parse_entry,
)

WHEN = datetime(2026, 11, 28, 15, 2, 3, 123456, tzinfo=UTC)
ORIGIN = "lab.example.org/retentiond"


def entry(**fields: object) -> bytes:
    return build_entry({"kind": "purge", **fields}, seq=7, time=WHEN, origin=ORIGIN)


def test_an_entry_is_sorted_compact_utf8_with_every_common_field() -> None:
    data = entry(rule="lab-results", count=3, bytes=12, target="résultats")
    assert (
        data
        == json.dumps(
            json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )
    obj = parse_entry(data)
    assert set(COMMON_FIELDS) <= set(obj)
    assert (
        obj["seq"] == 7 and obj["origin"] == ORIGIN and obj["time"] == "2026-11-28T15:02:03.123456Z"
    )
    assert obj["store"] is None  # absent fields are present as null: one shape for every entry
    assert "résultats".encode() in data  # raw UTF-8, not \\u escapes


def test_times_are_utc_rfc3339() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 1, 1, 1, 0, tzinfo=paris)) == "2026-01-01T00:00:00.000000Z"
    assert parse_entry(entry(cutoff=datetime(2016, 1, 1, tzinfo=UTC)))["cutoff"] == (
        "2016-01-01T00:00:00.000000Z"
    )
    with pytest.raises(EntryError):
        entry(cutoff=datetime(2016, 1, 1))  # naive: which clock?


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"patient_name": "Dupont"}, "unknown ledger field"),
        ({"seq": 3}, "set by the ledger"),
        ({"origin": "elsewhere"}, "set by the ledger"),
        ({"kind": "delete"}, "kind must be one of"),
        ({"count": 1.5}, "floats are not canonical"),
        ({"reason": ["a", "list"]}, "not a JSON scalar"),
        ({"reason": "x" * 2000}, "longer than"),
    ],
)
def test_bad_fields_are_refused_without_their_value(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(EntryError, match=message) as caught:
        build_entry({"kind": "purge", **fields}, seq=0, time=WHEN, origin=ORIGIN)
    assert "Dupont" not in str(caught.value)


def test_long_error_messages_are_cut_not_refused() -> None:
    obj = parse_entry(entry(kind="error", error="OperationalError", message="m" * 1000))
    assert len(obj["message"]) == 300 and obj["message"].endswith("...")


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.replace(b'{"bytes"', b'{ "bytes"'),  # insignificant whitespace
        lambda s: s.replace(b'"count":3,', b'"count":3.0,'),  # a float
        lambda s: s.replace(b"r\xc3\xa9sultats", b"r\\u00e9sultats"),  # an escape for raw UTF-8
        lambda s: s.replace(b'"lab-results"', b'"lab\\u002dresults"'),
        lambda s: s[:-1] + b',"count":3}',  # a duplicate field
        lambda s: s.replace(b'"bytes":12,', b""),  # a missing common field
        lambda s: s.replace(b'"count":3,"cutoff":null,', b'"cutoff":null,"count":3,'),  # key order
        lambda s: s[:-1] + b',"name":"Dupont"}',  # an unknown field
        lambda s: s.replace(b'"kind":"purge"', b'"kind":"wipe"'),
        lambda s: b"[" + s + b"]",
        lambda s: s + b"\n",
        lambda s: s.replace(b"\xc3\xa9", b"\xe9"),  # not UTF-8
    ],
)
def test_any_other_encoding_is_refused(change: object) -> None:
    data = entry(rule="lab-results", count=3, bytes=12, target="résultats")
    changed = change(data)  # type: ignore[operator]
    assert changed != data
    with pytest.raises(EntryError):
        parse_entry(changed)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=40))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(st.sampled_from(sorted(EXTRA_FIELDS | {"rule", "count", "target"})), scalars)
)
def test_whatever_callers_pass_reads_back_canonical(fields: dict[str, object]) -> None:
    try:
        data = build_entry({**fields, "kind": "hold"}, seq=1, time=WHEN, origin=ORIGIN)
    except EntryError:
        return  # e.g. a lone surrogate: refused, never stored
    obj = parse_entry(data)
    for name, value in fields.items():
        if name != "message":
            assert obj[name] == value
