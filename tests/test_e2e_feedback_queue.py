"""The label queue end to end on the real parts: Tansu broker, a worker process (faust) with the
feedback agents, the tiny real model and chdb.

News and support messages go in; the worker scores them, alerts on every support message (every
priority alerts), and the feedback agents select what a person should label. The test works out
from what ClickHouse stored (the model's scores, the alerts) which messages the policy must select
and why, and checks the label-requests topic and the label_queue table against it. Then a second
worker in a new consumer group replays every topic from the start: it takes the queue as its
selector's history, so each queued item is requested again under its item id (a repeat is charged
no budget, and the store merges what it adds), nothing else is, and nothing new appears in the
queue. Thresholds come
from scoring the texts with the same tiny model first, so some messages are uncertain and some are
not whatever the model learned. Last, that worker restarts and a new message comes: its drift
monitors start from the news v1 scored before it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from feedback.contracts import LabelRequest, SelectionReason
from feedback.selection import TASK_OF_KIND, Selector, policy_from_settings
from feedback.store import FeedbackStore
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.replay import OutgoingMessage, replay
from streams.samples import news_json, support_json
from streams.settings import VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import free_port, metric_total, score_all, stack_env, use_stack

pytestmark = pytest.mark.slow

T0 = datetime(2026, 2, 9, 14, 0, tzinfo=UTC)
COMPANIES = ["Acme", "Bolt", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Harbor", "Ionic", "Juniper"]
NEWS_VERBS = ["shares plunge after weak guidance", "beats quarterly estimates and raises outlook"]
SUPPORT_TEXTS = [
    "my card was stolen and someone is using it",
    "I still have not received my new card",
    "why was I charged a fee for a transfer",
    "the top up did not go through",
    "how do I change my PIN",
    "please email me at jane.doe@example.com about the refund on my account",
]
EMAIL = "jane.doe@example.com"


def _texts() -> tuple[list[str], list[str]]:
    return [f"{c} {v}" for c in COMPANIES for v in NEWS_VERBS], SUPPORT_TEXTS


def _median_margin(scorer, texts: list[str]) -> float:
    """A margin threshold between the middle two of these texts' margins: about half are uncertain."""
    margins = sorted(p.margin for p in scorer.score(texts))
    return (margins[len(margins) // 2 - 1] + margins[len(margins) // 2]) / 2


@pytest.fixture
def feedback_stack(tmp_path: Path, tiny_registry: Path, tiny_scorers, kafka_broker, monkeypatch):
    news, support = _texts()
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"triage": {"alert_priorities": ["P1", "P2", "P3", "P4"]}}))
    env = stack_env(
        tmp_path, kafka_broker.bootstrap, partitions=1,
        VIGIL_BATCH_MAX="64",
        VIGIL_MAX_LENGTH="64",  # as tiny_scorers score
        VIGIL_ALERT_RULES_PATH=str(rules),
        VIGIL_TRIAGE_MIN_CONFIDENCE="0",
        VIGIL_FEEDBACK_AUDIT_RATE="0.25",
        # The champion as its own shadow: exercises shadow scoring end to end; it must agree everywhere.
        VIGIL_SHADOW_SENTIMENT_MODEL="v1",
        VIGIL_FEEDBACK_BUDGET_PER_HOUR="10000",
        VIGIL_FEEDBACK_AUDIT_BUDGET_PER_HOUR="10000",
        VIGIL_FEEDBACK_MAX_CLASS_SHARE="1",
        VIGIL_FEEDBACK_SENTIMENT_MARGIN_BELOW=repr(_median_margin(tiny_scorers["sentiment"], news)),
        VIGIL_FEEDBACK_SENTIMENT_ENTROPY_ABOVE="100",
        VIGIL_FEEDBACK_TRIAGE_MARGIN_BELOW=repr(_median_margin(tiny_scorers["triage"], support)),
        VIGIL_FEEDBACK_TRIAGE_ENTROPY_ABOVE="100",
    )
    settings = use_stack(env, monkeypatch, tiny_registry)
    workers: list[WorkerProcess] = []

    def worker(group: str, name: str, *args: str) -> WorkerProcess:
        w = WorkerProcess(
            kafka_broker.bootstrap, tmp_path / f"{name}.log", {**env, "VIGIL_CONSUMER_GROUP": group}, args
        )
        workers.append(w)
        return w

    yield settings, worker
    for w in workers:
        w.stop(timeout_s=10)


def _messages() -> list[OutgoingMessage]:
    news, support = _texts()
    out = []
    for i, text in enumerate(news):
        at = (T0 + timedelta(seconds=20 * i)).isoformat()
        out.append(OutgoingMessage.raw(Kind.news, f"n-{i}", news_json(id=f"n-{i}", published_at=at, headline=text)))
    for i, text in enumerate(support):
        at = (T0 + timedelta(seconds=30 * i)).isoformat()
        out.append(OutgoingMessage.raw(Kind.support, f"s-{i}", support_json(id=f"s-{i}", text=text, created_at=at)))
    return out


