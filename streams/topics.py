"""Creating Vigil's topics: idempotent, and done only once the broker's metadata shows them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


class TopicSetupError(RuntimeError):
    """Vigil's topics could not be created or did not appear in the broker's metadata."""


def partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partitions of each of ``names`` that Kafka knows (the others are left out)."""
    counts: dict[str, int] = {}
    for topic in admin.describe_topics(names):
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            counts[topic["name"]] = len(topic["partitions"])
    return counts


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    **admin_kwargs: Any,
) -> dict[str, int]:
    """Create the topics that do not exist yet; return every topic's partition count.

    ``admin_kwargs`` are the security settings (``streams.kafka_config.client_kwargs``). A topic
    that already exists is kept as it is, even with another partition count (logged): changing
    partitions moves keys between partitions, which is the operator's call.
    """
    wanted = list(dict.fromkeys(names))
    deadline = time.monotonic() + timeout_s
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="vigil-topics",
            request_timeout_ms=int(min(timeout_s, 30.0) * 1000),
            **admin_kwargs,
        )
    except KafkaError as e:
        raise TopicSetupError(
            f"could not reach Kafka at {bootstrap} to create topics ({type(e).__name__}: {e}); "
            "check VIGIL_KAFKA_BROKERS and the security settings"
        ) from e
    try:
        existing = set(admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if missing:
            log.info("creating topics %s with %d partitions", missing, partitions)
            new = [NewTopic(n, partitions, replication_factor) for n in missing]
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another process created them meanwhile
            except KafkaError as e:
                raise TopicSetupError(f"creating topics {missing} on {bootstrap} failed: {e}") from e
        while True:
            counts = partition_counts(admin, wanted)
            absent = [n for n in wanted if n not in counts]
            if not absent:
                break
            if time.monotonic() > deadline:
                raise TopicSetupError(
                    f"topics {absent} did not appear in {bootstrap}'s metadata within {timeout_s:.0f}s"
                )
            time.sleep(0.1)
    finally:
        admin.close()
    for name, n in counts.items():
        if n != partitions:
            log.warning("topic %s has %d partitions, not the %d configured; keeping it", name, n, partitions)
    return counts
