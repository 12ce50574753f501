"""The triage tables (migrations 0005, 0010): routed tickets, their acknowledgements, the per-queue,
per-priority SLA summary, and the open urgent tickets a worker takes over with a partition. A thin
companion to ClickHouseStore, sharing its backend and retries."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from streams.alerting.contracts import TicketAck, TriageTicket, sla_breach_id

from .compat import CompatLevel, as_utc, bound_time, to_stored_time
from .store import ClickHouseStore

TICKET_COLUMNS = (
    "message_id", "intent", "queue", "routed_queue", "priority", "sla_minutes", "confidence", "human_triage",
    "model_version", "text", "event_time", "due_at", "written_time", "source_partition",
)
ACK_COLUMNS = ("message_id", "acked_by", "acked_at", "written_time")
SlaState = Literal["open", "acked", "breached"]
SLA_STATES: tuple[SlaState, ...] = ("open", "acked", "breached")


def ticket_row(t: TriageTicket, written_time: datetime, level: CompatLevel) -> tuple[Any, ...]:
    return (
        t.message_id, t.intent, t.queue, t.routed_queue, t.priority, t.sla_minutes, t.confidence,
        int(t.human_triage), t.model_version, t.text, to_stored_time(t.event_time, level),
        to_stored_time(t.due_at, level), to_stored_time(written_time, level), t.source_partition,
    )


def ticket_from_row(row: dict[str, Any]) -> TriageTicket:
    return TriageTicket(
        message_id=row["message_id"], intent=row["intent"], queue=row["queue"], routed_queue=row["routed_queue"],
        priority=row["priority"], sla_minutes=int(row["sla_minutes"]), confidence=float(row["confidence"]),
        human_triage=bool(row["human_triage"]), model_version=row["model_version"], text=row["text"],
        event_time=as_utc(row["event_time"]), due_at=as_utc(row["due_at"]), source_partition=int(row["source_partition"]),
    )


def _ids_filter(message_ids: Iterable[str] | None) -> tuple[str, dict[str, Any] | None] | None:
    """The WHERE clause and parameters for "these message ids" (no clause for None); None when the
    ids are an empty set, which matches nothing."""
    if message_ids is None:
        return "", None
    ids = sorted(set(message_ids))
    return (" WHERE message_id IN {ids:Array(String)}", {"ids": ids}) if ids else None


class QueueSla(BaseModel):
    """Tickets of one queue and priority by SLA state at the time of the read: open (no ack, not
    yet due), acked (by the due time) or breached (due and not acked by then, acked since or not)."""

    queue: str
    priority: str
    open: int
    acked: int
    breached: int
    acked_late: int = 0  # of the breached, those acked since

    @property
    def total(self) -> int:
        return self.open + self.acked + self.breached


class TriageStore:
    def __init__(self, store: ClickHouseStore, clock: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._clock = clock or store._clock

    @property
    def _triage(self) -> str:
        return f"{self._store.database}.triage"

    @property
    def _acks(self) -> str:
        return f"{self._store.database}.ticket_acks"

    def write_tickets(self, tickets: Sequence[TriageTicket]) -> int:
        """One insert; a replayed ticket (same message id) collapses under FINAL."""
        if not tickets:
            return 0
        written, level = self._clock(), self._store.level
        rows = [ticket_row(t, written, level) for t in tickets]
        self._store._retried(
            "insert into triage", lambda: self._store.backend.insert(self._triage, TICKET_COLUMNS, rows)
        )
        return len(rows)

    def write_acks(self, acks: Sequence[TicketAck]) -> int:
        if not acks:
            return 0
        written, level = self._clock(), self._store.level
        rows = [(a.message_id, a.by, to_stored_time(a.at, level), to_stored_time(written, level)) for a in acks]
        self._store._retried(
            "insert into ticket_acks", lambda: self._store.backend.insert(self._acks, ACK_COLUMNS, rows)
        )
        return len(rows)

    def fetch_tickets(self, message_ids: Iterable[str] | None = None) -> list[TriageTicket]:
        """Stored tickets (all, or these ids), ordered by message id."""
        if (where_params := _ids_filter(message_ids)) is None:
            return []
        where, params = where_params
        rows = self._store._query(
            "triage read",
            f"SELECT {', '.join(TICKET_COLUMNS)} FROM {self._triage} FINAL{where} ORDER BY message_id",
            params,
        )
        return [ticket_from_row(dict(zip(TICKET_COLUMNS, r, strict=True))) for r in rows]

    def acked_ids(self, among: Iterable[str] | None = None) -> set[str]:
        """Acknowledged tickets (all, or those among these ids)."""
        if (where_params := _ids_filter(among)) is None:
            return set()
        where, params = where_params
        # GROUP BY, not DISTINCT: through a Distributed table (cluster mode), 18.16 fails DISTINCT with
        # FINAL and no WHERE where it reads the local replica ("Cannot find column written_time in
        # source stream"; prefer_localhost_replica=1, the default).
        rows = self._store._query(
            "ticket_acks read", f"SELECT message_id FROM {self._acks} FINAL{where} GROUP BY message_id", params
        )
        return {r[0] for r in rows}

    def open_tickets(self, partitions: Iterable[int], priorities: Iterable[str]) -> list[TriageTicket]:
        """Tickets of these priorities routed from these scored-topic partitions that are neither
        acknowledged nor escalated, oldest due first: the SLA clocks a worker taking the partitions
        over reopens."""
        parts, prios = sorted(set(partitions)), sorted(set(priorities))
        if not parts or not prios:
            return []
        rows = self._store._query(
            "open tickets read",
            f"SELECT {', '.join(TICKET_COLUMNS)} FROM {self._triage} FINAL "
            "WHERE source_partition IN {parts:Array(Int32)} AND priority IN {prios:Array(String)} "
            f"AND message_id NOT IN (SELECT message_id FROM {self._acks} FINAL) ORDER BY due_at, message_id",
            {"parts": parts, "prios": prios},
        )
        unacked = [ticket_from_row(dict(zip(TICKET_COLUMNS, r, strict=True))) for r in rows]
        escalated = self.escalated_ids(t.message_id for t in unacked)
        return [t for t in unacked if t.message_id not in escalated]

    def escalated_ids(self, among: Iterable[str]) -> set[str]:
        """The tickets among these (message ids) whose SLA breach is already in the alerts table."""
        breach_ids = {sla_breach_id(m): m for m in among}
        return {breach_ids[i] for i in self._store.stored_alert_ids(breach_ids)}

    def last_routed(self, partitions: Iterable[int]) -> tuple[datetime, datetime] | None:
        """(latest event time, when it was written) of the tickets from these partitions: where the
        support stream's event-time clock stood when the previous owner last routed one."""
        parts = sorted(set(partitions))
        if not parts:
            return None
        rows = self._store._query(
            "last routed ticket read",
            f"SELECT count(), max(event_time), max(written_time) FROM {self._triage} "
            "WHERE source_partition IN {parts:Array(Int32)}",
            {"parts": parts},
        )
        n, event_time, written = rows[0]
        return (as_utc(event_time), as_utc(written)) if n else None

    def sla_summary(self, now: datetime | None = None) -> list[QueueSla]:
        """Per queue and priority: tickets acked by their due time, breached (acked after it, or
        not acked and due before ``now``) and open. ``now`` defaults to the wall clock. A ticket
        acked late stays breached: counted as acked, a queue that missed every SLA but picked every
        ticket up in the end showed none."""
        at = to_stored_time(now or self._clock(), self._store.level)
        # The bound time is compared as text turned into the column's own type: the two compat
        # levels have different DateTime types, and 18.16 binds no typed parameters. ANY LEFT JOIN:
        # 18.16 wants a strictness, and the acks are one row per message.
        rows = self._store._query(
            "triage summary",
            "SELECT queue, priority, "
            "countIf(has_ack AND acked_at <= due_at) AS n_acked, "
            "countIf(has_ack AND acked_at > due_at) AS n_late, "
            "countIf(NOT has_ack AND due_at < toDateTime({now:String}, 'UTC')) AS n_overdue, "
            "count() - n_acked - n_late - n_overdue "
            f"FROM (SELECT message_id, queue, priority, due_at FROM {self._triage} FINAL) AS t "
            f"ANY LEFT JOIN (SELECT message_id, min(acked_at) AS acked_at, 1 AS has_ack FROM {self._acks} FINAL "
            "GROUP BY message_id) AS a USING message_id "
            "GROUP BY queue, priority ORDER BY queue, priority",
            {"now": bound_time(at)},
        )
        return [
            QueueSla(queue=q, priority=p, acked=int(a), breached=int(late) + int(overdue), acked_late=int(late),
                     open=int(o))
            for q, p, a, late, overdue, o in rows
        ]