async def _requests_until_quiet(settings: VigilSettings, enough, quiet_s: float, timeout_s: float) -> list[LabelRequest]:
    """Label requests on the topic (from the start), once ``enough(records)`` holds and nothing new
    came for ``quiet_s`` (the durable write follows each publish within that), or at the timeout."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic_label_requests, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got: list[LabelRequest] = []
        loop = asyncio.get_running_loop()
        deadline, last_new = loop.time() + timeout_s, loop.time()
        while loop.time() < deadline and not (enough(got) and loop.time() - last_new > quiet_s):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    req = LabelRequest.model_validate_json(r.value)
                    assert r.key.decode() == req.item_id
                    got.append(req)
                    last_new = loop.time()
        return got
    finally:
        await consumer.stop()


def _log_shows(path: Path, line: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if line in path.read_text():
            return True
        time.sleep(0.5)
    return False


def _queue(settings: VigilSettings):
    with open_store(settings) as store:
        fstore = FeedbackStore(store)
        items = {i.request.item_id: i for i in fstore.fetch_items()}
        raw_rows = store.backend.query(f"SELECT count() FROM {store.database}.label_queue")[0][0]
        scored = {
            m.id: m
            for kind in Kind
            for m in store.fetch_scored(kind, [f"{kind.value[0]}-{i}" for i in range(40)])
        }
        alerts = store.fetch_alerts()
        shadow = store.shadow_agreement(Kind.news)
    return items, raw_rows, scored, alerts, shadow


def test_selected_items_reach_the_topic_and_the_queue_with_their_reasons_and_a_replay_adds_none(feedback_stack):
    settings, worker = feedback_stack
    messages = _messages()
    support_ids = {m.key.decode() for m in messages if m.kind is Kind.support}
    metrics_port = free_port()
    first = worker(settings.consumer_group, "worker-1", "--metrics-port", str(metrics_port))
    first.start()
    assert asyncio.run(score_all(settings, messages)), "not every message came out of the worker"
    # Every support message raises a priority alert, so each is requested at least for that.
    on_topic = asyncio.run(_requests_until_quiet(
        settings, lambda got: support_ids <= {r.message_id for r in got}, quiet_s=4, timeout_s=120,
    ))
    # The worker's Prometheus counter agrees with the topic: one increment per request and reason.
    assert metric_total(metrics_port, "vigil_label_requests_total") == sum(len(r.reasons) for r in on_topic)
    candidates = metric_total(metrics_port, "vigil_label_candidates_total")
    assert first.stop() == 0
    items, raw_rows, scored, alerts, shadow = _queue(settings)
    assert len(scored) == len(messages)
    assert shadow == [("v1", "v1", len(messages) - len(support_ids), 0)]

    # What the policy must have selected, and why, from what ClickHouse stored.
    contributors: dict[str, set[str]] = defaultdict(set)
    for a in alerts:
        contributors[a.kind] |= {m.id for m in a.top_messages}
    assert support_ids <= contributors["triage"]
    selector = Selector(policy_from_settings(settings))
    expected = {}
    for m in scored.values():
        task = TASK_OF_KIND[m.kind]
        reasons = selector.reasons(m, alert=m.id in contributors[task])
        if reasons:
            expected[LabelRequest.make_id(task, m.id, m.model_version)] = (m, set(reasons))
    # Candidates: every scored message with a reason of its own, and every alert's evidence.
    own = sum(1 for m in scored.values() if selector.reasons(m))
    assert candidates == own + sum(len(a.top_messages) for a in alerts)
    found_reasons = {r for _, rs in expected.values() for r in rs}
    assert {SelectionReason.uncertain, SelectionReason.alert} <= found_reasons
    assert len(expected) < len(messages), "the thresholds were meant to leave some messages out"

    # The table: exactly the expected items, with their reasons, scores and masked text.
    assert set(items) == set(expected)
    for item_id, item in items.items():
        m, reasons = expected[item_id]
        r = item.request
        assert set(r.reasons) == reasons, (m.id, r.reasons, reasons)
        assert (r.message_id, r.model_label, r.model_version, r.text) == (m.id, m.label, m.model_version, m.text)
        assert r.probs == pytest.approx(m.probs) and item.state.value == "open"
        assert (r.alert_id is not None) == (SelectionReason.alert in reasons)
    pii = [i.request for i in items.values() if i.request.message_id == "s-5"]
    assert len(pii) == 1 and EMAIL not in pii[0].text and "[EMAIL]" in pii[0].text

    # The topic: the same items; together its records carry each item's reasons.
    topic_reasons: dict[str, set[SelectionReason]] = defaultdict(set)
    for r in on_topic:
        topic_reasons[r.item_id] |= set(r.reasons)
        assert EMAIL not in r.text
    assert {k: v for k, v in topic_reasons.items()} == {k: set(i.request.reasons) for k, i in items.items()}

    # A replay of every topic from the start, by a worker in a new consumer group.
    second = worker(f"{settings.consumer_group}-replay", "worker-2")
    second.start()
    replayed = asyncio.run(_requests_until_quiet(
        settings, lambda got: {r.item_id for r in got[len(on_topic):]} >= set(items), quiet_s=6, timeout_s=240,
    ))[len(on_topic):]
    assert second.stop() == 0
    assert f"took {len(items)} items queued" in second.log_path.read_text()
    assert {r.item_id for r in replayed} == set(items), "the replay selected other items"
    items_after, raw_after, _, _, shadow_after = _queue(settings)
    assert items_after == items
    assert raw_after == raw_rows, "the replay wrote rows to label_queue"
    assert shadow_after == shadow, "the replay counted shadow predictions twice"

    # That worker restarted, and a new message: before it, its drift monitors take what v1 scored.
    third = worker(f"{settings.consumer_group}-replay", "worker-3")
    third.start()
    fresh = news_json(id="n-new", published_at=(T0 + timedelta(hours=1)).isoformat(), headline="Acme opens a plant")
    asyncio.run(replay(settings.kafka_brokers, settings.raw_topics, [OutgoingMessage.raw(Kind.news, "n-new", fresh)],
                       rate_per_s=0))
    warmed = f"drift: sentiment model v1 starts from its last {len(scored) - len(support_ids)} scored messages"
    assert _log_shows(third.log_path, warmed, timeout_s=120), "the restarted worker's drift monitors started empty"
    assert third.stop() == 0
