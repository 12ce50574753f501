"""End to end on the real parts: Tansu broker, a worker process (faust), the tiny real model, chdb.

Nothing here reaches into the worker: messages go in through Kafka, and what came out is read
from the scored/dead-letter topics and, once the worker has stopped, from ClickHouse.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from streams.clickhouse import open_store
from streams.contracts import DeadLetterReason, Kind
from streams.follow import Tracker, following, wait_for
from streams.replay import OutgoingMessage, bundled_news, bundled_support, interleave, replay
from streams.samples import duplicate_id_pair, hostile_samples, news_json, valid_exotic_texts
from streams.settings import VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import assert_exactly_once, copies, stack_env, stored_id_counts, use_stack

pytestmark = pytest.mark.slow


@pytest.fixture(params=["chdb", "server"])
def stack(request, tmp_path: Path, tiny_registry: Path, kafka_broker, monkeypatch):
    """Settings for one isolated run: own topics, consumer group and data dir on the shared broker;
    ClickHouse embedded (chdb) or Debian's 18.16 server over the native protocol."""
    url = request.getfixturevalue("clickhouse_server").up() if request.param == "server" else None
    env = stack_env(tmp_path, kafka_broker.bootstrap, url, partitions=3, VIGIL_BATCH_MAX="64")
    settings = use_stack(env, monkeypatch, tiny_registry)
    worker = WorkerProcess(kafka_broker.bootstrap, tmp_path / "worker.log", env)
    yield settings, worker
    worker.stop(timeout_s=10)


def _real_messages(settings: VigilSettings, n: int) -> list[OutgoingMessage]:
    news = (OutgoingMessage.of(Kind.news, m) for m in bundled_news(settings.bundled_data_dir))
    support = (OutgoingMessage.of(Kind.support, m) for m in bundled_support(settings.bundled_data_dir))
    return list(itertools.islice(interleave(news, support, ratio=(2, 1)), n))


async def _run(settings: VigilSettings, messages: list[OutgoingMessage], expected: int, during=None) -> Tracker:
    tracker = Tracker()
    async with following(settings, settings.kafka_brokers, tracker, from_start=True):
        await replay(settings.kafka_brokers, settings.raw_topics, messages, rate_per_s=0)
        if during is not None:
            await during(tracker)
        finished = await wait_for(tracker, expected, timeout_s=240)
    assert finished, f"only {tracker.done} of {expected} messages came out of the worker"
    return tracker


def test_valid_messages_land_once_and_every_bad_one_is_refused_with_its_reason(stack):
    settings, worker = stack
    real = _real_messages(settings, 240)
    exotic = [
        OutgoingMessage.raw(Kind.news, f"exotic-{i}", news_json(id=f"exotic-{i}", headline=text))
        for i, text in enumerate(valid_exotic_texts())
    ]
    bad, expected_reasons = [], Counter()
    for kind in Kind:
        for i, sample in enumerate(hostile_samples(kind, f"e2e-{kind}", settings.max_message_bytes)):
            bad.append(OutgoingMessage.raw(kind, f"bad-{kind}-{i}", sample.raw))
            expected_reasons[sample.reason] += 1
        first, second = duplicate_id_pair(kind, f"e2e-{kind}")
        bad += [OutgoingMessage.raw(kind, f"dup-{kind}", first), OutgoingMessage.raw(kind, f"dup-{kind}", second)]
        expected_reasons[DeadLetterReason.duplicate_id] += 1
    # The first of each duplicate pair is valid and must be stored.
    valid_ids = {(m.kind.value, m.key.decode()) for m in real + exotic} | {(k.value, f"e2e-{k}-dup") for k in Kind}

    worker.start()
    messages = real + exotic + bad
    tracker = asyncio.run(_run(settings, messages, expected=len(valid_ids) + sum(expected_reasons.values())))
    assert worker.stop() == 0

    assert len(tracker.scored) == len(valid_ids)
    assert_exactly_once(settings, {f'{kind}:{id_}' for kind, id_ in valid_ids})
    with open_store(settings) as store:
        letters = store.fetch_dead_letters(settings.topic_news) + store.fetch_dead_letters(settings.topic_support)
        summary = store.summary()
    assert Counter(d.reason for d in letters) == expected_reasons
    sent_raw = {(hashlib.sha256(m.value or b"").hexdigest(), len(m.value or b"")) for m in bad}
    assert {(d.raw_sha256, d.raw_bytes) for d in letters} <= sent_raw, "a dead letter does not name the original bytes"
    assert all(d.detail for d in letters)
    labels = {row.kind: set() for row in summary.by_label}
    for row in summary.by_label:
        labels[row.kind].add(row.label)
    assert labels["news"] <= {"negative", "neutral", "positive"}
    assert summary.total_rows == len(valid_ids)


@pytest.mark.parametrize("stack", ["chdb"], indirect=True)
def test_sigkill_mid_stream_loses_nothing_and_shows_each_message_once(stack):
    """What a crash replays (everything not committed yet) comes out again on the scored topic and
    is stored again until a merge collapses it: at least once on the topics, once under FINAL."""
    settings, worker = stack
    real = _real_messages(settings, 900)
    valid_ids = {(m.kind.value, m.key.decode()) for m in real}

    async def kill_when_a_third_is_scored(tracker: Tracker) -> None:
        while len(tracker.scored) < len(real) // 3:
            await asyncio.sleep(0.05)
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        assert len(tracker.scored) < len(real), "the worker finished before it could be killed"
        worker.start()

    worker.start()
    tracker = asyncio.run(_run(settings, real, expected=len(valid_ids), during=kill_when_a_third_is_scored))
    assert worker.stop() == 0
    assert_exactly_once(settings, {f"{kind}:{id_}" for kind, id_ in valid_ids})
    print(f"scored topic: {copies(tracker.scored)}; stored rows: {copies(stored_id_counts(settings, final=False))}")

