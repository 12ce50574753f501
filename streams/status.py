"""What `vigil status` reports, as one object built from parts the command gathers (the registry,
ClickHouse, Kafka). A part that could not be read carries why instead, so the rest still shows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from feedback.contracts import ModelEvent, ModelEventKind
from streams.clickhouse.store import Activity

_MADE_CHAMPION = (ModelEventKind.promoted, ModelEventKind.rolled_back)


class ModelStatus(BaseModel):
    task: str
    champion: str | None
    accuracy: float | None  # on the card's eval set
    refusals: list[str]  # workers that would not serve the champion since it became one, and why
    recent_events: list[ModelEvent]  # newest first


class StatusReport(BaseModel):
    at: datetime
    models: list[ModelStatus]
    activity: Activity | None
    label_queue: dict[str, dict[str, int]] | None  # task -> items per state
    consumer_lag: dict[str, int] | None  # topic -> messages not yet committed by the workers
    clickhouse_error: str | None = None
    kafka_error: str | None = None

    def problems(self) -> list[str]:
        """What needs a person, one line each."""
        out = [f"{m.task}: the champion {m.champion} was refused by a worker: {why}"
               for m in self.models for why in m.refusals]
        out += [f"{m.task}: no model (run `vigil train --task {m.task}`)" for m in self.models if m.champion is None]
        if self.clickhouse_error:
            out.append(f"ClickHouse not read: {self.clickhouse_error}")
        if self.kafka_error:
            out.append(f"Kafka not read: {self.kafka_error}")
        return out


def model_status(task: str, champion: str | None, accuracy: float | None, events: Sequence[ModelEvent],
                 recent: int = 5) -> ModelStatus:
    """``events``: the task's model events, oldest first."""
    made = max((e.created_at for e in events if e.kind in _MADE_CHAMPION and e.model_version == champion),
               default=None)
    refusals = [e.detail for e in events
                if e.kind is ModelEventKind.champion_refused and e.model_version == champion
                and (made is None or e.created_at >= made)]
    return ModelStatus(task=task, champion=champion, accuracy=accuracy, refusals=refusals,
                       recent_events=list(reversed(events))[:recent])
