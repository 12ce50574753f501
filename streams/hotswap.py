"""Hot swap: a worker follows its tasks' champion pointer in the registry and changes scorer
between micro-batches.

Why a poll and not the promoted event: a Kafka message reaches one member of a consumer group,
and every worker must swap. The registry pointer is one small file replaced atomically, so
reading it every ``model_poll_interval_s`` is cheap and every worker sees the same answer.

Why the swap is atomic per batch: ``BatchProcessor.process`` reads the slot ONCE at the start
of a batch and scores, stamps (model_version) and stores the whole batch with that scorer; the
swap only rebinds the slot, so a batch in flight finishes on the old version and the next one
starts on the new. Nothing is re-consumed or skipped: offsets are untouched by a swap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import faust

from feedback.contracts import ModelEvent, ModelEventKind
from models.registry import CHAMPION, ModelRegistry
from models.scoring import Scorer
from streams.clickhouse import ClickHouseStore, StorageUnavailable
from streams.contracts import Kind
from streams.metrics import Metrics
from streams.settings import VigilSettings

log = logging.getLogger(__name__)


class ScorerSlot:
    """The scorer one kind's batches use now."""

    def __init__(self, task: str, scorer: Scorer, *, follows_champion: bool) -> None:
        self.task = task
        self.follows_champion = follows_champion  # False when settings pin a version
        self._scorer = scorer

    def get(self) -> Scorer:
        return self._scorer

    def swap(self, scorer: Scorer) -> Scorer:
        if scorer.task != self.task:
            raise ValueError(f"a {scorer.task} scorer cannot replace the {self.task} scorer")
        old, self._scorer = self._scorer, scorer
        return old


def wanted_version(registry: ModelRegistry, slot: ScorerSlot) -> str | None:
    """The version ``slot`` should score with, when that differs from the one it has."""
    if not slot.follows_champion:
        return None
    champion = registry.champion(slot.task)
    return champion if champion is not None and champion != slot.get().model_version else None


def register_hot_swap(
    app: faust.App,
    settings: VigilSettings,
    slots: Mapping[Kind, ScorerSlot],
    store: ClickHouseStore,
    metrics: Metrics,
    load: Callable[[VigilSettings, str, str], Scorer],
    worker_name: str,
) -> None:
    """Add the timer that swaps ``slots`` to new champions; loading runs on its own thread so the
    event loop keeps consuming, scoring and heartbeating meanwhile."""
    from feedback.store import FeedbackStore

    registry = ModelRegistry(settings.registry_dir)
    loader = ThreadPoolExecutor(1, thread_name_prefix="vigil-model-load")
    events_topic = app.topic(settings.topic_model_events, key_type=bytes, value_type=bytes)
    events_store = FeedbackStore(store)  # same backend: chdb allows one per process
    broken: dict[str, str] = {}  # version -> error, so a corrupt version is reported once, not every tick

    async def in_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(loader, fn, *args)

    @app.timer(settings.model_poll_interval_s)
    async def follow_champions() -> None:
        for slot in slots.values():
            version = await in_thread(wanted_version, registry, slot)
            key = f"{slot.task}/{version}"
            if version is None or key in broken:
                continue
            started = time.perf_counter()
            try:
                scorer = await in_thread(load, settings, slot.task, version)
            except Exception as exc:  # noqa: BLE001 - keep scoring with the current version
                broken[key] = repr(exc)
                log.error("%s %s is the champion but cannot be loaded; still scoring with %s: %r",
                          slot.task, version, slot.get().model_version, exc)
                continue
            old = slot.swap(scorer)
            load_s = time.perf_counter() - started
            metrics.model.info({s.task: s.get().model_version for s in slots.values()})
            metrics.model_events.labels(slot.task, ModelEventKind.swapped.value).inc()
            log.info("%s: now scoring with %s (was %s; loaded in %.2fs)", slot.task, version, old.model_version, load_s)
            event = ModelEvent(kind=ModelEventKind.swapped, task=slot.task, model_version=version,
                               detail=f"{worker_name} swapped {old.model_version} -> {version}",
                               figures={"load_seconds": load_s}, created_at=datetime.now(UTC))
            await events_topic.send(key=slot.task.encode(), value=event.model_dump_json().encode())
            try:
                await in_thread(events_store.write_model_events, [event])
            except StorageUnavailable as exc:  # the swap happened; only its record is missing
                log.error("swapped event not stored: %s", exc)


def follows_champion(configured: str) -> bool:
    return configured == CHAMPION
