"""Raw Kafka value bytes -> a validated input message, or a Rejection saying exactly why not.

Pure: no Kafka here. The checks run cheapest first and each one names what was wrong, where, and
the limit, so a dead letter tells its producer what to fix:

1. missing/empty value                       -> invalid
2. more than ``max_bytes`` (not even decoded) -> too_large
3. not UTF-8 (byte offset)                    -> bad_encoding
4. not JSON, or not a JSON object (line/col)  -> bad_json
5. a JSON escape that is a lone surrogate     -> bad_encoding (it cannot be re-encoded as UTF-8)
6. a text field over ``max_text_chars``       -> too_large
7. the contract (types, required/unknown fields, blank text) -> invalid
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from streams.contracts import (
    INPUT_MODELS,
    MAX_LETTER_KEY_BYTES,
    MAX_LETTER_RAW_BYTES,
    DeadLetter,
    DeadLetterReason,
    Kind,
    NewsItem,
    SupportMessage,
)

MAX_DETAIL_CHARS = 2000  # DeadLetter.detail's bound
_TEXT_FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.news: ("headline", "body"),
    Kind.support: ("text",),
}
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a raw value was refused: the dead-letter reason and a detail a person can act on."""

    reason: DeadLetterReason
    detail: str


def content_hash(raw: bytes) -> int:
    """A 64-bit unsigned hash of the raw payload, the same in every process and on every host."""
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def _clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable(text: str) -> str:
    """``text`` with each character a terminal would act on or not show (C0/C1 controls such as
    ESC, zero-width and direction marks, lone surrogates) written as its Python escape."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _name(part: object) -> str:
    """A field name as a detail quotes it: the producer chose it, so one holding escape codes is
    shown as a Python literal, never sent to a terminal as it is."""
    text = str(part)
    return text if text.isprintable() else repr(text)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of repeated keys silently; a producer that sends two "text"
    # fields has a bug worth hearing about.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str) -> Any | Rejection:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        return Rejection(
            DeadLetterReason.bad_json,
            f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos})",
        )
    except _DuplicateKey as e:
        return Rejection(DeadLetterReason.bad_json, f"not valid JSON: key {str(e)!r} appears more than once")
    except RecursionError:
        return Rejection(DeadLetterReason.bad_json, "not valid JSON: nested too deeply")
    except ValueError as e:  # NaN/Infinity, integers beyond Python's digit limit
        return Rejection(DeadLetterReason.bad_json, f"not valid JSON: {e}")


def _surrogate_path(value: Any, path: str) -> str | None:
    """The path of the first string (key or value) holding a lone surrogate, if any."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{_name(k)}" if path else _name(k)
            if _SURROGATE.search(k):
                return f"{sub} (the field name)"
            found = _surrogate_path(v, sub)
            if found is not None:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_path(v, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


def _format_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False):
        where = ".".join(_name(p) for p in err["loc"]) or "<message>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not in the contract)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"].endswith("_type"):
            # The type, never the value: it may be huge or private.
            msg = f"{msg}, got a JSON {_json_type(err['input'])}"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def decode_record(
    kind: Kind, value: bytes | None, *, max_bytes: int, max_text_chars: int
) -> NewsItem | SupportMessage | Rejection:
    """Decode and validate one raw value. Never raises for any input bytes."""
    model = INPUT_MODELS[kind]
    if not value:
        return Rejection(
            DeadLetterReason.invalid,
            "empty message: the record has no value (null or zero bytes); "
            f"send one JSON object with the {model.__name__} fields",
        )
    if len(value) > max_bytes:
        return Rejection(
            DeadLetterReason.too_large,
            f"message is {len(value):,} bytes; the limit is {max_bytes:,} (max_message_bytes)",
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(
            DeadLetterReason.bad_encoding,
            f"not UTF-8: byte 0x{value[e.start]:02x} at offset {e.start} ({e.reason})",
        )
    parsed = _parse_json(text)
    if isinstance(parsed, Rejection):
        return parsed
    if not isinstance(parsed, dict):
        return Rejection(
            DeadLetterReason.bad_json,
            f"expected a JSON object with the {model.__name__} fields, got a JSON {_json_type(parsed)}",
        )
    where = _surrogate_path(parsed, "")
    if where is not None:
        return Rejection(
            DeadLetterReason.bad_encoding,
            f"{where}: contains a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), "
            "which is not valid Unicode text",
        )
    for name in _TEXT_FIELDS[kind]:
        field = parsed.get(name)
        if isinstance(field, str) and len(field) > max_text_chars:
            return Rejection(
                DeadLetterReason.too_large,
                f"{name}: {len(field):,} characters; the limit is {max_text_chars:,} (max_text_chars)",
            )
    try:
        return model.model_validate(parsed)
    except ValidationError as e:
        return Rejection(DeadLetterReason.invalid, _clip(_format_validation(e)))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


def to_dead_letter(
    rejection: Rejection,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes,
) -> DeadLetter:
    """The dead letter for a refused record: its position, the reason, and its bytes, only their
    start when there are more than a letter holds (its detail then says where the rest is)."""
    detail = rejection.detail
    if len(raw) > MAX_LETTER_RAW_BYTES:
        note = (f" [this letter holds the first {MAX_LETTER_RAW_BYTES:,} of the message's {len(raw):,} bytes; "
                f"all of them stay on {topic} partition {partition} offset {offset}]")
        detail = _clip(detail, MAX_DETAIL_CHARS - len(note)) + note
    return DeadLetter(
        source_topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else key[:MAX_LETTER_KEY_BYTES],
        raw=raw[:MAX_LETTER_RAW_BYTES],
        raw_bytes=len(raw),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
        reason=rejection.reason,
        detail=_clip(detail),
    )
