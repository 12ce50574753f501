"""Label candidates on the real broker land in the partition a selector's history says they do: after
a rebalance a worker takes the queue items of its own partitions as its history, telling them by
``candidate_partition`` of their text's fingerprint, so that must be where the producer put them."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.audit_under_load import letters
from feedback.agent import FeedbackProcessor, candidate_partition
from feedback.contracts import LabelCandidate, SelectionReason
from feedback.drift import DriftMonitor
from feedback.selection import TASK_OF_KIND, Selector, fingerprint, policy_from_settings, to_request
from streams.app import worker_app
from streams.contracts import NewsItem, SupportMessage
from streams.metrics import Metrics
from streams.pii import mask_pii
from streams.settings import VigilSettings
from streams.watchdog import Watchdogs
from tests.fixtures.alerting import scored

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PARTITIONS = 4


async def _all_records(bootstrap: str, topic: str, wanted: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every record on ``topic``, once ``wanted`` arrived."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: list[tuple[int, bytes, bytes]] = []
        deadline = asyncio.get_running_loop().time() + 30
        while len(got) < wanted and asyncio.get_running_loop().time() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                got += [(tp.partition, r.key, r.value) for r in records]
        return got
    finally:
        await consumer.stop()


def test_candidates_land_in_the_partition_their_queue_items_are_counted_for(kafka_broker, new_topic, tmp_path: Path):
    topic = new_topic(partitions=PARTITIONS)
    settings = VigilSettings(data_dir=tmp_path)
    news = [scored(NewsItem(id=f"n-{i}", source="wire", headline=f"$VGLX headline {letters(i)} of the day",
                            published_at=T0 + timedelta(seconds=i)), "negative", ["negative", "neutral", "positive"])
            for i in range(30)]
    # Support text is masked on the scored topic already, as the scoring agent publishes it.
    support = [scored(SupportMessage(id=f"s-{i}", channel="chat", customer_id="c-1", created_at=T0,
                                     text=mask_pii(f"card {letters(i)} lost, mail me at jo{i}@example.com").text),
                      "lost_or_stolen_card", ["lost_or_stolen_card", "card_arrival"])
               for i in range(30)]
    candidates = [LabelCandidate(message=m) for m in news + support]

    async def propose() -> None:
        app = worker_app(settings, kafka_broker.bootstrap)
        executor = ThreadPoolExecutor(1)
        processor = FeedbackProcessor(
            selector=Selector(policy_from_settings(settings)), drift=DriftMonitor(),
            candidates_topic=app.topic(topic, key_type=bytes, value_type=bytes), requests_topic=None,
            model_events_topic=None, store=None, feedback=None, metrics=Metrics(), io_executor=executor,
            retry_max_s=1.0, watchdogs=Watchdogs(60, started_at=time.monotonic()), warm_start=0,
        )
        await app.producer.start()
        try:
            await processor.propose(candidates)
        finally:
            await app.producer.stop()
            executor.shutdown()

    asyncio.run(propose())
    records = asyncio.run(_all_records(kafka_broker.bootstrap, topic, len(candidates)))
    assert len(records) == len(candidates)
    landed = {LabelCandidate.model_validate_json(value).message.id: partition for partition, _, value in records}
    # The queue holds the request's text; its fingerprint tells the partition.
    counted = {
        c.message.id: candidate_partition(fingerprint(to_request(c.message, TASK_OF_KIND[c.message.kind], (SelectionReason.uncertain,), T0).text),
                                          PARTITIONS)
        for c in candidates
    }
    assert landed == counted
    assert len(set(landed.values())) == PARTITIONS  # the texts spread: the test tells partitions apart
