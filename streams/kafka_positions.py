"""Records read back from where they sit in Kafka, for `vigil dead-letters replay`: ClickHouse keeps
no raw bytes, so a dead letter's message is read from its raw topic at its partition and offset,
for as long as the topic's retention keeps it."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from streams.dead_letter_replay import Bounds, Original, Position
from streams import kafka_lag
from streams.kafka_config import client_kwargs
from streams.settings import VigilSettings
from streams.topics import partition_counts

# Wanted offsets this close are read through: a seek drops what the consumer fetched ahead.
_READ_THROUGH = 500


class RecordsUnavailable(RuntimeError):
    """Kafka could not be reached, or did not answer for some partitions in time."""


async def partition_bounds(settings: VigilSettings, topics: Iterable[str], timeout_s: float = 10.0) -> Bounds:
    """Each partition of ``topics`` that Kafka knows: the first offset it still holds (the older
    ones went with the retention) and its end."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_brokers, client_id="vigil-dead-letters",
                                 request_timeout_ms=int(timeout_s * 1000), **client_kwargs(settings))
    except KafkaError as e:
        raise RecordsUnavailable(f"could not reach Kafka at {settings.kafka_brokers}: {e!r}") from e
    try:
        counts = partition_counts(admin, list(topics))
    except KafkaError as e:
        raise RecordsUnavailable(f"Kafka at {settings.kafka_brokers} did not describe the raw topics: {e!r}") from e
    finally:
        admin.close()
    partitions = [TopicPartition(topic, p) for topic, n in counts.items() for p in range(n)]
    try:
        bounds = await kafka_lag.partition_bounds(settings, partitions, timeout_s, client_id="vigil-dead-letters")
    except kafka_lag.LagUnavailable as e:
        raise RecordsUnavailable(str(e)) from e
    return {(tp.topic, tp.partition): bounds[tp] for tp in partitions}


async def records_at(settings: VigilSettings, positions: Iterable[Position],
                     timeout_s: float = 10.0) -> dict[Position, Original]:
    """The key and value at each of ``positions``; one that holds no record any more (gone with
    the retention, or past the partition's end) is left out."""
    wanted: dict[TopicPartition, set[int]] = defaultdict(set)
    for topic, partition, offset in positions:
        wanted[TopicPartition(topic, partition)].add(offset)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, client_id="vigil-dead-letters",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
                                request_timeout_ms=int(timeout_s * 1000), **client_kwargs(settings))
    found: dict[Position, Original] = {}
    try:
        await consumer.start()
        for tp, offsets in wanted.items():
            found.update(await _read(consumer, tp, sorted(offsets), timeout_s))
    except AIOKafkaError as e:
        raise RecordsUnavailable(
            f"Kafka at {settings.kafka_brokers} did not answer a read of the raw topics: {e}"
        ) from e
    finally:
        await consumer.stop()
    return found


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, offsets: list[int],
                timeout_s: float) -> dict[Position, Original]:
    """The records at ``offsets`` (ascending) of ``tp``. An offset below the partition's first is
    reset to it ("earliest"), so the first record read past a wanted offset means it is gone."""
    consumer.assign([tp])
    consumer.seek(tp, offsets[0])
    wanted, found = set(offsets), {}
    pending = list(offsets)
    deadline = time.monotonic() + timeout_s
    while pending:
        records = (await consumer.getmany(tp, timeout_ms=200)).get(tp, [])
        if not records:
            end = consumer.highwater(tp)
            if end is not None and end <= pending[0]:
                break  # the partition ends before them (recreated since its bounds were read)
            if time.monotonic() > deadline:
                raise RecordsUnavailable(f"Kafka gave no records of {tp.topic}[{tp.partition}] from offset "
                                         f"{pending[0]} within {timeout_s:g} s")
            continue
        deadline = time.monotonic() + timeout_s
        for r in records:
            if r.offset in wanted:
                found[(tp.topic, tp.partition, r.offset)] = (r.key, r.value)
        last = records[-1].offset
        pending = [o for o in pending if o > last]
        if pending and pending[0] > last + _READ_THROUGH:
            consumer.seek(tp, pending[0])
    return found
