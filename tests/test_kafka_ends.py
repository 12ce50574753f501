"""Partition ends from Fetch answers (streams/kafka_ends.py), on the embedded broker, whose
ListOffsets answer for the latest offset is the first offset of the last record batch plus one."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.follow import Tracker, following, wait_for
from streams.kafka_ends import fetched_ends
from streams.settings import VigilSettings
from tests.fixtures.alerting import scored_news
from tests.fixtures.broker import produce_one_batch

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_the_ends_count_every_message_of_the_last_batch(kafka_broker, new_topic) -> None:
    topic = new_topic(partitions=2)

    async def run() -> dict[TopicPartition, int]:
        await produce_one_batch(kafka_broker.bootstrap, topic, [f"m{i}".encode() for i in range(100)])
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=100)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
            consumer.assign(tps)
            return await fetched_ends(consumer, tps, timeout_s=30)  # ListOffsets said 1 for partition 0
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == {TopicPartition(topic, 0): 100, TopicPartition(topic, 1): 0}  # 1 is empty


def test_following_from_the_end_skips_what_was_scored_before(kafka_broker, new_topic, tmp_path: Path) -> None:
    settings = VigilSettings(data_dir=tmp_path, kafka_brokers=kafka_broker.bootstrap,
                             topic_scored=new_topic(partitions=1), topic_dlq=new_topic(partitions=1))

    async def run() -> dict[str, int]:
        before = [scored_news(f"old-{i}", NOW, "neutral").model_dump_json().encode() for i in range(50)]
        await produce_one_batch(settings.kafka_brokers, settings.topic_scored, before)
        tracker = Tracker()
        async with following(settings, settings.kafka_brokers, tracker):
            await produce_one_batch(settings.kafka_brokers, settings.topic_scored,
                                    [scored_news("new", NOW, "neutral").model_dump_json().encode()])
            assert await wait_for(tracker, 1, timeout_s=30)
            await asyncio.sleep(1)  # time for anything else to come in
        return dict(tracker.scored)

    assert asyncio.run(run()) == {"news:new": 1}


def test_a_follower_stopped_by_a_record_it_cannot_read_raises_at_once_and_when_its_block_ends(
        kafka_broker, new_topic, tmp_path: Path) -> None:
    """A waiter used to go on polling a tracker that no longer moved until its timeout (the demo's
    600 s), and then blamed the worker."""
    settings = VigilSettings(data_dir=tmp_path, kafka_brokers=kafka_broker.bootstrap,
                             topic_scored=new_topic(partitions=1), topic_dlq=new_topic(partitions=1))

    async def run() -> None:
        tracker = Tracker()
        async with following(settings, settings.kafka_brokers, tracker):
            await produce_one_batch(settings.kafka_brokers, settings.topic_scored, [b"not a scored message"])
            with pytest.raises(json.JSONDecodeError):
                await wait_for(tracker, 1, timeout_s=120)
            with pytest.raises(json.JSONDecodeError):
                tracker.raise_if_stopped()

    with pytest.raises(json.JSONDecodeError):
        asyncio.run(run())
