"""Schema compatibility levels and the pure row adapters between contracts and table rows.

Debian's clickhouse-server 18.16 has no DateTime64, LowCardinality, TTL or Map; current releases
(and chdb) have all four. The level is chosen from the server version when the schema is first
created and then stays with the schema (see migrations.py), so rows always match the tables.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from string import Template
from typing import Any

from streams.alerting.contracts import Alert, AlertVerdict, ContributingMessage, Severity
from streams.contracts import (
    EARLIEST_TIME, LATEST_TIME, DeadLetter, DeadLetterReason, Kind, ScoredMessage, StoredDeadLetter,
)
from streams.pii import mask_pii

from .errors import UnsupportedServer


class CompatLevel(StrEnum):
    modern = "modern"
    legacy_18 = "legacy-18"


OLDEST_SUPPORTED = (18, 16)
# First LTS where Map is no longer experimental; DateTime64, LowCardinality and TTL are older.
MODERN_SINCE = (22, 3)
_UINT32_MAX = 2**32 - 1
_PREVIEW_CHARS = 500


def parse_version(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    if len(parts) < 2:
        raise UnsupportedServer(f"cannot read a ClickHouse version from {text!r}")
    return tuple(int(p) for p in parts)


def level_for_version(version: Sequence[int]) -> CompatLevel:
    v = tuple(version)
    if v[:2] < OLDEST_SUPPORTED:
        raise UnsupportedServer(
            f"ClickHouse {'.'.join(map(str, v))} is older than 18.16, the oldest release Vigil "
            "supports; upgrade the server (any release from 22.3 gets the full 'modern' schema)."
        )
    return CompatLevel.modern if v[:2] >= MODERN_SINCE else CompatLevel.legacy_18


def template_values(level: CompatLevel, *, database: str, ttl_days: int) -> dict[str, str]:
    """Substitutions for the ${...} placeholders in ops/clickhouse/migrations/*.sql."""
    modern = level is CompatLevel.modern
    return {
        "db": database,
        "DateTimeMs": "DateTime64(3, 'UTC')" if modern else "DateTime('UTC')",
        "LowCardString": "LowCardinality(String)" if modern else "String",
        "ttl_days": str(int(ttl_days)),
    }


def render_sql(template: str, level: CompatLevel, values: Mapping[str, str]) -> list[str]:
    """Render one migration file into its statements.

    Lines starting with ``--@<level> `` belong to that level only; other ``--`` lines are comments.
    """
    lines = []
    for line in template.splitlines():
        stripped = line.lstrip()
        marker = re.match(r"--@([\w-]+)\s(.*)$", stripped)
        if marker:
            if marker.group(1) not in {lvl.value for lvl in CompatLevel}:
                raise ValueError(f"unknown level marker --@{marker.group(1)}")
            if marker.group(1) == level.value:
                lines.append(marker.group(2))
        elif not stripped.startswith("--"):
            lines.append(line)
    sql = Template("\n".join(lines)).substitute(values)
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", sql) if s.strip()]


# --- scored ------------------------------------------------------------------------------------

_SCORED_HEAD = ("kind", "id", "model_version", "model_name", "text", "label")
_SCORED_TAIL = (
    "confidence", "margin", "entropy", "truncated", "tickers", "source", "content_hash",
    "event_time", "ingest_time", "scored_time", "written_time", "e2e_ms", "src_partition", "src_offset",
)


def scored_columns(level: CompatLevel) -> tuple[str, ...]:
    probs = ("probs",) if level is CompatLevel.modern else ("prob_labels", "prob_values")
    return _SCORED_HEAD + probs + _SCORED_TAIL


def to_stored_time(value: datetime, level: CompatLevel) -> datetime:
    """UTC, at the precision the level's DateTime type keeps (ms modern, whole seconds legacy)."""
    utc = as_utc(value)
    keep = (utc.microsecond // 1000) * 1000 if level is CompatLevel.modern else 0
    return utc.replace(microsecond=keep)


def e2e_ms(ingest_time: datetime, written_time: datetime) -> int:
    """End-to-end latency in ms, clamped to UInt32 (a producer clock ahead of ours reads as 0)."""
    ms = round((written_time - ingest_time).total_seconds() * 1000)
    return min(max(ms, 0), _UINT32_MAX)


def scored_row(msg: ScoredMessage, written_time: datetime, level: CompatLevel) -> tuple[Any, ...]:
    """One ScoredMessage as a row in scored_columns(level) order."""
    if level is CompatLevel.modern:
        probs: tuple[Any, ...] = (dict(msg.probs),)
    else:
        labels = sorted(msg.probs)
        probs = (labels, [msg.probs[k] for k in labels])
    return (
        msg.kind.value, msg.id, msg.model_version, msg.model_name, msg.text, msg.label,
        *probs,
        msg.confidence, msg.margin, msg.entropy, int(msg.truncated), list(msg.tickers), msg.source,
        msg.content_hash,
        to_stored_time(msg.event_time, level), to_stored_time(msg.ingest_time, level),
        to_stored_time(msg.scored_time, level), to_stored_time(written_time, level),
        e2e_ms(msg.ingest_time, written_time), msg.src_partition, msg.src_offset,
    )


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime (a naive one, as the drivers return, is taken as UTC)."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


_BOUNDS = (EARLIEST_TIME, LATEST_TIME - timedelta(seconds=1))


def bound_time(value: datetime) -> str:
    """``value`` in whole UTC seconds, as the text a query binds for a time (converted server-side,
    e.g. ``toDateTime({p:String}, 'UTC')``): 18.16 binds no datetime parameters. Held within what
    every stored time is in: 18.16 reads a bound from 2106 on as 1970, and ``--since 0001-01-01``
    would not be a four-digit year."""
    return f"{min(max(as_utc(value), _BOUNDS[0]), _BOUNDS[1]):%Y-%m-%d %H:%M:%S}"


def scored_from_row(row: Mapping[str, Any], level: CompatLevel) -> ScoredMessage:
    if level is CompatLevel.modern:
        raw = row["probs"]
        probs = dict(raw.items() if isinstance(raw, Mapping) else raw)
    else:
        probs = dict(zip(row["prob_labels"], row["prob_values"], strict=True))
    return ScoredMessage(
        id=row["id"], kind=Kind(row["kind"]), text=row["text"], model_name=row["model_name"],
        model_version=row["model_version"], label=row["label"],
        probs={k: float(v) for k, v in probs.items()},
        confidence=min(float(row["confidence"]), 1.0), margin=min(float(row["margin"]), 1.0),
        entropy=float(row["entropy"]), truncated=bool(row["truncated"]), tickers=list(row["tickers"]),
        source=row["source"], content_hash=int(row["content_hash"]),
        event_time=as_utc(row["event_time"]), ingest_time=as_utc(row["ingest_time"]),
        scored_time=as_utc(row["scored_time"]), src_partition=int(row["src_partition"]),
        src_offset=int(row["src_offset"]),
    )


# --- dead letters ------------------------------------------------------------------------------

# No raw bytes are stored: the raw text stays in Kafka only (streams/pii.py), and a replay reads a
# letter's message back from its raw topic. raw_base64 is in the table's sorting (and, on a
# cluster, sharding) key, where it tells apart two messages at one position (a recreated topic,
# the embedded broker's offsets starting again at 0), so it now holds "sha256:<hex>" of the bytes;
# rows written before hold the bytes themselves, in base64, until they expire. raw_preview, for
# people reading the table, is the start of the text with its PII masked, and so is the detail.
DEAD_LETTER_COLUMNS = (
    "source_topic", "src_partition", "src_offset", "key_base64", "raw_base64", "raw_preview",
    "raw_bytes", "reason", "detail", "received_at",
)
_HASH_TAG = "sha256:"  # ':' is not in the base64 alphabet: an earlier row's bytes never start so
# Enough more than the preview that any PII starting inside the preview (an email address is at
# most 254 characters) is whole when masked, not cut into a part that no longer looks like one.
_PREVIEW_MASKED_CHARS = _PREVIEW_CHARS + 256


def dead_letter_row(letter: DeadLetter, level: CompatLevel) -> tuple[Any, ...]:
    text = letter.raw[: _PREVIEW_MASKED_CHARS * 4].decode("utf-8", errors="replace")[:_PREVIEW_MASKED_CHARS]
    return (
        letter.source_topic, letter.partition, letter.offset,
        None if letter.key is None else base64.b64encode(letter.key).decode("ascii"),
        _HASH_TAG + letter.raw_sha256,
        mask_pii(text).text[:_PREVIEW_CHARS],
        letter.raw_bytes, letter.reason.value, mask_pii(letter.detail).text,
        to_stored_time(letter.received_at, level),
    )


def dead_letter_from_row(row: Mapping[str, Any]) -> StoredDeadLetter:
    key, raw = row["key_base64"], row["raw_base64"]
    return StoredDeadLetter(
        source_topic=row["source_topic"], partition=int(row["src_partition"]),
        offset=int(row["src_offset"]), key=None if key is None else base64.b64decode(key),
        raw_bytes=int(row["raw_bytes"]),
        raw_sha256=raw.removeprefix(_HASH_TAG) if raw.startswith(_HASH_TAG)
        else hashlib.sha256(base64.b64decode(raw)).hexdigest(),
        reason=DeadLetterReason(row["reason"]), detail=row["detail"], received_at=as_utc(row["received_at"]),
    )


# --- alerts ------------------------------------------------------------------------------------

_ALERT_HEAD = ("id", "kind", "rule", "severity", "ticker", "intent", "queue", "window_start", "window_end")
_ALERT_TAIL = ("model_version", "top_messages_json", "created_at", "written_time")


def alert_columns(level: CompatLevel) -> tuple[str, ...]:
    figures = ("figures",) if level is CompatLevel.modern else ("figure_names", "figure_values")
    return _ALERT_HEAD + figures + _ALERT_TAIL


def alert_row(alert: Alert, written_time: datetime, level: CompatLevel) -> tuple[Any, ...]:
    """One Alert as a row in alert_columns(level) order."""
    if level is CompatLevel.modern:
        figures: tuple[Any, ...] = (dict(alert.figures),)
    else:
        names = sorted(alert.figures)
        figures = (names, [alert.figures[k] for k in names])
    window = [None if t is None else to_stored_time(t, level) for t in (alert.window_start, alert.window_end)]
    top = json.dumps([m.model_dump() for m in alert.top_messages], ensure_ascii=False)
    return (
        alert.id, alert.kind, alert.rule, alert.severity.value, alert.ticker or "", alert.intent or "",
        alert.queue or "", *window, *figures, alert.model_version, top,
        to_stored_time(alert.created_at, level), to_stored_time(written_time, level),
    )


def alert_from_row(row: Mapping[str, Any], level: CompatLevel) -> Alert:
    if level is CompatLevel.modern:
        raw = row["figures"]
        figures = dict(raw.items() if isinstance(raw, Mapping) else raw)
    else:
        figures = dict(zip(row["figure_names"], row["figure_values"], strict=True))
    return Alert(
        id=row["id"], kind=row["kind"], rule=row["rule"], severity=Severity(row["severity"]),
        ticker=row["ticker"] or None, intent=row["intent"] or None, queue=row["queue"] or None,
        window_start=None if row["window_start"] is None else as_utc(row["window_start"]),
        window_end=None if row["window_end"] is None else as_utc(row["window_end"]),
        figures={k: float(v) for k, v in figures.items()}, model_version=row["model_version"],
        top_messages=[ContributingMessage(**m) for m in json.loads(row["top_messages_json"])],
        created_at=as_utc(row["created_at"]),
    )


# --- alert verdicts -----------------------------------------------------------------------------

VERDICT_COLUMNS = ("alert_id", "useful", "judged_by", "judged_at", "note", "written_time")


def verdict_row(verdict: AlertVerdict, written_time: datetime, level: CompatLevel) -> tuple[Any, ...]:
    return (
        verdict.alert_id, int(verdict.useful), verdict.by, to_stored_time(verdict.at, level), verdict.note,
        to_stored_time(written_time, level),
    )


def verdict_from_row(row: Mapping[str, Any]) -> AlertVerdict:
    return AlertVerdict(
        alert_id=row["alert_id"], useful=bool(row["useful"]), by=row["judged_by"], at=as_utc(row["judged_at"]),
        note=row["note"],
    )
