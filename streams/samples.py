"""Hostile inputs that every worker must survive: injected by the demo, asserted by the tests.

Each sample is (name, raw bytes, the dead-letter reason Vigil must give it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from streams.contracts import DeadLetterReason, Kind


@dataclass(frozen=True, slots=True)
class HostileSample:
    name: str
    raw: bytes
    reason: DeadLetterReason


def news_json(**fields: object) -> bytes:
    base = {"id": "x", "source": "wire", "published_at": "2026-11-23T09:00:00Z", "headline": "Shares rise"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def support_json(**fields: object) -> bytes:
    base = {
        "id": "x", "channel": "chat", "customer_id": "c-1",
        "text": "my card was stolen", "created_at": "2026-11-23T09:00:00Z",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def hostile_samples(kind: Kind, prefix: str, max_message_bytes: int) -> list[HostileSample]:
    """One of each kind of bad message; ids start with `prefix` so a run can find its own."""
    make = news_json if kind is Kind.news else support_json
    text_field = "headline" if kind is Kind.news else "text"
    time_field = "published_at" if kind is Kind.news else "created_at"
    R = DeadLetterReason
    return [
        HostileSample("invalid JSON", b'{"id": "' + prefix.encode() + b'-json", "headline": ', R.bad_json),
        HostileSample("JSON that is not an object", b'["a", "list"]', R.bad_json),
        HostileSample("wrong type", make(id=f"{prefix}-type", **{text_field: 42}), R.invalid),
        HostileSample("missing field", make(id=f"{prefix}-missing", **{text_field: None}), R.invalid),
        HostileSample("empty text", make(id=f"{prefix}-empty", **{text_field: "   "}), R.invalid),
        HostileSample("unknown field", make(id=f"{prefix}-unknown", sentiment="bullish"), R.invalid),
        HostileSample(
            "oversized message", make(id=f"{prefix}-huge", **{text_field: "a" * (max_message_bytes + 1)}), R.too_large
        ),
        HostileSample(
            "invalid UTF-8",
            make(id=f"{prefix}-utf8", **{text_field: "MARK"}).replace(b"MARK", b"bad \xff\xfe bytes"),
            R.bad_encoding,
        ),
        HostileSample("null value", b"", R.invalid),
        HostileSample("time with no UTC equivalent", make(id=f"{prefix}-t0", **{time_field: "0001-01-01T00:00:00+01:00"}),
                      R.invalid),
        HostileSample("time ClickHouse cannot store", make(id=f"{prefix}-t1", **{time_field: "1969-07-20T20:17:40Z"}),
                      R.invalid),
        HostileSample("time years ahead", make(id=f"{prefix}-t2", **{time_field: "2099-01-01T00:00:00Z"}), R.invalid),
    ]


def duplicate_id_pair(kind: Kind, prefix: str) -> tuple[bytes, bytes]:
    """Two valid messages sharing one id with different content: the second must be refused."""
    make = news_json if kind is Kind.news else support_json
    text_field = "headline" if kind is Kind.news else "text"
    return (
        make(id=f"{prefix}-dup", **{text_field: "first message with this id"}),
        make(id=f"{prefix}-dup", **{text_field: "a different message reusing the id"}),
    )


def valid_exotic_texts() -> list[str]:
    """Texts that look odd but are valid and must be scored."""
    return [
        "📉📉 $TSLA crashing again 😱",
        "الأسهم ترتفع بعد إعلان الأرباح",  # Arabic (RTL)
        "株価が急落した",
        "Zero\u200bwidth joiner and tabs\tinside",
    ]
