"""What `vigil status` reports, as one object built from parts the command gathers (the registry,
ClickHouse, Kafka). A part that could not be read carries why instead, so the rest still shows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from feedback.contracts import ModelEvent, ModelEventKind
from streams.clickhouse.store import Activity

_MADE_CHAMPION = (ModelEventKind.promoted, ModelEventKind.rolled_back)
# What follows the worker's name in the detail streams.hotswap writes for each kind of event a worker
# records: "host-w0 swapped v1 -> v2", "host-w0 started on v2", "host-w0 refused v2 ...".
_AFTER_WORKER = {ModelEventKind.swapped: " swapped ", ModelEventKind.started: " started on ",
                 ModelEventKind.champion_refused: " refused "}


class ModelStatus(BaseModel):
    task: str
    champion: str | None
    accuracy: float | None  # on the card's eval set
    refusals: list[str]  # workers that would not serve the champion since it became one, and why
    recent_events: list[ModelEvent]  # newest first
    # why the registry could not name the champion, or what is wrong with the one workers load instead
    registry_error: str | None = None


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
        out += [f"{m.task}: {m.registry_error or f'no model (run `vigil train --task {m.task}`)'}"
                for m in self.models if m.champion is None or m.registry_error]
        waiting = sum((self.consumer_lag or {}).values())
        # A slow worker still scores something in the window; none at all with messages waiting is no worker.
        if waiting and self.activity is not None and not self.activity.scored:
            out.append(f"{waiting:,} messages wait in Kafka and nothing was scored since "
                       f"{self.activity.since:%Y-%m-%d %H:%M} UTC: no worker is consuming. Start one "
                       "(`vigil up`, `vigil worker`) or read its log (<data dir>/logs/worker-N.log)")
        if self.clickhouse_error:
            out.append(f"ClickHouse not read: {self.clickhouse_error}")
        if self.kafka_error:
            out.append(f"Kafka not read: {self.kafka_error}")
        return out


def _worker(event: ModelEvent) -> str:
    """The worker a swapped, started or champion_refused event came from."""
    return event.detail.partition(_AFTER_WORKER[event.kind])[0]


def model_status(task: str, champion: str | None, accuracy: float | None, events: Sequence[ModelEvent],
                 recent: int = 5, registry_error: str | None = None) -> ModelStatus:
    """``events``: the task's model events, oldest first."""
    made = max((e.created_at for e in events if e.kind in _MADE_CHAMPION and e.model_version == champion),
               default=None)
    # A refusing worker retries, and a restarted one loads the champion again; once that worker swapped
    # to the champion or started on it, its refusal is over.
    serving = {_worker(e): e.created_at for e in events  # oldest first: each worker's latest wins
               if e.kind in (ModelEventKind.swapped, ModelEventKind.started) and e.model_version == champion}
    refusals = [e.detail for e in events
                if e.kind is ModelEventKind.champion_refused and e.model_version == champion
                and (made is None or e.created_at >= made)
                and not (_worker(e) in serving and serving[_worker(e)] > e.created_at)]
    return ModelStatus(task=task, champion=champion, accuracy=accuracy, refusals=refusals,
                       recent_events=list(reversed(events))[:recent], registry_error=registry_error)
