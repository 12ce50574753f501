"""The alerting_state and alerting_seen tables (migrations 0009, 0013): checkpoints of the windowed
alerting state per partition of a keyed events topic, and the message ids each one counted. A thin
companion to ClickHouseStore, sharing its backend and retries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from streams.alerting.partitions import Checkpoint, SeenId

from .compat import as_utc, bound_time, to_stored_time
from .store import ClickHouseStore

COLUMNS = ("topic", "partition", "offset", "state", "saved_at")
SEEN_COLUMNS = ("topic", "partition", "offset", "key", "message_id", "event_time", "saved_at")


class AlertingStateStore:
    def __init__(self, store: ClickHouseStore, topic: str) -> None:
        self._store = store
        self._topic = topic

    def _table(self, name: str) -> str:
        return f"{self._store.database}.{name}"

    def save(self, checkpoints: Sequence[Checkpoint]) -> int:
        """Store each checkpoint's new ids, then the checkpoints: a checkpoint is never read without its ids."""
        if not checkpoints:
            return 0
        level = self._store.level
        saved_at = to_stored_time(self._store._clock(), level)
        seen = [
            (self._topic, c.partition, c.offset, s.key, s.message_id, to_stored_time(s.event_time, level), saved_at)
            for c in checkpoints
            for s in c.new_seen
        ]
        if seen:
            self._store._retried(
                "insert into alerting_seen",
                lambda: self._store.backend.insert(self._table("alerting_seen"), SEEN_COLUMNS, seen),
            )
        rows = [(self._topic, c.partition, c.offset, c.state, saved_at) for c in checkpoints]
        self._store._retried(
            "insert into alerting_state",
            lambda: self._store.backend.insert(self._table("alerting_state"), COLUMNS, rows),
        )
        return len(rows)

    def load(self, partition: int) -> Checkpoint | None:
        """The newest checkpoint of ``partition`` (without its ids: ``load_seen``), or None if it never had one."""
        rows = self._store._query(
            "alerting_state read",
            f"SELECT offset, state FROM {self._table('alerting_state')} "
            "WHERE topic = {topic:String} AND partition = {p:UInt32} ORDER BY offset DESC, saved_at DESC LIMIT 1",
            {"topic": self._topic, "p": partition},
        )
        return Checkpoint(partition, int(rows[0][0]), rows[0][1]) if rows else None

    def load_seen(self, partition: int, up_to_offset: int, since: datetime | None) -> list[SeenId]:
        """The ids stored with ``partition``'s checkpoints up to ``up_to_offset``, of event times from ``since`` on."""
        params: dict[str, object] = {"topic": self._topic, "p": partition, "offset": up_to_offset}
        where = "topic = {topic:String} AND partition = {p:UInt32} AND offset <= {offset:Int64}"
        if since is not None:
            where += " AND event_time >= toDateTime({since:String}, 'UTC')"
            params["since"] = bound_time(since)
        rows = self._store._query(
            "alerting_seen read",
            f"SELECT DISTINCT key, message_id, event_time FROM {self._table('alerting_seen')} WHERE {where}",
            params,
        )
        return [SeenId(key, message_id, as_utc(at)) for key, message_id, at in rows]
