"""The feedback loop closed end to end on the real parts: `vigil up` (the supervisor and one faust
worker on the Tansu broker, chdb, the tiny real model) with the background retrain job on.

Financial tweets stream in as news and v1 scores them. A person corrects v1's uncertain mistakes
through the worker's labelling API (POST /api/corrections). Once there are enough, the worker's
retrain job sees the trigger fire and starts a training process: it fine-tunes v1 on them, the gate
promotes the challenger v2, and the worker hot swaps while news keeps streaming in. Then: every
message scored and stored exactly once, the versions on the scored topic go from v1 to v2 and never
back, everything sent after the swap is scored by v2, and ClickHouse holds the round's events with
v2's lineage.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from itertools import count
from pathlib import Path

import aiohttp
import pytest

from feedback.auth import TokenBook, tokens_path
from feedback.contracts import ModelEventKind
from feedback.retrain_runner import rounds_path
from feedback.store import FeedbackStore
from models.data import SplitConfig, stratified_split
from models.registry import ModelRegistry
from models.tasks import get_task
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.replay import OutgoingMessage, replay
from streams.samples import news_json
from streams.settings import REPO_ROOT, VigilSettings
from tests.e2e_stack import Topic, assert_exactly_once, free_port, stack_env, until_served, use_stack

pytestmark = pytest.mark.slow

N_TWEETS = 300  # streamed first, scored by v1
N_CORRECTIONS = 60  # of v1's uncertain mistakes among them: 45 to train on, the newest 15 to judge
UNCERTAIN = 0.9  # as VIGIL_ANNOTATOR_CONFIDENT: below it, correcting the champion is no evidence against you
AFTER_SWAP = 60


def _tweets() -> list[tuple[str, str]]:
    """(text, true label) of financial tweets from the TRAINING split: the gold set is the held-out split."""
    rows = get_task("sentiment").load(REPO_ROOT / "data", ("twitter_financial_news",))
    return [(r.text, r.label) for r in random.Random(5).sample(stratified_split(rows, SplitConfig()).train, N_TWEETS)]


def _news(id_: str, headline: str) -> OutgoingMessage:
    return OutgoingMessage.raw(Kind.news, id_, news_json(id=id_, headline=headline))


@pytest.fixture
def loop_stack(tmp_path: Path, tiny_registry: Path, kafka_broker, monkeypatch):
    env = stack_env(
        tmp_path, kafka_broker.bootstrap, partitions=1,  # one partition: the scored topic is in consumption order
        VIGIL_MODEL_POLL_INTERVAL_S="0.5",
        VIGIL_INFERENCE_PRECISION="fp32",  # plain torch: no export or parity check at start and at the swap
        VIGIL_UI_HOST="127.0.0.1", VIGIL_UI_PORT=str(free_port()),
        VIGIL_RETRAIN_CHECK_INTERVAL_S="1",
        # the trigger: exactly the corrections this test makes (a round on part of them would use them up)
        VIGIL_RETRAIN_MIN_CORRECTIONS=str(N_CORRECTIONS), VIGIL_RETRAIN_ON_DRIFT="false",
        # labels count once they can no longer be undone: a second, not the UI's two minutes
        VIGIL_UI_UNDO_WINDOW_S="1",
        # a small fine-tune (about 10 optimiser steps), judged by the real gate on 160 gold rows
        VIGIL_RETRAIN_EPOCHS="1", VIGIL_RETRAIN_MAX_LENGTH="32", VIGIL_RETRAIN_REPLAY_SIZE="256",
        VIGIL_RETRAIN_LR="1e-4", VIGIL_RETRAIN_HEAD_LR="3e-3", VIGIL_RETRAIN_BATCH_SIZE="32",
        # each correction once: at this LR the default share (45 corrections x3) took the tiny
        # model's gold accuracy 0.63 -> 0.53 and the gate refused it
        VIGIL_RETRAIN_CORRECTIONS_SHARE="0",
        # Ten steps on 45 of the tiny model's own mistakes move its accuracy on 160 gold rows by
        # -4.4 to +2.5 points depending on the retrain seed (measured offline, this round's data),
        # while the held-out corrections go from 0 to 4-6 of 15 right. The gate's thresholds have
        # their own tests (test_feedback_gate.py, test_feedback_retrain.py); here the tolerance lets
        # any seed's challenger through, so the test checks the loop, not a lucky draw.
        VIGIL_GOLD_CAP="160", VIGIL_GATE_MIN_RECENT="10", VIGIL_GATE_MAX_GOLD_DROP="0.05",
        VIGIL_ANNOTATOR_CONFIDENT=str(UNCERTAIN),
    )
    settings = use_stack(env, monkeypatch, tiny_registry)
    token = TokenBook(tokens_path(settings.data_dir)).add("ann")
    up_log = tmp_path / "up.log"
    with up_log.open("wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "streams.cli", "up", "--workers", "1"],
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    yield settings, up, token
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    # shown by pytest when the test failed
    for log in (up_log, settings.data_dir / "logs" / "worker-0.log"):
        if log.exists():
            print(f"--- {log} (tail)", *log.read_text(errors="replace").splitlines()[-80:], sep="\n")


async def _correct(settings: VigilSettings, token: str, corrections: list[dict]) -> None:
    """POST each correction to the worker's labelling API, one after the other (their order decides
    which ones the gate holds out), once the API answers."""
    base = f"http://{settings.ui_host}:{settings.ui_port}"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as http:
        await until_served(http, f"{base}/api/queue", 120)
        for body in corrections:
            async with http.post(f"{base}/api/corrections", json=body) as r:
                assert r.status == 201, (r.status, await r.text())


async def _run(settings: VigilSettings, token: str, tweets: list[tuple[str, str]]):
    truth = {f"tw-{i}": label for i, (_, label) in enumerate(tweets)}
    sent: list[str] = []
    n = count()

    async def send(messages: list[OutgoingMessage], rate: float = 0) -> None:
        await replay(settings.kafka_brokers, settings.raw_topics, messages, rate_per_s=rate)
        sent.extend(m.key.decode() for m in messages)

    async with Topic(settings, settings.topic_scored) as scored, \
            Topic(settings, settings.topic_model_events) as events:
        await send([_news(f"tw-{i}", text) for i, (text, _) in enumerate(tweets)])
        assert await scored.until(lambda v: len(v) >= len(tweets), 240), "the worker never scored the tweets"

        # What a person corrects: v1's uncertain mistakes, labelled right.
        wrong = [m for m in scored.values if m["label"] != truth[m["id"]] and m["confidence"] < UNCERTAIN]
        assert len(wrong) >= N_CORRECTIONS, f"only {len(wrong)} uncertain mistakes to correct"
        corrections = [{"task": "sentiment", "message_id": m["id"], "text": m["text"], "human_label": truth[m["id"]],
                        "model_label": m["label"], "model_version": m["model_version"]}
                       for m in wrong[:N_CORRECTIONS]]
        await _correct(settings, token, corrections)

        # News keeps coming while the retrain job trains, gates and promotes, and the worker swaps.
        swapped = asyncio.create_task(events.until(lambda v: any(e["kind"] == "swapped" for e in v), 480))
        while not swapped.done():
            await send([_news(f"mid-{next(n)}", f"Acme Corp trading update number {i}") for i in range(5)])
            await asyncio.sleep(0.5)
        assert swapped.result(), "no swapped event: the loop did not close (see the worker log below)"
        after = [_news(f"after-{i}", f"Bolt Inc guidance update number {i}") for i in range(AFTER_SWAP)]
        await send(after)
        assert await scored.until(lambda v: len(v) >= len(sent), 240), f"only {len(scored.values)} of {len(sent)} scored"
        await scored.until(lambda v: False, 2)  # anything extra (a double scoring) would arrive now
        return sent, corrections, scored.values, events.values


def test_corrections_retrain_promote_and_the_worker_scores_with_the_new_version_losing_nothing(loop_stack):
    settings, up, token = loop_stack
    tweets = _tweets()
    sent, corrections, on_topic, events = asyncio.run(_run(settings, token, tweets))
    up.send_signal(signal.SIGTERM)
    assert up.wait(90) == 0, "`vigil up` did not stop cleanly"

    # The challenger: fine-tuned from v1 on the corrections, promoted by the gate.
    registry = ModelRegistry(settings.registry_dir)
    assert registry.champion("sentiment") == "v2" and registry.champion("triage") == "v1"
    card = registry.card("sentiment", "v2")
    assert card.parent_version == "v1" and card.training_config["fine_tuned_from"] == "v1"
    assert card.training_config["corrections"] == N_CORRECTIONS * 3 // 4

    # Exactly once on the scored topic; by offset v1... then v2..., never back; after the swap all v2.
    ids = [m["id"] for m in on_topic]
    assert len(ids) == len(set(ids)) and set(ids) == set(sent)
    versions = [m["model_version"] for m in sorted(on_topic, key=lambda m: m["src_offset"])]
    switch = versions.index("v2")
    assert switch >= N_TWEETS and set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
    assert {m["model_version"] for m in on_topic if m["id"].startswith("after-")} == {"v2"}

    # Exactly once in ClickHouse, with the version the topic carried; the loop's events and corrections.
    assert_exactly_once(settings, {f"news:{i}" for i in sent})
    with open_store(settings) as store:
        stored = {m.id: m.model_version for m in store.fetch_scored(Kind.news, sent)}
        feedback = FeedbackStore(store)
        # drift events may come and go with this odd stream; the loop's own events are what counts here
        stored_events = [e for e in feedback.fetch_model_events("sentiment") if e.kind is not ModelEventKind.drift]
        stored_corrections = feedback.fetch_corrections("sentiment")
    assert stored == {m["id"]: m["model_version"] for m in on_topic}
    assert {c.message_id for c in stored_corrections} == {c["message_id"] for c in corrections}
    assert [(e.kind, e.model_version) for e in stored_events] == [
        (ModelEventKind.started, "v1"), (ModelEventKind.retrain_started, "v1"), (ModelEventKind.promoted, "v2"),
        (ModelEventKind.swapped, "v2")]
    promoted = stored_events[2]
    assert "v2 (from v1) promoted" in promoted.detail
    assert promoted.figures["recent_challenger"] > promoted.figures["recent_champion"]
    assert promoted.figures["train_items"] == N_CORRECTIONS * 3 // 4
    # The same events went to the model-events topic (the training process published its own; the
    # worker's start is there for triage too).
    assert [(e["kind"], e["model_version"]) for e in events if e["kind"] != "drift" and e["task"] == "sentiment"] == [
        (e.kind.value, e.model_version) for e in stored_events]

    # Every round of the background job was recorded: skips until the corrections were in, one
    # promotion, no failure.
    rounds = [json.loads(line) for line in rounds_path(settings).read_text().splitlines()]
    sentiment = [r["outcome"] for r in rounds if r["task"] == "sentiment"]
    assert sentiment.count("promoted") == 1 and set(sentiment) <= {"skipped", "promoted"}
    assert {r["outcome"] for r in rounds if r["task"] == "triage"} == {"skipped"}
    (promotion,) = [r for r in rounds if r["outcome"] == "promoted"]
    assert (promotion["champion"], promotion["challenger"]) == ("v1", "v2")
