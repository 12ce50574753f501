"""The pure core of the worker: raw Kafka records in, scored messages and dead letters out.

No Kafka or ClickHouse here. The agent (streams/agents.py) feeds records from a micro-batch, asks the
store which ids it already holds, and writes what comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from models.scoring import Prediction, Scorer
from models.self_test import ModelBroken, self_test
from streams.contracts import (
    DeadLetter, DeadLetterReason, Kind, NewsItem, ScoredMessage, ShadowPrediction, SupportMessage, storable_utc,
)
from streams.decode import Rejection, content_hash, decode_record, to_dead_letter
from streams.pii import mask_pii
from streams.tickers import DEFAULT_MAX_TICKERS, CompanyDictionary, extract_tickers

log = logging.getLogger(__name__)

Item = NewsItem | SupportMessage


class ScorerBroken(RuntimeError):
    """The model fails on a plain control text too (a lost GPU, a corrupt version): the batch's
    messages are valid and must not be dead-lettered; they stay un-acked for a restarted worker."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record, as the agent received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Decoded:
    record: RawRecord
    item: Item
    content_hash: int
    ingest_time: datetime


@dataclass(slots=True)
class BatchResult:
    scored: list[ScoredMessage] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    tickers_dropped: int = 0  # past Limits.max_tickers, over the batch's news


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int
    max_text_chars: int
    max_tickers: int = DEFAULT_MAX_TICKERS  # per news item: each ticker re-publishes it to the ticker-events topic
    max_event_ahead_s: float = 600.0  # how far an event time may run ahead of the worker's clock


def _dead(record: RawRecord, reason: DeadLetterReason, detail: str) -> DeadLetter:
    return to_dead_letter(
        Rejection(reason, detail),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        raw=record.value or b"",
    )


def decode_batch(
    kind: Kind, records: Sequence[RawRecord], limits: Limits, now: datetime
) -> tuple[list[Decoded], list[DeadLetter]]:
    """Valid items and the dead letters of the rest; ``now`` is the worker's clock."""
    decoded: list[Decoded] = []
    dead: list[DeadLetter] = []
    for record in records:
        result = decode_record(
            kind, record.value, max_bytes=limits.max_message_bytes, max_text_chars=limits.max_text_chars
        )
        if not isinstance(result, Rejection):
            result = _not_ahead(result, now, limits.max_event_ahead_s)
        if isinstance(result, Rejection):
            dead.append(_dead(record, result.reason, result.detail))
        else:
            decoded.append(Decoded(record, result, content_hash(record.value or b""), _ingest_time(record, now)))
    return decoded, dead


def _not_ahead(item: Item, now: datetime, max_ahead_s: float) -> Item | Rejection:
    # Alert windows and SLA clocks follow the largest event time seen: one message dated next year
    # would close its partition's windows and leave every later message there too late to count.
    ahead = (item.event_time - now).total_seconds()
    if ahead <= max_ahead_s:
        return item
    name = "published_at" if isinstance(item, NewsItem) else "created_at"
    return Rejection(
        DeadLetterReason.invalid,
        f"{name}: {item.event_time.isoformat()} is {ahead:,.0f} s ahead of this worker's clock; the limit is "
        f"{max_ahead_s:,.0f} s (VIGIL_MAX_EVENT_AHEAD_S). Send the time the message was written, from a "
        "synchronised clock",
    )


def _ingest_time(record: RawRecord, now: datetime) -> datetime:
    """The record's Kafka timestamp; the worker's clock where that is unset (-1) or no time
    ClickHouse can store (the producer sets it, and a broker may take any value)."""
    try:
        return storable_utc(datetime.fromtimestamp(record.timestamp_ms / 1000, UTC))
    except (ValueError, OverflowError, OSError):
        return now


def resolve_duplicates(
    decoded: Sequence[Decoded], stored_hashes: Mapping[str, int]
) -> tuple[list[Decoded], list[DeadLetter]]:
    """Drop exact re-deliveries inside the batch; dead-letter an id reused with other content.

    A re-delivery of content already stored is kept: scoring it again is idempotent (the store
    collapses rows by id and model version), and skipping it could lose its scored-topic event.
    """
    seen: dict[str, int] = dict(stored_hashes)
    in_batch: set[str] = set()
    kept: list[Decoded] = []
    dead: list[DeadLetter] = []
    for d in decoded:
        previous = seen.get(d.item.id)
        if previous is not None and previous != d.content_hash:
            dead.append(
                _dead(
                    d.record,
                    DeadLetterReason.duplicate_id,
                    f"id {d.item.id!r} was already used by a message with different content; "
                    "give each message its own id",
                )
            )
            continue
        if d.item.id in in_batch:
            continue  # the same bytes twice in one batch: one row is enough
        seen[d.item.id] = d.content_hash
        in_batch.add(d.item.id)
        kept.append(d)
    return kept, dead


