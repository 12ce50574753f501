"""How far the workers' consumer group is behind on the raw topics, asked of Kafka itself (the
group's committed offsets against each partition's end)."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError

from streams.kafka_config import admin_kwargs
from streams.settings import VigilSettings
from streams.topics import partition_counts


class LagUnavailable(RuntimeError):
    """Kafka could not be asked (not reachable, or it refused)."""


def group_lag(settings: VigilSettings, topics: Iterable[str], timeout_s: float = 5.0) -> dict[str, int]:
    """Messages not yet committed by ``settings.consumer_group``, per topic: ``topics`` (a
    partition the group never committed counts from its start) and every other topic the group
    has committed on (the workers' internal hops: ticker and intent events, scored news for the
    feedback agent). A topic Kafka does not know is left out."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_brokers, client_id="vigil-status",
                                 request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000),
                                 **admin_kwargs(settings))
    except KafkaError as e:
        raise LagUnavailable(f"could not reach Kafka at {settings.kafka_brokers}: {e!r}") from e
    try:
        committed = admin.list_group_offsets(settings.consumer_group)[settings.consumer_group]
        wanted = sorted({*topics, *(tp.topic for tp in committed)})
        counts = partition_counts(admin, wanted)
        partitions = [TopicPartition(topic, p) for topic, n in counts.items() for p in range(n)]
        ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
    except KafkaError as e:
        raise LagUnavailable(f"Kafka at {settings.kafka_brokers} did not answer the offset queries: {e!r}") from e
    finally:
        admin.close()
    lag = dict.fromkeys(counts, 0)
    for tp in partitions:
        done = committed.get(tp)
        lag[tp.topic] += max(0, ends[tp].offset - (done.offset if done is not None and done.offset >= 0 else 0))
    return lag
