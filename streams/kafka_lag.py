"""How far the workers' consumer group is behind on the raw topics, asked of Kafka itself (the
group's committed offsets against each partition's end, as a Fetch answer gives it: see
streams/kafka_ends.py; and its start, the oldest offset Kafka still holds)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as FetchPartition
from aiokafka.errors import KafkaError as AIOKafkaError
from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import KafkaError

from streams.kafka_config import client_kwargs
from streams.kafka_ends import EndsUnavailable, fetched_ends
from streams.settings import VigilSettings
from streams.topics import partition_counts


class LagUnavailable(RuntimeError):
    """Kafka could not be asked (not reachable, or it refused)."""


def group_lag(settings: VigilSettings, topics: Iterable[str], timeout_s: float = 5.0) -> dict[str, int]:
    """Messages not yet committed by ``settings.consumer_group``, per topic: ``topics`` (a
    partition the group never committed counts from its start: see ``partition_lag``) and every
    other topic the group has committed on (the workers' internal hops: ticker and intent events,
    scored news for the feedback agent). A topic Kafka does not know is left out."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_brokers, client_id="vigil-status",
                                 request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000),
                                 **client_kwargs(settings))
    except KafkaError as e:
        raise LagUnavailable(f"could not reach Kafka at {settings.kafka_brokers}: {e!r}") from e
    try:
        committed = admin.list_group_offsets(settings.consumer_group)[settings.consumer_group]
        wanted = sorted({*topics, *(tp.topic for tp in committed)})
        counts = partition_counts(admin, wanted)
        partitions = [TopicPartition(topic, p) for topic, n in counts.items() for p in range(n)]
    except KafkaError as e:
        raise LagUnavailable(f"Kafka at {settings.kafka_brokers} did not answer the offset queries: {e!r}") from e
    finally:
        admin.close()
    bounds = asyncio.run(partition_bounds(settings, partitions, timeout_s))
    lag = dict.fromkeys(counts, 0)
    for tp in partitions:
        done = committed.get(tp)
        lag[tp.topic] += partition_lag(None if done is None else done.offset, *bounds[tp])
    return lag


def partition_lag(committed: int | None, start: int, end: int) -> int:
    """Messages of a partition the group has still to read: from its commit (None or negative: it
    never committed), or from ``start``, the oldest offset Kafka still holds, where the group has
    none or retention deleted past it. The workers resume there (auto_offset_reset "earliest"):
    what retention deleted will never be read, and counting it would overstate the lag."""
    return max(0, end - max(start, committed if committed is not None else start))


async def partition_bounds(settings: VigilSettings, partitions: Sequence[TopicPartition], timeout_s: float,
                           client_id: str = "vigil-status") -> dict[TopicPartition, tuple[int, int]]:
    """Each partition's (start, end). The end: a consumer outside any group fetches from the end,
    at most one record batch per partition, until every partition has answered. The start: a
    ListOffsets for the earliest offset (which Tansu answers right; its trouble is the latest)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, client_id=client_id,
                                enable_auto_commit=False, fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
                                max_partition_fetch_bytes=1,  # the broker still sends one whole batch
                                request_timeout_ms=int(timeout_s * 1000), **client_kwargs(settings))
    asked = {FetchPartition(tp.topic, tp.partition): tp for tp in partitions}  # aiokafka's own type
    try:
        await consumer.start()
        consumer.assign(list(asked))
        ends = await fetched_ends(consumer, list(asked), timeout_s)
        starts = await consumer.beginning_offsets(list(asked))
    except (AIOKafkaError, EndsUnavailable) as e:
        raise LagUnavailable(f"Kafka at {settings.kafka_brokers} did not answer the queries for the partitions' "
                             f"starts and ends: {e}") from e
    finally:
        await consumer.stop()
    return {tp: (starts[ours], ends[ours]) for ours, tp in asked.items()}
