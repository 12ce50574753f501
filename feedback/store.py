"""The feedback tables in ClickHouse: label queue items with their state, corrections, model events.

Same backends, compatibility levels and retries as streams.clickhouse.ClickHouseStore; the tables
come from migration 0004_feedback. Every exact read uses FINAL. Filters on columns that change
between an item's rows (state, times) are applied outside the FINAL subquery, so an older row can
never pass a filter its replacement would fail.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Self

from feedback.agreement import Agreement
from feedback.contracts import (
    Correction,
    CorrectionSource,
    ItemState,
    LabelRequest,
    ModelEvent,
    ModelEventKind,
    QueueItem,
    SelectionReason,
)
from feedback.leases import RANK
from feedback.round_heartbeat import RoundHeartbeat
from feedback.selection import TASK_OF_KIND, PastSelection
from streams.clickhouse import ClickHouseError, ClickHouseStore, CompatLevel, connect
from streams.clickhouse.compat import as_utc, bound_time, to_stored_time
from streams.clickhouse.migrations import schema_level
from streams.settings import VigilSettings

log = logging.getLogger(__name__)


# The feedback tables, the retrain rounds' heartbeats, and withdrawn labels.
_FEEDBACK_MIGRATIONS = {4: "0004_feedback", 11: "0011_retrain_heartbeats", 16: "0016_feedback_withdrawn"}

QUEUE_COLUMNS = (
    "item_id", "task", "message_id", "text", "model_name", "model_version", "model_label", "probs_json",
    "confidence", "margin", "entropy", "reasons", "challenger_label", "alert_id", "event_time",
    "selected_at", "state", "leased_by", "lease_expires", "updated_time",
)
FEEDBACK_COLUMNS = (
    "correction_id", "task", "message_id", "item_id", "text", "annotator", "human_label", "model_label",
    "model_version", "source", "created_at", "written_time", "withdrawn",
)
MODEL_EVENT_COLUMNS = (
    "event_id", "kind", "task", "model_version", "detail", "figure_names", "figure_values", "created_at",
)
HEARTBEAT_COLUMNS = ("round_id", "task", "owner", "beat_at")


class FeedbackSchemaMissing(ClickHouseError):
    """The feedback tables are not there yet."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- pure row adapters ---------------------------------------------------------------------------


def queue_row(item: QueueItem, level: CompatLevel) -> tuple[Any, ...]:
    r = item.request
    return (
        r.item_id, r.task, r.message_id, r.text, r.model_name, r.model_version, r.model_label,
        json.dumps(r.probs, sort_keys=True), r.confidence, r.margin, r.entropy, [x.value for x in r.reasons],
        r.challenger_label or "", r.alert_id or "", to_stored_time(r.event_time, level),
        to_stored_time(r.selected_at, level), item.state.value, item.leased_by or "",
        None if item.lease_expires is None else to_stored_time(item.lease_expires, level),
        to_stored_time(item.updated_at, level),
    )


def queue_item_from_row(row: Mapping[str, Any]) -> QueueItem:
    request = LabelRequest(
        item_id=row["item_id"], task=row["task"], message_id=row["message_id"], text=row["text"],
        model_name=row["model_name"], model_version=row["model_version"], model_label=row["model_label"],
        probs={k: float(v) for k, v in json.loads(row["probs_json"]).items()},
        confidence=min(float(row["confidence"]), 1.0), margin=min(float(row["margin"]), 1.0),
        entropy=float(row["entropy"]), reasons=[SelectionReason(x) for x in row["reasons"]],
        challenger_label=row["challenger_label"] or None, alert_id=row["alert_id"] or None,
        event_time=as_utc(row["event_time"]), selected_at=as_utc(row["selected_at"]),
    )
    expires = row["lease_expires"]
    return QueueItem(
        request=request, state=ItemState(row["state"]), leased_by=row["leased_by"] or None,
        lease_expires=None if expires is None else as_utc(expires), updated_at=as_utc(row["updated_time"]),
    )


def correction_row(c: Correction, written: datetime, level: CompatLevel) -> tuple[Any, ...]:
    return (
        c.correction_id, c.task, c.message_id, c.item_id or "", c.text, c.annotator, c.human_label,
        c.model_label or "", c.model_version or "", c.source.value, to_stored_time(c.created_at, level),
        to_stored_time(written, level), int(c.withdrawn),
    )