def _stored_fields(item: Item, companies: CompanyDictionary | None) -> tuple[str, str, list[str]]:
    """What a scored row keeps of an item besides its prediction: source, text and tickers."""
    if isinstance(item, NewsItem):
        return item.source, item.text, extract_tickers(item.text, item.tickers, companies)
    # Customers' emails, cards, phones and IBANs stay in the raw topic (and its retention) only.
    return item.channel, mask_pii(item.text).text, []


def _to_scored(
    kind: Kind, d: Decoded, p: Prediction, scorer: Scorer, scored_time: datetime, *, source: str, text: str,
    tickers: list[str],
) -> ScoredMessage:
    item = d.item
    return ScoredMessage(
        id=item.id,
        kind=kind,
        text=text,
        model_name=scorer.model_name,
        model_version=scorer.model_version,
        label=p.label,
        probs=p.probs,
        confidence=p.confidence,
        margin=p.margin,
        entropy=p.entropy,
        truncated=p.truncated,
        tickers=tickers,
        source=source,
        content_hash=d.content_hash,
        event_time=item.event_time,
        ingest_time=d.ingest_time,
        scored_time=scored_time,
        src_partition=d.record.partition,
        src_offset=d.record.offset,
    )


def score_batch(
    kind: Kind,
    decoded: Sequence[Decoded],
    scorer: Scorer,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    shadow: Scorer | None = None,
    max_tickers: int = DEFAULT_MAX_TICKERS,
    companies: CompanyDictionary | None = None,
) -> BatchResult:
    """Score in one call; if that fails, score one by one so a single poison text is isolated.
    A ``shadow`` challenger scores the same texts right after; its failures never touch the result."""
    result = BatchResult()
    if not decoded:
        return result
    texts = [d.item.text for d in decoded]
    try:
        predictions: list[Prediction | Exception] = list(scorer.score(texts))
    except Exception:
        log.exception("batch scoring failed; retrying the %d texts one by one", len(texts))
        predictions = []
        for text in texts:
            try:
                predictions.append(scorer.score([text])[0])
            except Exception as exc:  # noqa: BLE001
                predictions.append(exc)
    if failure := next((p for p in predictions if isinstance(p, Exception)), None):
        _check_scorer_works(scorer, failure)
    scored_time = now()
    ok: list[Decoded] = []
    for d, p in zip(decoded, predictions, strict=True):
        if isinstance(p, Exception):
            result.dead.append(
                _dead(d.record, DeadLetterReason.scoring_failed, f"the model could not score this text: {p!r}")
            )
        else:
            ok.append(d)
            source, text, tickers = _stored_fields(d.item, companies)
            result.tickers_dropped += max(0, len(tickers) - max_tickers)
            result.scored.append(
                _to_scored(kind, d, p, scorer, scored_time, source=source, text=text, tickers=tickers[:max_tickers])
            )
    if shadow is not None and ok:
        result.scored = _with_shadow(result.scored, [d.item.text for d in ok], shadow)
    return result


def _check_scorer_works(scorer: Scorer, failure: Exception) -> None:
    """Tell a poison text (dead-lettered) from a broken model (raises ScorerBroken)."""
    try:
        self_test(scorer)
    except ModelBroken as exc:
        raise ScorerBroken(
            f"{exc}; the batch failed with {failure!r}. The fault is the model's or the device's, not the "
            "messages', so they are left un-acked for the restarted worker, which falls back to the last "
            "champion that passes its self test. If every version fails, score on the CPU (VIGIL_DEVICE=cpu)"
        ) from exc


def _with_shadow(scored: list[ScoredMessage], texts: list[str], shadow: Scorer) -> list[ScoredMessage]:
    try:
        predictions = shadow.score(texts)
    except Exception:
        log.exception("shadow model %s failed on a batch of %d; scored without it", shadow.model_version, len(texts))
        return scored
    return [
        m.model_copy(update={"shadow": ShadowPrediction(
            model_version=shadow.model_version, label=p.label, confidence=p.confidence
        )})
        for m, p in zip(scored, predictions, strict=True)
    ]
