"""The ClickHouse sink: batched, retried writes of scored messages and dead letters, and the reads
the worker and the CLI need. Every read that must be exact uses FINAL (replays collapse there) or
takes each key's newest row with argMax."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Self, TypeVar

from pydantic import BaseModel

from streams.alerting.contracts import Alert, AlertVerdict
from streams.contracts import DeadLetter, Kind, ScoredMessage, StoredDeadLetter
from streams.settings import VigilSettings

from .backends import Backend, connect
from .compat import (
    DEAD_LETTER_COLUMNS,
    VERDICT_COLUMNS,
    CompatLevel,
    alert_columns,
    alert_from_row,
    alert_row,
    as_utc,
    bound_time,
    dead_letter_from_row,
    dead_letter_row,
    scored_columns,
    scored_from_row,
    scored_row,
    to_stored_time,
    verdict_from_row,
    verdict_row,
)
from .errors import RangeTooLarge
from .migrations import migrate
from .retry import call_with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")
# A contributor's id in an alert's top_messages_json, still JSON-escaped.
_CONTRIBUTOR_ID = r'\{"id": "((?:[^"\\]|\\.)*)"'

# ClickHouse refuses an insert that touches more (max_partitions_per_insert_block), and a retry
# would be refused again: a backfill spanning years would stall its partition for good.
MAX_PARTITIONS_PER_INSERT = 100


def partition_blocks(messages: Sequence[ScoredMessage]) -> list[list[ScoredMessage]]:
    """``messages`` in inserts that each touch at most MAX_PARTITIONS_PER_INSERT of the scored
    table's monthly partitions (one insert for the usual batch)."""
    by_month: dict[tuple[int, int], list[ScoredMessage]] = {}
    for m in messages:
        t = as_utc(m.event_time)
        by_month.setdefault((t.year, t.month), []).append(m)
    months = list(by_month.values())
    return [
        [m for month in months[i : i + MAX_PARTITIONS_PER_INSERT] for m in month]
        for i in range(0, len(months), MAX_PARTITIONS_PER_INSERT)
    ]


class LabelCount(BaseModel):
    kind: str
    label: str
    rows: int


class TickerNegativeShare(BaseModel):
    ticker: str
    rows: int
    negative: int
    negative_share: float


class StoreSummary(BaseModel):
    total_rows: int
    by_label: list[LabelCount]
    top_negative_tickers: list[TickerNegativeShare]
    dead_letters_by_reason: dict[str, int]
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None


class VersionCount(BaseModel):
    kind: str
    model_version: str
    rows: int


class Activity(BaseModel):
    """What the workers stored from ``since`` on."""

    since: datetime
    scored: list[VersionCount]
    dead_letters_by_reason: dict[str, int]
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None


class RecentScore(NamedTuple):
    """What the drift monitors take from one stored scored message."""

    label: str
    confidence: float
    event_time: datetime


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _quantile(value: Any) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


