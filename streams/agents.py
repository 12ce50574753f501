"""faust agents: thin adapters between Kafka micro-batches and the pure pipeline core.

Delivery guarantee, per micro-batch: decode -> score -> publish (awaited) -> ClickHouse write
(retried until it succeeds) -> ack. Offsets are acked by hand (``streams.batching.micro_batches``
hands events out un-acked) and only after the write is durable, because faust's ``take()`` acks a
batch even when the body raised. A crash at any point replays the un-acked batch; the store
collapses replays by (kind, id, model version).

The scoring agents run a batch in two stages (``streams.batching.pipeline_batches``): ``prepare``
decodes and scores, with no side effect; ``commit`` publishes, stores and acks. The next batch is
prepared while the last one commits, so the model is not idle while the broker and ClickHouse work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from faust.types import EventT, TopicT

from models.scoring import Scorer
from streams.clickhouse import ClickHouseStore
from streams.contracts import DeadLetter, Kind, ScoredMessage
from streams.durable import until_stored
from streams.metrics import Metrics
from streams.pipeline import BatchResult, Limits, RawRecord, decode_batch, resolve_duplicates, score_batch
from streams.tickers import CompanyDictionary
from streams.watchdog import Watchdogs

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


@dataclass(slots=True)
class PreparedBatch:
    """A batch decoded and scored, not yet published or stored."""

    n_records: int
    result: BatchResult
    started: float


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
        watchdogs: Watchdogs,
        metrics: Metrics,
        model_executor: ThreadPoolExecutor,
        io_executor: ThreadPoolExecutor,
        retry_max_s: float,
        shadow: Scorer | None = None,
        companies: CompanyDictionary | None = None,
    ) -> None:
        self.kind = kind
        self._shadow = shadow
        self._companies = companies
        self._scorer = scorer
        self._store = store
        self._limits = limits
        self._scored_topic = scored_topic
        self._dlq_topic = dlq_topic
        self._watchdogs = watchdogs
        self._metrics = metrics
        self._model_executor = model_executor
        self._io_executor = io_executor
        self._retry_max_s = retry_max_s
        self._last_prepared: dict[str, int] = {}  # id -> content hash of the last prepared batch

    async def _in(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def _durably(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        return await until_stored(
            what, fn, *args, executor=self._io_executor, metrics=self._metrics, watchdogs=self._watchdogs,
            retry_max_s=self._retry_max_s,
        )

    async def prepare_events(self, events: Sequence[EventT]) -> PreparedBatch:
        """The agent's first stage: ``prepare`` on the events' Kafka records."""
        return await self.prepare([to_raw_record(e) for e in events])

    async def prepare(self, records: Sequence[RawRecord]) -> PreparedBatch:
        """Decode and score one batch. Nothing is published or stored, so a batch dropped here (a stop)
        comes again un-scored."""
        started = time.perf_counter()
        decoded, dead = decode_batch(self.kind, records, self._limits, datetime.now(UTC))
        stored = (
            await self._durably(
                "reading known ids", self._store.existing_content_hashes, self.kind, [d.item.id for d in decoded]
            )
            if decoded
            else {}
        )
        # The previous batch may still be committing: its ids count as stored, so an id it used
        # with other content is dead-lettered here as it would be once that batch is stored.
        unique, duplicates = resolve_duplicates(decoded, {**self._last_prepared, **stored})
        self._last_prepared = {d.item.id: d.content_hash for d in unique}
        scorer = self._scorer()  # once per batch: a hot swap lands between batches, never inside one

        def score() -> BatchResult:
            began = time.perf_counter()
            scored = score_batch(self.kind, unique, scorer, shadow=self._shadow,
                                 max_tickers=self._limits.max_tickers, companies=self._companies)
            if unique:
                self._metrics.scoring_seconds.labels(self.kind.value).observe(time.perf_counter() - began)
            return scored

        result = await self._in(self._model_executor, score)
        result.dead.extend(dead + duplicates)
        return PreparedBatch(len(records), result, started)

    async def commit(self, batch: PreparedBatch) -> BatchResult:
        """Publish a prepared batch, then store it (retried until stored)."""
        result = batch.result
        await self._publish(result.scored, result.dead)
        if result.scored:
            await self._durably("writing scored rows", self._store.write_scored, result.scored)
        stored_at = datetime.now(UTC)
        if shadowed := [m for m in result.scored if m.shadow is not None]:
            await self._durably("writing shadow predictions", self._store.write_shadow, shadowed)
        if result.dead:
            await self._durably("writing dead letters", self._store.write_dead_letters, result.dead)
        self._metrics.observe_batch(self.kind, batch.n_records, result, time.perf_counter() - batch.started,
                                    stored_at=stored_at)
        return result

    async def _publish(self, scored: Sequence[ScoredMessage], dead: Sequence[DeadLetter]) -> None:
        futures = [
            await self._scored_topic.send(key=m.id.encode(), value=m.model_dump_json().encode()) for m in scored
        ]
        futures += [await self._dlq_topic.send(key=d.key, value=d.model_dump_json().encode()) for d in dead]
        if futures:
            await asyncio.gather(*futures)
