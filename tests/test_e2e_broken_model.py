"""A model that fails on every text must not turn valid messages into dead letters. A real worker
process (faust, Tansu, chdb) runs a sentiment version whose classifier weights are NaN, so the
engine refuses every score as non-finite: the worker stops with the reason and exits non-zero,
nothing reaches the dead-letter topic, and a worker on the working champion then scores every
message once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.registry import ModelRegistry
from streams.contracts import Kind
from streams.replay import OutgoingMessage, replay
from streams.samples import news_json
from streams.settings import VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import Topic, assert_exactly_once, stack_env, use_stack
from tests.fixtures.models import copy_version

pytestmark = pytest.mark.slow


def _break_classifier(version_dir: Path) -> None:
    path = version_dir / "model.safetensors"
    tensors = load_file(path)
    head = [name for name in tensors if "classifier" in name]
    assert head, f"no classifier weights in {sorted(tensors)}"
    save_file({n: torch.full_like(t, float("nan")) if n in head else t for n, t in tensors.items()}, str(path))


def _news(i: int) -> OutgoingMessage:
    id_ = f"bm-{i}"
    return OutgoingMessage.raw(Kind.news, id_, news_json(id=id_, headline=f"Acme Corp quarterly update number {i}"))


def _exit_code(worker: WorkerProcess, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while worker.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    return None if worker.alive() else worker.proc.returncode


async def _scored_and_dead(settings: VigilSettings, n: int, timeout_s: float) -> tuple[list, list]:
    async with Topic(settings, settings.topic_scored) as scored, Topic(settings, settings.topic_dlq) as dead:
        await scored.until(lambda v: len(v) >= n, timeout_s)
        await scored.until(lambda v: False, 2)  # a double scoring would arrive now
        await dead.until(lambda v: False, 1)
        return scored.values, dead.values


def test_a_model_that_fails_on_everything_stops_the_worker_and_dead_letters_nothing(
    tmp_path: Path, tiny_registry: Path, kafka_broker, monkeypatch
) -> None:
    env = stack_env(tmp_path, kafka_broker.bootstrap, partitions=1, VIGIL_INFERENCE_PRECISION="fp32")
    settings = use_stack(env, monkeypatch, tiny_registry)
    registry = ModelRegistry(settings.registry_dir)
    broken = copy_version(registry, "sentiment", registry.resolve("sentiment", "champion")).version
    _break_classifier(registry.resolve("sentiment", broken))
    messages = [_news(i) for i in range(20)]
    asyncio.run(replay(settings.kafka_brokers, settings.raw_topics, messages))

    log = tmp_path / "broken.log"
    worker = WorkerProcess(kafka_broker.bootstrap, log, {**env, "VIGIL_SENTIMENT_MODEL": broken})
    worker.start()
    try:
        code = _exit_code(worker, timeout_s=180)
    finally:
        worker.stop(timeout_s=10)
    assert code not in (None, 0), f"the worker on the broken model did not stop by itself (exit {code})"
    assert "fails on a plain control text as well" in log.read_text()

    fixed = WorkerProcess(kafka_broker.bootstrap, tmp_path / "fixed.log", env)  # the working champion
    fixed.start()
    try:
        scored, dead = asyncio.run(_scored_and_dead(settings, len(messages), timeout_s=180))
    finally:
        assert fixed.stop() == 0
    assert dead == []
    assert sorted(m["id"] for m in scored) == sorted(m.key.decode() for m in messages)
    assert {m["model_version"] for m in scored} == {registry.resolve("sentiment", "champion").name}
    assert_exactly_once(settings, {f"news:{m.key.decode()}" for m in messages})