class ClickHouseStore:
    """Thread-safe as its backend is. Build with ``open_store(settings)``."""

    def __init__(
        self,
        backend: Backend,
        *,
        database: str,
        level: CompatLevel,
        retry_attempts: int = 6,
        retry_max_s: float = 30.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.backend = backend
        self.database = database
        self.level = level
        self._attempts = retry_attempts
        self._retry_max_s = retry_max_s
        self._clock = clock

    def _retried(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retries(what, fn, attempts=self._attempts, retry_max_s=self._retry_max_s)

    @property
    def _scored(self) -> str:
        return f"{self.database}.scored"

    @property
    def _dead_letters(self) -> str:
        return f"{self.database}.dead_letters"

    @property
    def _alerts(self) -> str:
        return f"{self.database}.alerts"

    # --- writes ---------------------------------------------------------------------------------

    def write_scored(self, messages: Sequence[ScoredMessage]) -> int:
        """Store one batch in one insert (written_time/e2e_ms taken now). Replays are harmless."""
        if not messages:
            return 0
        written = self._clock()
        columns = scored_columns(self.level)
        for block in partition_blocks(messages):
            rows = [scored_row(m, written, self.level) for m in block]
            self._retried("insert into scored", lambda: self.backend.insert(self._scored, columns, rows))
        return len(messages)

    _SHADOW_COLUMNS = (
        "kind", "id", "champion_version", "champion_label", "champion_confidence", "challenger_version",
        "challenger_label", "challenger_confidence", "agrees", "event_time", "scored_time",
    )

    def write_shadow(self, messages: Sequence[ScoredMessage]) -> int:
        """The shadow challenger's predictions beside the champion's (messages without one are skipped)."""
        rows = [
            (m.kind.value, m.id, m.model_version, m.label, m.confidence, m.shadow.model_version, m.shadow.label,
             m.shadow.confidence, int(m.shadow.label == m.label), to_stored_time(m.event_time, self.level),
             to_stored_time(m.scored_time, self.level))
            for m in messages if m.shadow is not None
        ]
        if rows:
            self._retried("insert into shadow_predictions", lambda: self.backend.insert(
                f"{self.database}.shadow_predictions", self._SHADOW_COLUMNS, rows
            ))
        return len(rows)

    def shadow_agreement(self, kind: Kind | str) -> list[tuple[str, str, int, int]]:
        """Per (champion, challenger) version pair: (champion, challenger, messages, disagreements)."""
        return [
            (champion, challenger, int(n), int(differ))
            for champion, challenger, n, differ in self._query(
                "shadow agreement",
                f"SELECT champion_version, challenger_version, count(), countIf(agrees = 0) "
                f"FROM {self.database}.shadow_predictions FINAL WHERE kind = {{kind:String}} "
                "GROUP BY champion_version, challenger_version ORDER BY champion_version, challenger_version",
                {"kind": str(Kind(kind))},
            )
        ]

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        if not letters:
            return 0
        rows = [dead_letter_row(d, self.level) for d in letters]
        self._retried(
            "insert into dead_letters",
            lambda: self.backend.insert(self._dead_letters, DEAD_LETTER_COLUMNS, rows),
        )
        return len(rows)

    def write_alerts(self, alerts: Sequence[Alert]) -> int:
        """Store alerts in one insert; a re-emitted alert (same id) collapses under FINAL."""
        if not alerts:
            return 0
        written = self._clock()
        rows = [alert_row(a, written, self.level) for a in alerts]
        columns = alert_columns(self.level)
        self._retried("insert into alerts", lambda: self.backend.insert(self._alerts, columns, rows))
        return len(rows)

    def write_verdicts(self, verdicts: Sequence[AlertVerdict]) -> int:
        """Store responders' verdicts (migration 0006); all are kept, the latest per alert counts."""
        if not verdicts:
            return 0
        written = self._clock()
        rows = [verdict_row(v, written, self.level) for v in verdicts]
        table = f"{self.database}.alert_verdicts"
        self._retried("insert into alert_verdicts", lambda: self.backend.insert(table, VERDICT_COLUMNS, rows))
        return len(rows)

    # --- reads ----------------------------------------------------------------------------------

    def _query(self, what: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._retried(what, lambda: self.backend.query(sql, params))

    def existing_content_hashes(self, kind: Kind | str, ids: Iterable[str]) -> dict[str, int]:
        """id -> content_hash of the latest stored row, for the ids already stored for this kind."""
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        # argMax over written_time already takes each id's newest row, as FINAL would. FINAL also
        # merges every part the ids touch and cannot use the id_bloom index (migration 0014): this
        # per-batch read then grew with the table (benchmarks.duplicate_lookup).
        rows = self._query(
            "content-hash lookup",
            f"SELECT id, argMax(content_hash, written_time) FROM {self._scored} "
            "WHERE kind = {kind:String} AND id IN {ids:Array(String)} GROUP BY id",
            {"kind": str(Kind(kind)), "ids": wanted},
        )
        return {i: int(h) for i, h in rows}

    def fetch_scored(self, kind: Kind | str, ids: Iterable[str]) -> list[ScoredMessage]:
        """The stored messages for these ids (one per id and model version), ordered by id."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        columns = scored_columns(self.level)
        rows = self._query(
            "scored read",
            f"SELECT {', '.join(columns)} FROM {self._scored} FINAL "
            "WHERE kind = {kind:String} AND id IN {ids:Array(String)} ORDER BY id, model_version",
            {"kind": str(Kind(kind)), "ids": wanted},
        )
        return [scored_from_row(dict(zip(columns, r, strict=True)), self.level) for r in rows]

    def fetch_scored_between(
        self, kind: Kind | str, start: datetime, end: datetime, *, limit: int = 500_000
    ) -> list[ScoredMessage]:
        """Stored messages with ``start <= event_time < end``, oldest first; where an id was scored
        by several model versions, the latest scoring only. More than ``limit`` rows raise
        RangeTooLarge: the caller asked for the whole range."""
        columns = scored_columns(self.level)
        rows = self._query(
            "scored range read",
            f"SELECT {', '.join(columns)} FROM {self._scored} FINAL "
            "WHERE kind = {kind:String} AND event_time >= toDateTime({start:String}, 'UTC') "
            "AND event_time < toDateTime({end:String}, 'UTC') ORDER BY event_time, id, scored_time "
            "LIMIT {limit:UInt64}",
            {"kind": str(Kind(kind)), "start": bound_time(start),
             "end": bound_time(end), "limit": limit + 1},
        )
        if len(rows) > limit:
            raise RangeTooLarge(f"more than {limit:,} scored {Kind(kind)} rows between {bound_time(start)} and "
                                f"{bound_time(end)} UTC: read a shorter range")
        latest = {m.id: m for m in (scored_from_row(dict(zip(columns, r, strict=True)), self.level) for r in rows)}
        return sorted(latest.values(), key=lambda m: (m.event_time, m.id))

    def fetch_recent_scored(
        self, kind: Kind | str, model_version: str, *, before: datetime, limit: int
    ) -> list[RecentScore]:
        """The last ``limit`` messages of ``kind`` that ``model_version`` scored before ``before``
        (whole seconds), oldest first in the order they were scored: the history a restarted
        worker's drift monitors take. From every partition: a row keeps its raw topic's partition,
        not the scored topic's partition that a worker owns."""
        # scored_time can differ between a message's replayed rows, so it is filtered after FINAL.
        rows = self._query(
            "recent scored read",
            "SELECT label, confidence, event_time FROM (SELECT id, label, confidence, event_time, scored_time, "
            f"src_partition, src_offset FROM {self._scored} FINAL "
            "WHERE kind = {kind:String} AND model_version = {version:String}) "
            "WHERE scored_time < toDateTime({before:String}, 'UTC') "
            "ORDER BY scored_time DESC, src_partition DESC, src_offset DESC, id DESC LIMIT {limit:UInt64}",
            {"kind": str(Kind(kind)), "version": model_version,
             "before": bound_time(before), "limit": limit},
        )
        return [RecentScore(label, min(float(c), 1.0), as_utc(t)) for label, c, t in reversed(rows)]

    def fetch_dead_letters(self, source_topic: str) -> list[StoredDeadLetter]:
        rows = self._query(
            "dead-letter read",
            f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM {self._dead_letters} FINAL "
            "WHERE source_topic = {topic:String} ORDER BY src_partition, src_offset",
            {"topic": source_topic},
        )
        return [dead_letter_from_row(dict(zip(DEAD_LETTER_COLUMNS, r, strict=True))) for r in rows]

    def _read_alerts(self, what: str, tail: str, params: dict[str, Any] | None = None) -> list[Alert]:
        """The latest version of the alerts ``tail`` (a WHERE and ORDER BY) selects."""
        columns = alert_columns(self.level)
        rows = self._query(what, f"SELECT {', '.join(columns)} FROM {self._alerts} FINAL {tail}", params)
        return [alert_from_row(dict(zip(columns, r, strict=True)), self.level) for r in rows]

    def fetch_alerts(self) -> list[Alert]:
        """Every stored alert, one per id, oldest first."""
        return self._read_alerts("alerts read", "ORDER BY created_at, id")

    def stored_alert_ids(self, among: Iterable[str]) -> set[str]:
        """The alert ids among these already in the alerts table: alerts emitted before."""
        wanted = sorted(set(among))
        if not wanted:
            return set()
        rows = self._query(
            "stored alert ids read", f"SELECT DISTINCT id FROM {self._alerts} WHERE id IN {{ids:Array(String)}}",
            {"ids": wanted},
        )
        return {r[0] for r in rows}

    def fetch_alert(self, alert_id: str) -> Alert | None:
        found = self._read_alerts("alert read", "WHERE id = {id:String}", {"id": alert_id})
        return found[0] if found else None

    def alerts_behind(self, kind: str, message_ids: Iterable[str]) -> list[Alert]:
        """The stored alerts of ``kind`` that any of these messages contributed to, oldest first.

        The contributors' ids are read out of the stored JSON (``alert_row`` writes each message
        as ``{"id": …`` first); a message's text cannot fake that, as its quotes are escaped."""
        wanted = sorted({json.dumps(m, ensure_ascii=False)[1:-1] for m in message_ids})
        if not wanted:
            return []
        return self._read_alerts(
            "alert read",
            "WHERE kind = {kind:String} AND hasAny(extractAll(top_messages_json, {pattern:String}), {ids:Array(String)}) "
            "ORDER BY created_at, id",
            {"kind": kind, "pattern": _CONTRIBUTOR_ID, "ids": wanted},
        )

    def fetch_verdicts(self, alert_ids: Iterable[str] | None = None) -> list[AlertVerdict]:
        """Every stored verdict (of these alerts, when given), oldest first."""
        where, params = "", None
        if alert_ids is not None:
            wanted = sorted(set(alert_ids))
            if not wanted:
                return []
            where, params = "WHERE alert_id IN {ids:Array(String)}", {"ids": wanted}
        rows = self._query(
            "alert-verdicts read",
            f"SELECT {', '.join(VERDICT_COLUMNS)} FROM {self.database}.alert_verdicts FINAL {where} "
            "ORDER BY judged_at, alert_id, judged_by",
            params,
        )
        return [verdict_from_row(dict(zip(VERDICT_COLUMNS, r, strict=True))) for r in rows]

    def summary(self, *, min_ticker_volume: int = 5, top_tickers: int = 10) -> StoreSummary:
        by_label = self._query(
            "summary",
            f"SELECT kind, label, count() FROM {self._scored} FINAL "
            "GROUP BY kind, label ORDER BY kind, label",
        )
        # quantiles() is exact below 8192 rows and a bounded-memory sample above that.
        (total, quantiles), = self._query(
            "summary", f"SELECT count(), quantiles(0.5, 0.99)(e2e_ms) FROM {self._scored} FINAL"
        )
        tickers = self._query(
            "summary",
            "SELECT ticker, count() AS n, countIf(label = {negative:String}) AS neg "
            f"FROM {self._scored} FINAL ARRAY JOIN tickers AS ticker "
            "WHERE kind = {news:String} GROUP BY ticker HAVING n >= {min_volume:UInt64} "
            "ORDER BY neg / n DESC, n DESC, ticker LIMIT {top:UInt32}",
            {"negative": "negative", "news": Kind.news.value, "min_volume": min_ticker_volume,
             "top": top_tickers},
        )
        reasons = self._query(
            "summary",
            f"SELECT reason, count() FROM {self._dead_letters} FINAL GROUP BY reason ORDER BY reason",
        )
        return StoreSummary(
            total_rows=int(total),
            by_label=[LabelCount(kind=k, label=lbl, rows=int(n)) for k, lbl, n in by_label],
            top_negative_tickers=[
                TickerNegativeShare(ticker=t, rows=int(n), negative=int(neg), negative_share=neg / n)
                for t, n, neg in tickers
            ],
            dead_letters_by_reason={r: int(n) for r, n in reasons},
            e2e_p50_ms=_quantile(quantiles[0]) if total else None,
            e2e_p99_ms=_quantile(quantiles[1]) if total else None,
        )

    def activity(self, since: datetime) -> Activity:
        """Scored rows per kind and model version written from ``since`` on (whole seconds), their
        end-to-end latency, and the dead letters received since then, per reason."""
        after, bound = "toDateTime({since:String}, 'UTC')", {"since": bound_time(since)}
        scored = self._query(
            "activity", f"SELECT kind, model_version, count() FROM {self._scored} FINAL WHERE written_time >= {after} "
            "GROUP BY kind, model_version ORDER BY kind, model_version", bound,
        )
        (quantiles,), = self._query(
            "activity", f"SELECT quantiles(0.5, 0.99)(e2e_ms) FROM {self._scored} FINAL WHERE written_time >= {after}",
            bound,
        )
        reasons = self._query(
            "activity", f"SELECT reason, count() FROM {self._dead_letters} FINAL WHERE received_at >= {after} "
            "GROUP BY reason ORDER BY reason", bound,
        )
        any_scored = bool(scored)
        return Activity(
            since=since,
            scored=[VersionCount(kind=k, model_version=v, rows=int(n)) for k, v, n in scored],
            dead_letters_by_reason={r: int(n) for r, n in reasons},
            e2e_p50_ms=_quantile(quantiles[0]) if any_scored else None,
            e2e_p99_ms=_quantile(quantiles[1]) if any_scored else None,
        )

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(settings: VigilSettings, *, clock: Callable[[], datetime] = _utc_now) -> ClickHouseStore:
    """Connect (server or embedded), apply pending migrations, and return the store."""
    backend = connect(settings)
    try:
        report = migrate(backend, database=settings.clickhouse_database, ttl_days=settings.clickhouse_ttl_days,
                         cluster=settings.clickhouse_cluster)
    except BaseException:
        backend.close()
        raise
    return ClickHouseStore(
        backend,
        database=settings.clickhouse_database,
        level=report.level,
        retry_attempts=settings.clickhouse_retry_attempts,
        retry_max_s=settings.clickhouse_retry_max_s,
        clock=clock,
    )
