"""Hot swap: a worker follows its tasks' champion pointer in the registry and changes scorer
between micro-batches.

Why a poll and not the promoted event: a Kafka message reaches one member of a consumer group,
and every worker must swap. The registry pointer is one small file replaced atomically, so
reading it every ``model_poll_interval_s`` is cheap and every worker sees the same answer.

Why the swap is atomic per batch: ``BatchProcessor.prepare`` reads the slot ONCE at the start
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
from functools import partial

import faust

from feedback.contracts import ModelEvent, ModelEventKind
from models.registry import CHAMPION, ModelRegistry
from models.scoring import Scorer
from models.self_test import load_tested, refusal_reason
from streams.clickhouse import ClickHouseStore, StorageUnavailable
from streams.contracts import Kind
from streams.metrics import Metrics
from streams.settings import VigilSettings

log = logging.getLogger(__name__)

# Loading and testing a version takes seconds on the loader thread; every 10 minutes is cheap, and
# soon enough to leave a fallback that a passing failure caused.
REFUSAL_RETRY_S = 600.0


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


class Refusals:
    """Champions a worker refused, and when. A refusal is tried again after ``retry_after_s``: a
    load can fail for a passing reason (GPU memory a neighbour held while it started), and a
    worker must not stay on an old version for the rest of its life because of one."""

    def __init__(self, retry_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after_s, self._clock = retry_after_s, clock
        self._at: dict[tuple[str, str], float] = {}

    def refuse(self, task: str, version: str) -> bool:
        """Record a refusal; True the first time ``version`` is refused (the one to report)."""
        first = (task, version) not in self._at
        self._at[(task, version)] = self._clock()
        return first

    def refused(self, task: str, version: str) -> bool:
        return (task, version) in self._at

    def holds_off(self, task: str, version: str) -> bool:
        """Refused less than ``retry_after_s`` ago: not worth loading again yet."""
        at = self._at.get((task, version))
        return at is not None and self._clock() - at < self.retry_after_s


def register_hot_swap(
    app: faust.App,
    settings: VigilSettings,
    slots: Mapping[Kind, ScorerSlot],
    store: ClickHouseStore,
    metrics: Metrics,
    load: Callable[[VigilSettings, str, str], Scorer],
    worker_name: str,
    refused_at_start: Mapping[tuple[str, str], str],
) -> None:
    """Add the timer that swaps ``slots`` to new champions; loading runs on its own thread so the
    event loop keeps consuming, scoring and heartbeating meanwhile.

    A champion that fails to load or its self test is refused: the slot keeps its version, the
    refusal is reported once (a ``champion_refused`` event; ``refused_at_start`` holds those of the
    worker's start, (task, version) -> reason), and the version is tried again every
    ``REFUSAL_RETRY_S``."""
    from feedback.store import FeedbackStore

    registry = ModelRegistry(settings.registry_dir)
    loader = ThreadPoolExecutor(1, thread_name_prefix="vigil-model-load")
    events_topic = app.topic(settings.topic_model_events, key_type=bytes, value_type=bytes)
    events_store = FeedbackStore(store)  # same backend: chdb allows one per process
    refusals = Refusals(REFUSAL_RETRY_S)
    for task, version in refused_at_start:
        refusals.refuse(task, version)

    async def in_thread(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(loader, fn, *args)

    async def report(kind: ModelEventKind, task: str, version: str, detail: str, figures: dict[str, float]) -> None:
        metrics.model_events.labels(task, kind.value).inc()
        event = ModelEvent(kind=kind, task=task, model_version=version, detail=detail, figures=figures,
                           created_at=datetime.now(UTC))
        await events_topic.send(key=task.encode(), value=event.model_dump_json().encode())
        try:
            await in_thread(events_store.write_model_events, [event])
        except StorageUnavailable as exc:  # what it reports happened; only its record is missing
            log.error("%s event not stored: %s", kind.value, exc)

    @app.task
    async def report_refused_at_start() -> None:
        for (task, version), why in refused_at_start.items():
            await report(ModelEventKind.champion_refused, task, version,
                         f"{worker_name} refused {version} at start: {why}", {})

    @app.timer(settings.model_poll_interval_s)
    async def follow_champions() -> None:
        for slot in slots.values():
            version = await in_thread(wanted_version, registry, slot)
            behind = version is not None and refusals.refused(slot.task, version)
            metrics.model_behind_champion.labels(slot.task).set(int(behind))
            if version is None or refusals.holds_off(slot.task, version):
                continue
            current = slot.get().model_version
            started = time.perf_counter()
            try:
                scorer = await in_thread(load_tested, partial(load, settings, slot.task), version)
            except Exception as exc:  # noqa: BLE001 - keep scoring with the current version
                why = refusal_reason(exc)
                metrics.model_behind_champion.labels(slot.task).set(1)
                log.error("%s %s is the champion but was refused; still scoring with %s, trying it again in "
                          "%.0f s: %s", slot.task, version, current, REFUSAL_RETRY_S, why)
                if refusals.refuse(slot.task, version):
                    await report(ModelEventKind.champion_refused, slot.task, version,
                                 f"{worker_name} refused {version}, still scoring with {current}: {why}", {})
                continue
            slot.swap(scorer)
            load_s = time.perf_counter() - started
            metrics.model.info({s.task: s.get().model_version for s in slots.values()})
            log.info("%s: now scoring with %s (was %s; loaded in %.2fs)", slot.task, version, current, load_s)
            await report(ModelEventKind.swapped, slot.task, version, f"{worker_name} swapped {current} -> {version}",
                         {"load_seconds": load_s})


def follows_champion(configured: str) -> bool:
    return configured == CHAMPION
