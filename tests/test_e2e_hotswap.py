"""Hot swap end to end: a real worker process (faust) on the Tansu broker with chdb and the tiny real
model; a second version is promoted while news streams in. Every message is scored and stored
exactly once, and the versions on the stream go from v1 to v2 and never back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feedback.contracts import ModelEvent, ModelEventKind
from feedback.store import FeedbackStore
from models.registry import ModelRegistry
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.replay import OutgoingMessage, replay
from streams.samples import news_json
from streams.settings import VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import Topic, stack_env, use_stack
from tests.fixtures.models import copy_version

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path, tiny_registry: Path, kafka_broker, monkeypatch):
    # one partition: the scored topic is in consumption order
    env = stack_env(tmp_path, kafka_broker.bootstrap, partitions=1, VIGIL_BATCH_MAX="16",
                    VIGIL_BATCH_WITHIN_S="0.1", VIGIL_MODEL_POLL_INTERVAL_S="0.5", VIGIL_WORKER_ID="hs-w0")
    settings = use_stack(env, monkeypatch, tiny_registry)
    worker = WorkerProcess(kafka_broker.bootstrap, tmp_path / "worker.log", env)
    yield settings, worker
    worker.stop(timeout_s=10)


def _news(i: int) -> OutgoingMessage:
    id_ = f"hs-{i}"
    return OutgoingMessage.raw(Kind.news, id_, news_json(id=id_, headline=f"Acme Corp quarterly update number {i}"))


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
    v2 = copy_version(registry, "sentiment", registry.resolve("sentiment", "champion")).version
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
    with open_store(settings) as store:
        stored = store.fetch_scored(Kind.news, ids)
        stored_events = FeedbackStore(store).fetch_model_events("sentiment")
    assert len(stored) == 360 and {m.id: m.model_version for m in stored} == {m["id"]: m["model_version"] for m in on_topic}

    (swap,) = [ModelEvent.model_validate(e) for e in events if e["kind"] == "swapped"]
    assert (swap.task, swap.model_version) == ("sentiment", v2) and swap.detail == f"hs-w0 swapped v1 -> {v2}"
    # The worker's start too (what ends a refusal of the version it starts on, in `vigil status`).
    started = {e["task"]: e["detail"] for e in events if e["kind"] == "started"}
    assert started == {"sentiment": "hs-w0 started on v1", "triage": "hs-w0 started on v1"}
    assert [(e.kind, e.model_version) for e in stored_events] == [
        (ModelEventKind.started, "v1"), (ModelEventKind.swapped, v2)]