def correction_from_row(row: Mapping[str, Any]) -> Correction:
    return Correction(
        correction_id=row["correction_id"], task=row["task"], message_id=row["message_id"],
        item_id=row["item_id"] or None, text=row["text"], annotator=row["annotator"],
        human_label=row["human_label"], model_label=row["model_label"] or None,
        model_version=row["model_version"] or None, source=CorrectionSource(row["source"]),
        created_at=as_utc(row["created_at"]), withdrawn=bool(row["withdrawn"]),
    )


def model_event_row(e: ModelEvent, level: CompatLevel) -> tuple[Any, ...]:
    names = sorted(e.figures)
    return (
        e.event_id, e.kind.value, e.task, e.model_version, e.detail, names, [e.figures[n] for n in names],
        to_stored_time(e.created_at, level),
    )


def model_event_from_row(row: Mapping[str, Any]) -> ModelEvent:
    return ModelEvent(
        event_id=row["event_id"], kind=ModelEventKind(row["kind"]), task=row["task"],
        model_version=row["model_version"], detail=row["detail"],
        figures={n: float(v) for n, v in zip(row["figure_names"], row["figure_values"], strict=True)},
        created_at=as_utc(row["created_at"]),
    )


def heartbeat_row(beat: RoundHeartbeat, level: CompatLevel) -> tuple[Any, ...]:
    return beat.round_id, beat.task, beat.owner, to_stored_time(beat.beat_at, level)


def heartbeat_from_row(row: Mapping[str, Any]) -> RoundHeartbeat:
    return RoundHeartbeat(round_id=row["round_id"], task=row["task"], owner=row["owner"], beat_at=as_utc(row["beat_at"]))


def _merge(first: LabelRequest, later: LabelRequest) -> LabelRequest:
    """``first`` with what ``later`` adds: new reasons, and an alert id / challenger label it lacked."""
    reasons = list(dict.fromkeys([*first.reasons, *later.reasons]))
    return first.model_copy(update={
        "reasons": reasons,
        "alert_id": first.alert_id or later.alert_id,
        "challenger_label": first.challenger_label or later.challenger_label,
    })


def _priority_sql() -> tuple[str, dict[str, list[str]]]:
    """``feedback.leases.priority`` as a ClickHouse expression on ``reasons``, with its parameters."""
    by_rank: dict[int, list[str]] = {}
    for reason, rank in RANK.items():
        by_rank.setdefault(rank, []).append(reason.value)
    *better, worst = sorted(by_rank)
    branches = "".join(f"hasAny(reasons, {{rank{r}:Array(String)}}), {r}, " for r in better)
    return f"multiIf({branches}{worst})", {f"rank{r}": sorted(by_rank[r]) for r in better}


_PRIORITY_SQL, _PRIORITY_PARAMS = _priority_sql()


# --- the store -----------------------------------------------------------------------------------


def _correction(row: Sequence[Any]) -> Correction:
    """A feedback row read with FEEDBACK_COLUMNS, in that order."""
    return correction_from_row(dict(zip(FEEDBACK_COLUMNS, row, strict=True)))


