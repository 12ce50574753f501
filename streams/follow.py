"""Following what comes out of the workers: the scored and dead-letter topics.

The demo's live view and the end-to-end tests use it to know when a replay has been fully
processed, without touching ClickHouse (whose embedded engine belongs to the worker process).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka_config import client_kwargs
from streams.kafka_ends import fetched_ends
from streams.settings import VigilSettings

ENDS_TIMEOUT_S = 60.0  # for the first fetch answer of each partition: a live broker gives it in milliseconds


def quantile(xs: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``xs``; NaN when there are none."""
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Tracker:
    # kind:id -> records on the scored topic: publishing is at least once, so a batch replayed after
    # a crash or a partition's move comes out again, and the end-to-end tests report how often.
    scored: Counter[str] = field(default_factory=Counter)
    dead_offsets: set[tuple[str, int, int]] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    # why the follower feeding this tracker stopped, when it did: a tracker that no longer moves
    stopped_by: BaseException | None = None

    def raise_if_stopped(self) -> None:
        if self.stopped_by is not None:
            raise self.stopped_by

    @property
    def dead(self) -> int:
        return len(self.dead_offsets)

    @property
    def done(self) -> int:
        """Messages that came out: each scored id and each refused source record once."""
        return len(self.scored) + self.dead

    def quantile(self, q: float) -> float:
        return quantile(self.latencies_ms, q)

    def add_scored(self, value: bytes, now: float) -> None:
        scored = json.loads(value)
        key = f"{scored['kind']}:{scored['id']}"
        self.scored[key] += 1
        if self.scored[key] == 1:
            self.latencies_ms.append((now - datetime.fromisoformat(scored["ingest_time"]).timestamp()) * 1000)

    def add_dead(self, value: bytes) -> None:
        # A replayed refusal must count once: the source position identifies it.
        letter = json.loads(value)
        self.dead_offsets.add((letter["source_topic"], letter["partition"], letter["offset"]))


async def follow(
    settings: VigilSettings, bootstrap: str, tracker: Tracker, ready: asyncio.Event, from_start: bool = False
) -> None:
    """Consume the scored and dead-letter topics into `tracker` until cancelled."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        **client_kwargs(settings),
    )
    await consumer.start()
    try:
        partitions = []
        for topic in (settings.topic_scored, settings.topic_dlq):
            ids = consumer.partitions_for_topic(topic)
            while not ids:
                await consumer._client.force_metadata_update()  # aiokafka has no public call that waits for it
                ids = consumer.partitions_for_topic(topic)
            partitions += [TopicPartition(topic, p) for p in ids]
        consumer.assign(partitions)
        if from_start:
            await consumer.seek_to_beginning(*partitions)
        else:
            # Not seek_to_end: the embedded broker puts that inside the last batch, whose
            # messages, scored before this run, would count as this run's.
            for tp, end in (await fetched_ends(consumer, partitions, ENDS_TIMEOUT_S)).items():
                consumer.seek(tp, end)
        ready.set()
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.time()
            for tp, records in batches.items():
                for record in records:
                    if tp.topic == settings.topic_dlq:
                        tracker.add_dead(record.value)
                    else:
                        tracker.add_scored(record.value, now)
    finally:
        await consumer.stop()


@asynccontextmanager
async def following(settings: VigilSettings, bootstrap: str, tracker: Tracker,
                    from_start: bool = False) -> AsyncIterator[Tracker]:
    """``follow`` in the background for the block's length, entered once it reads from its start
    point. What stopped it early (the broker gave no ends, a record it could not read) is raised rather
    than leaving the caller waiting on a tracker that no longer moves: by ``wait_for`` and
    ``Tracker.raise_if_stopped`` at once, and at the block's end."""
    ready = asyncio.Event()
    task = asyncio.create_task(follow(settings, bootstrap, tracker, ready, from_start))

    def stopped(t: asyncio.Task[None]) -> None:
        if not t.cancelled():
            tracker.stopped_by = t.exception()

    task.add_done_callback(stopped)
    readiness = asyncio.create_task(ready.wait())
    await asyncio.wait({task, readiness}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        readiness.cancel()
        await task  # raises why it ended
    try:
        yield tracker
    finally:
        failed = task.done() and not task.cancelled() and task.exception()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if failed:
        raise failed


async def wait_for(tracker: Tracker, expected: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while tracker.done < expected:
        tracker.raise_if_stopped()
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True
