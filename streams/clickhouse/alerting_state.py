"""The alerting_state table (migration 0009): checkpoints of the sentiment alerting state per
partition of the ticker-events topic. A thin companion to ClickHouseStore, sharing its backend and
retries."""

from __future__ import annotations

from collections.abc import Sequence

from streams.alerting.partitions import Checkpoint

from .compat import to_stored_time
from .store import ClickHouseStore

COLUMNS = ("topic", "partition", "offset", "state", "saved_at")


class AlertingStateStore:
    def __init__(self, store: ClickHouseStore, topic: str) -> None:
        self._store = store
        self._topic = topic

    @property
    def _table(self) -> str:
        return f"{self._store.database}.alerting_state"

    def save(self, checkpoints: Sequence[Checkpoint]) -> int:
        if not checkpoints:
            return 0
        saved_at = to_stored_time(self._store._clock(), self._store.level)
        rows = [(self._topic, c.partition, c.offset, c.state, saved_at) for c in checkpoints]
        self._store._retried(
            "insert into alerting_state", lambda: self._store.backend.insert(self._table, COLUMNS, rows)
        )
        return len(rows)

    def load(self, partition: int) -> Checkpoint | None:
        """The newest checkpoint of ``partition``, or None if it never had one."""
        rows = self._store._query(
            "alerting_state read",
            f"SELECT offset, state FROM {self._table} WHERE topic = {{topic:String}} AND partition = {{p:UInt32}} "
            "ORDER BY offset DESC, saved_at DESC LIMIT 1",
            {"topic": self._topic, "p": partition},
        )
        return Checkpoint(partition, int(rows[0][0]), rows[0][1]) if rows else None
