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
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

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
T = TypeVar("T")

# Loading and testing a version takes seconds on the loader thread; every 10 minutes is cheap, and
# soon enough to leave a fallback that a passing failure caused.
REFUSAL_RETRY_S = 600.0


class WrongTask(ValueError):
    """A scorer of one task offered to another task's slot."""


def _check_task(task: str, scorer: Scorer) -> None:
    if scorer.task != task:
        raise WrongTask(f"the {scorer.task} model {scorer.model_version} cannot score {task}: its card is "
                        f"another task's; promote a {task} version with `vigil models promote {task} VERSION`")


class ScorerSlot:
    """The scorer one kind's batches use now."""

    def __init__(self, task: str, scorer: Scorer, *, follows_champion: bool) -> None:
        _check_task(task, scorer)
        self.task = task
        self.follows_champion = follows_champion  # False when settings pin a version
        self._scorer = scorer

    def get(self) -> Scorer:
        return self._scorer

    def swap(self, scorer: Scorer) -> Scorer:
        _check_task(self.task, scorer)
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


Report = Callable[[ModelEventKind, str, str, str, dict[str, float]], Awaitable[None]]


class ChampionFollower:
    """One poll of the hot swap: every slot that follows the champion gets the champion, loaded and
    tested on ``loader`` (a thread), unless it is refused. ``load(task, version)`` gives a scorer;
    ``report(kind, task, version, detail, figures)`` publishes and stores a model event."""

    def __init__(self, registry: ModelRegistry, slots: Mapping[Kind, ScorerSlot],
                 load: Callable[[str, str], Scorer], report: Report, *, refusals: Refusals, metrics: Metrics,
                 worker_name: str, loader: ThreadPoolExecutor) -> None:
        self._registry, self._slots, self._load, self._report = registry, slots, load, report
        self._refusals, self._metrics, self._worker_name, self._loader = refusals, metrics, worker_name, loader

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._loader, fn, *args)

    async def poll(self) -> None:
        for slot in self._slots.values():
            # An error out of a timer crashes the worker (mode makes it app.crash), for one slot's
            # trouble; the slot keeps its version and the next poll tries again.
            try:
                await self._follow(slot)
            except Exception:  # noqa: BLE001
                log.exception("%s: following the champion failed; still scoring with %s, trying again in the "
                              "next poll", slot.task, slot.get().model_version)

    async def _follow(self, slot: ScorerSlot) -> None:
        version = await self._in_thread(wanted_version, self._registry, slot)
        behind = version is not None and self._refusals.refused(slot.task, version)
        self._metrics.model_behind_champion.labels(slot.task).set(int(behind))
        if version is None or self._refusals.holds_off(slot.task, version):
            return
        current = slot.get().model_version
        started = time.perf_counter()
        try:
            scorer = await self._in_thread(load_tested, partial(self._load, slot.task), version)
            slot.swap(scorer)
        except Exception as exc:  # noqa: BLE001 - keep scoring with the current version
            why = refusal_reason(exc)
            self._metrics.model_behind_champion.labels(slot.task).set(1)
            log.error("%s %s is the champion but was refused; still scoring with %s, trying it again in "
                      "%.0f s: %s", slot.task, version, current, REFUSAL_RETRY_S, why)
            if self._refusals.refuse(slot.task, version):
                await self._report(ModelEventKind.champion_refused, slot.task, version,
                                   f"{self._worker_name} refused {version}, still scoring with {current}: {why}", {})
            return
        load_s = time.perf_counter() - started
        self._metrics.model.info({s.task: s.get().model_version for s in self._slots.values()})
        log.info("%s: now scoring with %s (was %s; loaded in %.2fs)", slot.task, version, current, load_s)
        await self._report(ModelEventKind.swapped, slot.task, version,
                           f"{self._worker_name} swapped {current} -> {version}", {"load_seconds": load_s})


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
    ``REFUSAL_RETRY_S``. The worker's start is reported too, a ``started`` event per slot with the
    version it scores with: it ends a refusal of that version by this worker before its restart
    (`vigil status`)."""
    from feedback.store import FeedbackStore

    loader = ThreadPoolExecutor(1, thread_name_prefix="vigil-model-load")
    events_topic = app.topic(settings.topic_model_events, key_type=bytes, value_type=bytes)
    events_store = FeedbackStore(store)  # same backend: chdb allows one per process
    refusals = Refusals(REFUSAL_RETRY_S)
    for task, version in refused_at_start:
        refusals.refuse(task, version)

    async def report(kind: ModelEventKind, task: str, version: str, detail: str, figures: dict[str, float]) -> None:
        metrics.model_events.labels(task, kind.value).inc()
        event = ModelEvent(kind=kind, task=task, model_version=version, detail=detail, figures=figures,
                           created_at=datetime.now(UTC))
        await events_topic.send(key=task.encode(), value=event.model_dump_json().encode())
        try:
            await asyncio.get_running_loop().run_in_executor(loader, events_store.write_model_events, [event])
        except StorageUnavailable as exc:  # what it reports happened; only its record is missing
            log.error("%s event not stored: %s", kind.value, exc)

    follower = ChampionFollower(ModelRegistry(settings.registry_dir), slots, partial(load, settings), report,
                                refusals=refusals, metrics=metrics, worker_name=worker_name, loader=loader)

    @app.task
    async def report_start() -> None:
        for (task, version), why in refused_at_start.items():
            await report(ModelEventKind.champion_refused, task, version,
                         f"{worker_name} refused {version} at start: {why}", {})
        for slot in slots.values():
            version = slot.get().model_version
            await report(ModelEventKind.started, slot.task, version, f"{worker_name} started on {version}", {})

    @app.timer(settings.model_poll_interval_s)
    async def follow_champions() -> None:
        await follower.poll()


def follows_champion(configured: str) -> bool:
    return configured == CHAMPION
