"""Hot swap end to end: a real worker process (faust) on the Tansu broker with chdb and the tiny real
model; a second version is promoted while news streams in. Every message is scored and stored
exactly once, and the versions on the stream go from v1 to v2 and never back."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path
from typing import Self

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from feedback.contracts import ModelEvent, ModelEventKind
from feedback.store import FeedbackStore
from models.registry import ModelRegistry
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.replay import OutgoingMessage, replay
from streams.runtime import all_topics
from streams.samples import news_json
from streams.settings import VigilSettings
from streams.topics import ensure_topics
from streams.worker import WorkerProcess

pytestmark = pytest.mark.slow


def _copy_as_new_version(registry: ModelRegistry, task: str) -> str:
    """A second real version: the champion's files under the next version number."""
    src = registry.resolve(task, "champion")
    fields = registry.card(task).model_dump(exclude={"task", "version", "parent_version", "created_at"})

    def write(target: Path) -> None:
        for f in src.iterdir():
            if f.name != "card.json":
                shutil.copy2(f, target / f.name)

    return registry.add(task, write, fields).version


@pytest.fixture
def stack(tmp_path: Path, tiny_registry: Path, kafka_broker, monkeypatch):
    run = uuid.uuid4().hex[:8]
    env = {
        "VIGIL_DATA_DIR": str(tmp_path / "vigil"),
        "VIGIL_KAFKA_BROKERS": kafka_broker.bootstrap,
        "VIGIL_TOPIC_NEWS": f"h{run}.news",
        "VIGIL_TOPIC_SUPPORT": f"h{run}.support",
        "VIGIL_TOPIC_SCORED": f"h{run}.scored",
        "VIGIL_TOPIC_DLQ": f"h{run}.dlq",
        "VIGIL_TOPIC_ALERTS": f"h{run}.alerts",
        "VIGIL_TOPIC_MODEL_EVENTS": f"h{run}.model-events",
        "VIGIL_TOPIC_PARTITIONS": "1",  # one partition: the scored topic is in consumption order
        "VIGIL_CONSUMER_GROUP": f"g{run}",
        "VIGIL_BATCH_MAX": "16",
        "VIGIL_BATCH_WITHIN_S": "0.1",
        "VIGIL_MAX_LENGTH": "32",
        "VIGIL_CPU_THREADS": "1",
        "VIGIL_MODEL_POLL_INTERVAL_S": "0.5",
        "VIGIL_KAFKA_SESSION_TIMEOUT_S": "6",
        "VIGIL_KAFKA_REBALANCE_TIMEOUT_S": "8",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = VigilSettings()
    shutil.copytree(tiny_registry, settings.registry_dir)
    ensure_topics(kafka_broker.bootstrap, all_topics(settings), settings.topic_partitions)
    worker = WorkerProcess(kafka_broker.bootstrap, tmp_path / "worker.log", env)
    yield settings, worker
    worker.stop(timeout_s=10)


def _news(i: int) -> OutgoingMessage:
    id_ = f"hs-{i}"
    return OutgoingMessage.raw(Kind.news, id_, news_json(id=id_, headline=f"Acme Corp quarterly update number {i}"))


class Topic:
    """Every record of one single-partition topic, from the start, duplicates included."""

    def __init__(self, settings: VigilSettings, name: str) -> None:
        self.settings, self.name, self.values = settings, name, []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Self:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_brokers, enable_auto_commit=False)
        await self._consumer.start()
        tp = TopicPartition(self.name, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_beginning(tp)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def until(self, done, timeout_s: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not done(self.values):
            if asyncio.get_running_loop().time() > deadline:
                return False
            for records in (await self._consumer.getmany(timeout_ms=200)).values():
                self.values += [json.loads(r.value) for r in records]
        return True


async def _run(settings: VigilSettings, registry: ModelRegistry, v2: str):
    first, second, third = range(60), range(60, 300), range(300, 360)
    async with Topic(settings, settings.topic_scored) as scored, \
            Topic(settings, settings.topic_model_events) as events:
        await replay(settings.kafka_brokers, settings.raw_topics, [_news(i) for i in first])
        assert await scored.until(lambda v: len(v) >= len(first), 240), "the worker never scored the first part"
        # Promote while the second part streams in at a pace the worker keeps up with.
        registry.promote("sentiment", v2)
        await replay(settings.kafka_brokers, settings.raw_topics, [_news(i) for i in second], rate_per_s=60)
        assert await events.until(lambda v: any(e["kind"] == "swapped" for e in v), 60), "no swapped event"
        await replay(settings.kafka_brokers, settings.raw_topics, [_news(i) for i in third])
        total = len(first) + len(second) + len(third)
        assert await scored.until(lambda v: len(v) >= total, 240), f"only {len(scored.values)} of {total} scored"
        await scored.until(lambda v: False, 2)  # anything extra (a double scoring) would arrive now
        return scored.values, events.values


def test_promotion_mid_stream_swaps_every_message_once(stack):
    settings, worker = stack
    registry = ModelRegistry(settings.registry_dir)
    v2 = _copy_as_new_version(registry, "sentiment")
    worker.start()
    on_topic, events = asyncio.run(_run(settings, registry, v2))
    assert worker.stop() == 0

    # Exactly once on the scored topic, in offset order, versions v1... then v2... and never back.
    ids = [m["id"] for m in on_topic]
    assert sorted(ids) == sorted(f"hs-{i}" for i in range(360)) and len(ids) == len(set(ids))
    by_offset = sorted(on_topic, key=lambda m: m["src_offset"])
    versions = [m["model_version"] for m in by_offset]
    switch = versions.index(v2)
    assert switch > 0 and set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {v2}
    assert all(v == "v1" for v in versions[:60]) and all(v == v2 for v in versions[300:])

    # Exactly once in ClickHouse (rows are keyed by id AND version: a double scoring would show twice).
    store = open_store(settings)
    try:
        stored = store.fetch_scored(Kind.news, ids)
        stored_events = FeedbackStore(store).fetch_model_events("sentiment")
    finally:
        store.close()
    assert len(stored) == 360 and {m.id: m.model_version for m in stored} == {m["id"]: m["model_version"] for m in on_topic}

    (swap,) = [ModelEvent.model_validate(e) for e in events if e["kind"] == "swapped"]
    assert (swap.task, swap.model_version) == ("sentiment", v2) and f"v1 -> {v2}" in swap.detail
    assert [(e.kind, e.model_version) for e in stored_events] == [(ModelEventKind.swapped, v2)]