class FeedbackStore:
    """The feedback tables over a ClickHouseStore's backend, compatibility level and retries.
    Build with ``open_feedback_store(settings)``, or ``FeedbackStore(store)`` inside a process that
    already has a ClickHouseStore open (chdb allows one embedded backend per process); closing
    either closes the backend."""

    def __init__(self, store: ClickHouseStore) -> None:
        self._store = store
        self.backend = store.backend
        self.database = store.database
        self.level = store.level
        self._clock = store._clock

    def _query(self, what: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._store._query(what, sql, params)

    def _insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        if rows:
            self._store._retried(f"insert into {table}", lambda: self.backend.insert(
                f"{self.database}.{table}", columns, rows
            ))
        return len(rows)

    # --- label queue ----------------------------------------------------------------------------

    def write_requests(self, requests: Sequence[LabelRequest]) -> int:
        """Queue requests in state 'open'; returns the rows written.

        A request for an item already queued (a replay, or the same message selected again for
        another reason, e.g. an alert) never duplicates it or reopens it. While the item is still
        open, reasons it did not have yet (and an alert id / challenger label it lacked) are added,
        in a row with the same updated time, which replaces the open row (ReplacingMergeTree keeps
        the last inserted of equal versions) and loses to any lease or label written since.
        """
        merged: dict[str, LabelRequest] = {}
        for r in requests:
            merged[r.item_id] = _merge(merged[r.item_id], r) if r.item_id in merged else r
        if not merged:
            return 0
        existing = self.items_by_id(merged)
        rows = []
        for item_id, r in merged.items():
            old = existing.get(item_id)
            if old is None:
                rows.append(QueueItem(request=r, state=ItemState.open, updated_at=r.selected_at))
                continue
            update = _merge(old.request, r)
            if old.state is ItemState.open and update != old.request:
                rows.append(old.model_copy(update={"request": update}))
        return self._insert("label_queue", QUEUE_COLUMNS, [queue_row(i, self.level) for i in rows])

    def write_items(self, items: Sequence[QueueItem]) -> int:
        """Store state changes (lease, label, skip, undo); the row with the latest updated_at wins."""
        return self._insert("label_queue", QUEUE_COLUMNS, [queue_row(i, self.level) for i in items])

    def fetch_items(
        self,
        *,
        task: str | None = None,
        states: Collection[ItemState] | None = None,
        limit: int = 1000,
    ) -> list[QueueItem]:
        """The latest state of each item, oldest selected first."""
        if states is not None and not states:
            return []
        inner_where = "WHERE task = {task:String}" if task is not None else ""
        params: dict[str, Any] = {"limit": limit}
        if task is not None:
            params["task"] = task
        outer_where = ""
        if states is not None:
            outer_where = "WHERE state IN {states:Array(String)}"
            params["states"] = sorted(ItemState(s).value for s in states)
        cols = ", ".join(QUEUE_COLUMNS)
        rows = self._query(
            "label-queue read",
            f"SELECT {cols} FROM (SELECT {cols} FROM {self.database}.label_queue FINAL {inner_where}) "
            f"{outer_where} ORDER BY selected_at, item_id LIMIT {{limit:UInt64}}",
            params,
        )
        return [queue_item_from_row(dict(zip(QUEUE_COLUMNS, r, strict=True))) for r in rows]

    def fetch_next(self, task: str, now: datetime, limit: int) -> list[QueueItem]:
        """The first ``limit`` items of ``task`` that can be leased at ``now`` (open, or leased with
        the lease run out, at whole seconds), in the order a lease book leases them: best reason
        first (``feedback.leases.RANK``), then oldest selected."""
        lapsed = ("state = 'open' OR (state = 'leased' AND (isNull(lease_expires) OR "
                  "lease_expires <= toDateTime({now:String}, 'UTC')))")
        # The ranking reads only the columns it needs: it scans every item the queue ever had.
        ids = (
            f"SELECT item_id FROM (SELECT item_id, reasons, selected_at, state, lease_expires "
            f"FROM {self.database}.label_queue FINAL WHERE task = {{task:String}}) WHERE {lapsed} "
            f"ORDER BY {_PRIORITY_SQL}, selected_at, item_id LIMIT {{limit:UInt64}}"
        )
        return self._items_in(ids, {"task": task, "now": bound_time(now), "limit": limit, **_PRIORITY_PARAMS},
                              order=f"{_PRIORITY_SQL}, selected_at, item_id")

    def fetch_held(self, now: datetime, changed_since: datetime) -> list[QueueItem]:
        """Every item leased at ``now`` and every item changed at or after ``changed_since``
        (whole seconds), whatever its state: what a lease book holds besides the next open items
        (the leases, and the finished items that can still be undone)."""
        ids = (
            f"SELECT item_id FROM (SELECT item_id, state, lease_expires, updated_time FROM "
            f"{self.database}.label_queue FINAL) WHERE (state = 'leased' AND "
            "lease_expires > toDateTime({now:String}, 'UTC')) OR updated_time >= toDateTime({since:String}, 'UTC')"
        )
        return self._items_in(ids, {"now": bound_time(now), "since": bound_time(changed_since)},
                              order="updated_time, item_id")

    def _items_in(self, ids: str, params: dict[str, Any], *, order: str) -> list[QueueItem]:
        """The latest state of the items whose ids the subquery ``ids`` selects, in ``order``."""
        cols = ", ".join(QUEUE_COLUMNS)
        rows = self._query(
            "label-queue read",
            f"SELECT {cols} FROM {self.database}.label_queue FINAL WHERE item_id IN ({ids}) ORDER BY {order}",
            params,
        )
        return [queue_item_from_row(dict(zip(QUEUE_COLUMNS, r, strict=True))) for r in rows]

    def finished_by(self, annotator: str, since: datetime) -> dict[str, int]:
        """How many queue items ``annotator`` labelled and skipped at or after ``since`` (whole
        seconds), as their latest state says (an undone item does not count)."""
        rows = self._query(
            "label-queue read",
            f"SELECT state, count() FROM (SELECT state, leased_by, updated_time FROM {self.database}.label_queue "
            "FINAL) WHERE leased_by = {annotator:String} AND state IN ('labelled', 'skipped') "
            "AND updated_time >= toDateTime({since:String}, 'UTC') GROUP BY state",
            {"annotator": annotator, "since": bound_time(since)},
        )
        return {"labelled": 0, "skipped": 0} | {state: int(n) for state, n in rows}

    def skipped_per_annotator(self) -> dict[str, int]:
        """How many queue items each annotator skipped, as their latest state says."""
        rows = self._query(
            "label-queue stats",
            f"SELECT leased_by, count() FROM (SELECT state, leased_by FROM {self.database}.label_queue FINAL) "
            "WHERE state = 'skipped' AND leased_by != '' GROUP BY leased_by",
        )
        return {annotator: int(n) for annotator, n in rows}

    def items_by_id(self, item_ids: Iterable[str]) -> dict[str, QueueItem]:
        """The queue items with these ids, by id (ids not in the queue are absent)."""
        if not (wanted := sorted(item_ids)):
            return {}
        cols = ", ".join(QUEUE_COLUMNS)
        rows = self._query(
            "label-queue read",
            f"SELECT {cols} FROM {self.database}.label_queue FINAL WHERE item_id IN {{ids:Array(String)}}",
            {"ids": wanted},
        )
        items = (queue_item_from_row(dict(zip(QUEUE_COLUMNS, r, strict=True))) for r in rows)
        return {item.request.item_id: item for item in items}

    def fetch_item(self, item_id: str) -> QueueItem | None:
        return self.items_by_id([item_id]).get(item_id)

    def fetch_selections(self, since: datetime) -> list[PastSelection]:
        """Every item selected at or after ``since`` (whole seconds), oldest first, as the selector
        counts it: what a restarted worker's selector takes as its history."""
        rows = self._query(
            "label-queue selections read",
            f"SELECT task, event_time, model_label, text, has(reasons, {{audit:String}}), item_id "
            f"FROM {self.database}.label_queue FINAL "
            "WHERE selected_at >= toDateTime({since:String}, 'UTC') ORDER BY selected_at, item_id",
            {"since": bound_time(since), "audit": SelectionReason.audit.value},
        )
        return [PastSelection(task, as_utc(t), label, text, bool(audit), item_id)
                for task, t, label, text, audit, item_id in rows]

    def queue_stats(self, task: str | None = None) -> dict[str, int]:
        """Items per state (every state present, 0 when none)."""
        inner_where = "WHERE task = {task:String}" if task is not None else ""
        rows = self._query(
            "label-queue stats",
            f"SELECT state, count() FROM (SELECT state FROM {self.database}.label_queue FINAL {inner_where}) "
            "GROUP BY state",
            {"task": task} if task is not None else None,
        )
        stats = {s.value: 0 for s in ItemState}
        stats.update({state: int(n) for state, n in rows})
        return stats

    # --- corrections ----------------------------------------------------------------------------

    def write_corrections(self, corrections: Sequence[Correction]) -> int:
        written = self._clock()
        return self._insert(
            "feedback", FEEDBACK_COLUMNS, [correction_row(c, written, self.level) for c in corrections]
        )

    def fetch_corrections(self, task: str, *, since: datetime | None = None) -> list[Correction]:
        """The latest correction per (task, message, annotator), oldest first, unless withdrawn;
        ``since`` is inclusive."""
        outer_where = "WHERE withdrawn = 0" + (" AND created_at >= toDateTime({since:String}, 'UTC')" if since is not None else "")
        params: dict[str, Any] = {"task": task}
        if since is not None:
            # Compared at whole seconds: 18.16 has no DateTime64, and a bound must mean the same on both.
            params["since"] = bound_time(since)
        cols = ", ".join(FEEDBACK_COLUMNS)
        rows = self._query(
            "feedback read",
            f"SELECT {cols} FROM (SELECT {cols} FROM {self.database}.feedback FINAL WHERE task = {{task:String}}) "
            f"{outer_where} ORDER BY created_at, correction_id",
            params,
        )
        return [_correction(r) for r in rows]

    def labels_per_annotator(self) -> dict[str, int]:
        """How many messages each annotator's standing labels cover (the latest per message, not
        withdrawn), over every task: counted in ClickHouse, never read row by row."""
        rows = self._query(
            "feedback stats",
            f"SELECT annotator, count() FROM (SELECT annotator, withdrawn FROM {self.database}.feedback FINAL) "
            "WHERE withdrawn = 0 GROUP BY annotator ORDER BY annotator",
        )
        return {annotator: int(n) for annotator, n in rows}

    def agreement(self) -> dict[str, Agreement]:
        """Per task with any, the agreement of annotators' standing labels on messages two or more
        labelled. Pairs come from the label counts of a message: ``n`` labels hold n(n-1)/2 pairs,
        and a label given ``c`` times c(c-1)/2 agreeing ones."""
        rows = self._query(
            "feedback stats",
            "SELECT task, count(), sum(kinds = 1), sum(intDiv(n * (n - 1), 2)), sum(same) FROM ("
            " SELECT task, message_id, sum(c) AS n, count() AS kinds, sum(intDiv(c * (c - 1), 2)) AS same FROM ("
            "  SELECT task, message_id, human_label, count() AS c FROM ("
            f"   SELECT task, message_id, human_label, withdrawn FROM {self.database}.feedback FINAL)"
            "  WHERE withdrawn = 0 GROUP BY task, message_id, human_label)"
            " GROUP BY task, message_id HAVING n >= 2)"
            " GROUP BY task ORDER BY task",
        )
        return {task: Agreement(*(int(x) for x in figures)) for task, *figures in rows}

    def fetch_correction(self, correction_id: str) -> Correction | None:
        """The latest version of one correction (a withdrawal too), None when there is none."""
        return self.corrections_by_id([correction_id]).get(correction_id)

    def corrections_by_id(self, correction_ids: Iterable[str]) -> dict[str, Correction]:
        """The latest version of each correction found (withdrawals too), by id."""
        wanted = sorted(set(correction_ids))
        if not wanted:
            return {}
        cols = ", ".join(FEEDBACK_COLUMNS)
        rows = self._query(
            "feedback read",
            f"SELECT {cols} FROM {self.database}.feedback FINAL WHERE correction_id IN {{ids:Array(String)}}",
            {"ids": wanted},
        )
        return {c.correction_id: c for c in map(_correction, rows)}

    def fetch_audit_corrections(
        self, task: str, model_version: str, *, before: datetime, limit: int
    ) -> list[tuple[Correction, QueueItem]]:
        """The last ``limit`` corrections created before ``before`` (whole seconds) of ``task``'s
        random-audit items that ``model_version`` scored, each with its item, oldest first: the
        history a restarted worker's audited-error monitor takes."""
        cols = ", ".join(FEEDBACK_COLUMNS)
        audit_items = (
            f"SELECT item_id FROM (SELECT item_id, model_version, reasons FROM {self.database}.label_queue FINAL "
            "WHERE task = {task:String}) WHERE model_version = {version:String} AND has(reasons, {audit:String})"
        )
        rows = self._query(
            "audit corrections read",
            f"SELECT {cols} FROM (SELECT {cols} FROM {self.database}.feedback FINAL WHERE task = {{task:String}}) "
            f"WHERE withdrawn = 0 AND created_at < toDateTime({{before:String}}, 'UTC') AND item_id IN ({audit_items}) "
            "ORDER BY created_at DESC, correction_id DESC LIMIT {limit:UInt64}",
            {"task": task, "version": model_version, "audit": SelectionReason.audit.value,
             "before": bound_time(before), "limit": limit},
        )
        corrections = [_correction(r) for r in reversed(rows)]
        if not corrections:
            return []
        items = self.items_by_id({c.item_id for c in corrections if c.item_id})
        return [(c, item) for c in corrections if (item := items.get(c.item_id or "")) is not None]

    def fetch_predicted_mix(self, task: str, model_version: str, *, before: datetime, limit: int) -> dict[str, int]:
        """How many of the last ``limit`` messages of ``task`` that ``model_version`` scored before
        ``before`` it gave each label."""
        kind = next(k for k, t in TASK_OF_KIND.items() if t == task)
        recent = self._store.fetch_recent_scored(kind, model_version, before=before, limit=limit)
        return dict(Counter(score.label for score in recent))

    # --- model events ---------------------------------------------------------------------------

    def write_model_events(self, events: Sequence[ModelEvent]) -> int:
        return self._insert("model_events", MODEL_EVENT_COLUMNS, [model_event_row(e, self.level) for e in events])

    def fetch_model_events(self, task: str | None = None) -> list[ModelEvent]:
        """Every event of a kind this release knows (one per event id), oldest first. A newer release
        sharing the table during a rolling upgrade may record kinds this one lacks: they are left out,
        not a ValueError that stops the retrain check and `vigil status`."""
        where = "WHERE task = {task:String}" if task is not None else ""
        rows = self._query(
            "model-events read",
            f"SELECT {', '.join(MODEL_EVENT_COLUMNS)} FROM {self.database}.model_events FINAL {where} "
            "ORDER BY created_at, event_id",
            {"task": task} if task is not None else None,
        )
        known = {k.value for k in ModelEventKind}
        events = [dict(zip(MODEL_EVENT_COLUMNS, r, strict=True)) for r in rows]
        if unknown := sorted({e["kind"] for e in events} - known):
            log.warning("model events of kinds %s (a newer release's) are left out", unknown)
        return [model_event_from_row(e) for e in events if e["kind"] in known]

    # --- retrain rounds' heartbeats -------------------------------------------------------------

    def write_round_heartbeats(self, beats: Sequence[RoundHeartbeat]) -> int:
        return self._insert("retrain_heartbeats", HEARTBEAT_COLUMNS, [heartbeat_row(b, self.level) for b in beats])

    def fetch_round_heartbeats(self, task: str) -> list[RoundHeartbeat]:
        """The latest heartbeat of each of ``task``'s rounds."""
        cols = ", ".join(HEARTBEAT_COLUMNS)
        rows = self._query(
            "retrain-heartbeats read",
            f"SELECT {cols} FROM {self.database}.retrain_heartbeats FINAL WHERE task = {{task:String}} "
            "ORDER BY beat_at, round_id",
            {"task": task},
        )
        return [heartbeat_from_row(dict(zip(HEARTBEAT_COLUMNS, r, strict=True))) for r in rows]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_feedback_store(settings: VigilSettings, *, clock: Callable[[], datetime] = _utc_now) -> FeedbackStore:
    """Connect to ClickHouse and return the feedback store. Does not migrate: the schema must
    already hold migrations 0004 and 0011 (``vigil db migrate``)."""
    backend = connect(settings)
    database = settings.clickhouse_database
    try:
        try:
            level = schema_level(backend, database)
            applied = {v for (v,) in backend.query(
                f"SELECT version FROM {database}.schema_migrations FINAL WHERE version IN {{v:Array(UInt32)}}",
                {"v": sorted(_FEEDBACK_MIGRATIONS)},
            )}
        except ClickHouseError:
            level, applied = None, set()
        missing = [name for v, name in _FEEDBACK_MIGRATIONS.items() if v not in applied]
        if level is None or missing:
            raise FeedbackSchemaMissing(
                f"the feedback tables (migration {', '.join(missing)}) are not in ClickHouse database "
                f"{database!r}; run `vigil db migrate` first."
            )
    except BaseException:
        backend.close()
        raise
    return FeedbackStore(ClickHouseStore(
        backend, database=database, level=level,
        retry_attempts=settings.clickhouse_retry_attempts, retry_max_s=settings.clickhouse_retry_max_s,
        clock=clock,
    ))
