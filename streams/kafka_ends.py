"""Where each partition ends, as a Fetch answer says: its high watermark.

Not ListOffsets: Tansu 0.6.0, the embedded broker, answers a request for a partition's latest
offset with the first offset of its last record batch plus one. There a consumer that seeks to
the end re-reads most of that batch, and 100 messages produced in one batch count as 1 waiting.
The high watermark in a Fetch answer is right on Tansu and on Kafka alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition


class EndsUnavailable(RuntimeError):
    """The broker answered no fetch for some partitions in time."""


async def fetched_ends(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition],
                       timeout_s: float) -> dict[TopicPartition, int]:
    """The ends of ``partitions``, which ``consumer`` has assigned and not fetched yet. It fetches
    (what it reads is dropped: seek afterwards) until every partition has answered once.

    The consumer must hold its fetches a while (``fetch_max_wait_ms`` > 0): Tansu leaves the
    partitions out of its answer to a fetch that may not wait at all."""
    deadline = time.monotonic() + timeout_s
    while waiting := [tp for tp in partitions if consumer.highwater(tp) is None]:
        if time.monotonic() >= deadline:
            raise EndsUnavailable(
                f"the broker gave no end for {len(waiting)} partitions (e.g. {waiting[0].topic}"
                f"[{waiting[0].partition}]) within {timeout_s:g} s"
            )
        await consumer.getmany(*waiting, timeout_ms=100)
    return {tp: consumer.highwater(tp) for tp in partitions}
