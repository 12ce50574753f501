"""faust agents: thin adapters between Kafka micro-batches and the pure pipeline core.

Delivery guarantee, per micro-batch: decode -> score -> publish (awaited) -> ClickHouse write
(retried until it succeeds) -> ack. Offsets are acked by hand (``streams.batching.micro_batches``
hands events out un-acked) and only after the write is durable, because faust's ``take()`` acks a
batch even when the body raised. A crash at any point replays the un-acked batch; the store
collapses replays by (kind, id, model version).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from faust.types import EventT, TopicT

from models.scoring import Scorer
from streams.clickhouse import ClickHouseStore
from streams.contracts import DeadLetter, Kind, ScoredMessage
from streams.durable import until_stored
from streams.metrics import Metrics
from streams.pipeline import BatchResult, Limits, RawRecord, decode_batch, resolve_duplicates, score_batch
from streams.watchdog import ProgressWatchdog

log = logging.getLogger(__name__)
T = TypeVar("T")


def to_raw_record(event: EventT) -> RawRecord:
    m = event.message
    return RawRecord(
        topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        key=m.key,
        value=m.value,
        timestamp_ms=int(m.timestamp * 1000),
    )


class BatchProcessor:
    """Runs one micro-batch of one kind through the pipeline and makes the result durable."""

    def __init__(
        self,
        *,
        kind: Kind,
        scorer: Callable[[], Scorer],
        store: ClickHouseStore,
        limits: Limits,
        scored_topic: TopicT,
        dlq_topic: TopicT,
        watchdog: ProgressWatchdog,
        metrics: Metrics,
        model_executor: ThreadPoolExecutor,
        io_executor: ThreadPoolExecutor,
        retry_max_s: float,
        shadow: Scorer | None = None,
    ) -> None:
        self.kind = kind
        self._shadow = shadow
        self._scorer = scorer
        self._store = store
        self._limits = limits
        self._scored_topic = scored_topic
        self._dlq_topic = dlq_topic
        self._watchdog = watchdog
        self._metrics = metrics
        self._model_executor = model_executor
        self._io_executor = io_executor
        self._retry_max_s = retry_max_s

    async def _in(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def _durably(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        return await until_stored(
            what, fn, *args, executor=self._io_executor, metrics=self._metrics, watchdog=self._watchdog,
            retry_max_s=self._retry_max_s,
        )

    async def process_events(self, events: Sequence[EventT]) -> BatchResult:
        """The agent's batch handler: ``process`` on the events' Kafka records."""
        return await self.process([to_raw_record(e) for e in events])

    async def process(self, records: Sequence[RawRecord]) -> BatchResult:
        started = time.perf_counter()
        decoded, dead = decode_batch(self.kind, records, self._limits)
        stored = (
            await self._durably(
                "reading known ids", self._store.existing_content_hashes, self.kind, [d.item.id for d in decoded]
            )
            if decoded
            else {}
        )
        unique, duplicates = resolve_duplicates(decoded, stored)
        scorer = self._scorer()  # once per batch: a hot swap lands between batches, never inside one
        result = await self._in(
            self._model_executor, lambda: score_batch(self.kind, unique, scorer, shadow=self._shadow)
        )
        result.dead.extend(dead + duplicates)
        await self._publish(result.scored, result.dead)
        if result.scored:
            await self._durably("writing scored rows", self._store.write_scored, result.scored)
        if shadowed := [m for m in result.scored if m.shadow is not None]:
            await self._durably("writing shadow predictions", self._store.write_shadow, shadowed)
        if result.dead:
            await self._durably("writing dead letters", self._store.write_dead_letters, result.dead)
        self._metrics.observe_batch(self.kind, len(records), result, time.perf_counter() - started)
        return result

    async def _publish(self, scored: Sequence[ScoredMessage], dead: Sequence[DeadLetter]) -> None:
        futures = [
            await self._scored_topic.send(key=m.id.encode(), value=m.model_dump_json().encode()) for m in scored
        ]
        futures += [await self._dlq_topic.send(key=d.key, value=d.model_dump_json().encode()) for d in dead]
        if futures:
            await asyncio.gather(*futures)
