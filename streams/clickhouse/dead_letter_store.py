"""Dead letters for people (migrations 0002, 0012, 0017): the letters to look at or replay,
filtered, and which of them a replay already sent back. A thin companion to ClickHouseStore,
sharing its backend and retries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from streams.contracts import DeadLetterReason, StoredDeadLetter
from streams.dead_letter_replay import Replayed, letter_key

from .compat import DEAD_LETTER_COLUMNS, bound_time, dead_letter_from_row, to_stored_time
from .store import ClickHouseStore

REPLAY_COLUMNS = ("source_topic", "src_partition", "src_offset", "raw_sha256", "reason", "replayed_at")


class DeadLetterStore:
    def __init__(self, store: ClickHouseStore) -> None:
        self._store = store

    @property
    def _replays(self) -> str:
        return f"{self._store.database}.dead_letter_replays"

    def letters(self, *, reason: DeadLetterReason | None = None, topic: str | None = None,
                since: datetime | None = None, limit: int = 1000, skip: int = 0) -> list[StoredDeadLetter]:
        """Letters received at or after ``since`` (whole seconds), oldest first: ``limit`` of them
        after the first ``skip``."""
        where, params = self._matching(reason, topic, since)
        rows = self._store._query(
            "dead-letter read",
            f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM {self._store._dead_letters} FINAL {where} "
            "ORDER BY received_at, source_topic, src_partition, src_offset, raw_base64 "
            "LIMIT {skip:UInt64}, {limit:UInt64}",
            {**params, "limit": limit, "skip": skip},
        )
        return [dead_letter_from_row(dict(zip(DEAD_LETTER_COLUMNS, r, strict=True))) for r in rows]

    def count(self, *, reason: DeadLetterReason | None = None, topic: str | None = None,
              since: datetime | None = None) -> int:
        """How many letters ``letters`` chooses from."""
        where, params = self._matching(reason, topic, since)
        rows = self._store._query("dead-letter count",
                                  f"SELECT count() FROM {self._store._dead_letters} FINAL {where}", params)
        return int(rows[0][0])

    @staticmethod
    def _matching(reason: DeadLetterReason | None, topic: str | None,
                  since: datetime | None) -> tuple[str, dict[str, Any]]:
        """The WHERE clause (or nothing) and its parameters for the letters of these filters."""
        where: list[str] = []
        params: dict[str, Any] = {}
        if reason is not None:
            where.append("reason = {reason:String}")
            params["reason"] = reason.value
        if topic is not None:
            where.append("source_topic = {topic:String}")
            params["topic"] = topic
        if since is not None:
            where.append("received_at >= toDateTime({since:String}, 'UTC')")
            params["since"] = bound_time(since)
        return ("WHERE " + " AND ".join(where) if where else ""), params

    def every_letter(self, *, reason: DeadLetterReason | None = None, topic: str | None = None,
                     since: datetime | None = None, page: int = 5000) -> Iterator[StoredDeadLetter]:
        """``letters``, oldest first, read a page at a time as the caller goes on."""
        skip = 0
        while letters := self.letters(reason=reason, topic=topic, since=since, limit=page, skip=skip):
            yield from letters
            skip += len(letters)

    def replayed(self, topic: str | None = None) -> Replayed:
        """The letters (of ``topic``, else of every topic) that a replay sent back."""
        where = "WHERE source_topic = {topic:String}" if topic is not None else ""
        rows = self._store._query(
            "dead-letter replay read",
            f"SELECT source_topic, src_partition, src_offset, raw_sha256, reason FROM {self._replays} FINAL {where}",
            {"topic": topic} if topic is not None else None,
        )
        return Replayed(letters={(t, int(p), int(o), h) for t, p, o, h, _ in rows},
                        contents={(t, h, DeadLetterReason(r)) for t, _, _, h, r in rows if r})

    def record_replays(self, letters: Sequence[StoredDeadLetter], at: datetime) -> int:
        if not letters:
            return 0
        when = to_stored_time(at, self._store.level)
        rows: list[tuple[Any, ...]] = [(*letter_key(d), d.reason.value, when) for d in letters]
        self._store._retried("insert into dead_letter_replays",
                             lambda: self._store.backend.insert(self._replays, REPLAY_COLUMNS, rows))
        return len(rows)
