"""A broken model version must never turn valid messages into dead letters, nor stop the stream
when a working version is at hand. Real worker processes (faust, Tansu, chdb) and real tiny models;
"broken" is a sentiment version whose classifier weights are NaN, so every score it makes is
refused as non-finite.

- A worker pinned to the broken version does not start: it exits non-zero with the reason.
- A running worker does not hot swap to a broken champion: it refuses it and keeps scoring.
- A worker started while the broken version is the champion falls back to the champion before it.
Nothing reaches the dead-letter topic, and every message is scored once, by the working version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from feedback.contracts import ModelEventKind
from feedback.store import FeedbackStore
from models.registry import ModelRegistry
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.replay import OutgoingMessage, replay
from streams.samples import news_json
from streams.settings import VigilSettings
from streams.status import model_status
from streams.worker import WorkerProcess
from tests.e2e_stack import Topic, assert_exactly_once, free_port, metric_total, stack_env, use_stack
from tests.fixtures.models import break_classifier, copy_version

pytestmark = pytest.mark.slow


def _news(ids: range) -> list[OutgoingMessage]:
    return [OutgoingMessage.raw(Kind.news, f"bm-{i}", news_json(id=f"bm-{i}", headline=f"Acme Corp update number {i}"))
            for i in ids]


def _exit_code(worker: WorkerProcess, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while worker.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    return None if worker.alive() else worker.proc.returncode


async def _send_and_score(settings: VigilSettings, messages: list[OutgoingMessage], scored_in_all: int,
                          refusals_in_all: int) -> tuple[list, list, list]:
    """Send ``messages``; wait until the scored topic holds ``scored_in_all`` and the model events
    topic ``refusals_in_all`` champion refusals; then the scored, dead-letter and refusal records."""
    async with Topic(settings, settings.topic_scored) as scored, Topic(settings, settings.topic_dlq) as dead, \
            Topic(settings, settings.topic_model_events) as events:
        def refusals(values: list) -> list:
            return [e for e in values if e["kind"] == ModelEventKind.champion_refused.value]

        assert await events.until(lambda v: len(refusals(v)) >= refusals_in_all, 120), "no champion_refused event"
        await replay(settings.kafka_brokers, settings.raw_topics, messages)
        assert await scored.until(lambda v: len(v) >= scored_in_all, 180), f"only {len(scored.values)} scored"
        await scored.until(lambda v: False, 2)  # a double scoring would arrive now
        await dead.until(lambda v: False, 1)
        return scored.values, dead.values, refusals(events.values)


def test_a_broken_version_never_scores_and_never_dead_letters_valid_messages(
    tmp_path: Path, tiny_registry: Path, kafka_broker, monkeypatch, caplog
) -> None:
    env = stack_env(tmp_path, kafka_broker.bootstrap, partitions=1, VIGIL_INFERENCE_PRECISION="fp32",
                    VIGIL_MODEL_POLL_INTERVAL_S="0.5")
    settings = use_stack(env, monkeypatch, tiny_registry)
    registry = ModelRegistry(settings.registry_dir)
    good = registry.champion("sentiment")
    broken = copy_version(registry, "sentiment", registry.resolve("sentiment", good)).version
    break_classifier(registry.resolve("sentiment", broken))
    first, second, third = _news(range(20)), _news(range(20, 40)), _news(range(40, 60))
    asyncio.run(replay(settings.kafka_brokers, settings.raw_topics, first))

    # Pinned: the worker refuses to start on it, before it reads anything.
    pinned = WorkerProcess(kafka_broker.bootstrap, tmp_path / "pinned.log", {**env, "VIGIL_SENTIMENT_MODEL": broken})
    pinned.start()
    try:
        code = _exit_code(pinned, timeout_s=180)
    finally:
        pinned.stop(timeout_s=10)
    assert code not in (None, 0), f"the worker pinned to the broken version did not stop by itself (exit {code})"
    assert f"{broken} cannot score a plain control text" in (tmp_path / "pinned.log").read_text()
    # `vigil up` would restart it later, and says why it stopped where the operator looks.
    with caplog.at_level(logging.ERROR, logger="streams.worker"):
        assert not pinned.restart_if_dead()
    assert f"{broken} cannot score a plain control text" in caplog.text
    assert "pinned by VIGIL_SENTIMENT_MODEL" in caplog.text

    # Promoted while a worker runs on the good champion: refused, and the stream goes on.
    running = WorkerProcess(kafka_broker.bootstrap, tmp_path / "running.log", env)
    running.start()
    try:
        asyncio.run(_send_and_score(settings, [], len(first), 0))
        registry.promote("sentiment", broken)
        asyncio.run(_send_and_score(settings, second, len(first) + len(second), 1))
    finally:
        assert running.stop() == 0

    # Started while it is the champion: falls back to the champion before it, and says so.
    port = free_port()
    restarted = WorkerProcess(kafka_broker.bootstrap, tmp_path / "restarted.log", env, ("--metrics-port", str(port)))
    restarted.start()
    try:
        scored, dead, refusals = asyncio.run(_send_and_score(settings, third, 60, 2))
        assert metric_total(port, "vigil_model_behind_champion") == 1
    finally:
        assert restarted.stop() == 0
    assert f"scoring with {good}, not the champion {broken}" in (tmp_path / "restarted.log").read_text()

    assert dead == []
    messages = first + second + third
    assert sorted(m["id"] for m in scored) == sorted(m.key.decode() for m in messages)
    assert {m["model_version"] for m in scored} == {good}
    assert_exactly_once(settings, {f"news:{m.key.decode()}" for m in messages})
    assert [(e["model_version"], "at start" in e["detail"]) for e in refusals] == [(broken, False), (broken, True)]
    with open_store(settings) as store:
        stored = FeedbackStore(store).fetch_model_events("sentiment")
    # Each worker's start on the version it scores with, around the refusals.
    assert [(e.kind, e.model_version) for e in stored] == [
        (ModelEventKind.started, good), (ModelEventKind.champion_refused, broken),
        (ModelEventKind.champion_refused, broken), (ModelEventKind.started, good)]
    # Starting on the fallback ends no refusal: `vigil status` still reports both.
    assert model_status("sentiment", broken, None, stored).refusals == [e.detail for e in stored[1:3]]
