"""Alerting end to end on the real parts: Tansu broker, a worker process (faust) with the alerting
agent, the tiny real model, chdb, and a webhook URL nobody listens on.

Event times are crafted so the windows close while the test runs: one-minute tumbling windows,
steady traffic for two tickers, then a burst of negative headlines for one of them. The tiny
model's labels are not reliable, so the rules are set so the burst's VOLUME decides the spike
alert, and the negative-share alert is expected exactly where the model's own stored labels put
the share over the threshold.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.triage_mapping import DEFAULT_PATH, TriageMapping
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.follow import Tracker, follow, wait_for
from streams.replay import OutgoingMessage, replay
from streams.runtime import all_topics
from streams.samples import news_json, support_json
from streams.settings import VigilSettings
from streams.topics import ensure_topics
from streams.worker import WorkerProcess

pytestmark = pytest.mark.slow

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
NEG_SHARE_LEVEL = 0.5
MIN_VOLUME = 10
RULES = {
    "sentiment": {
        "window": {"size_minutes": 1, "step_minutes": 1, "lateness_minutes": 0.5, "top_k": 5},
        "baseline": {"warmup_windows": 3, "fading_factor": 0.3},
        "negative_share": {"min_volume": MIN_VOLUME, "levels": {"info": NEG_SHARE_LEVEL}},
        "sentiment_shock": {"enabled": False},
        "volume_spike": {"min_volume": MIN_VOLUME, "min_ratio": 3, "levels": {"info": 3}},
    },
    # Every priority raises an alert, so the test does not hinge on which intent the tiny model guesses.
    "triage": {"alert_priorities": ["P1", "P2", "P3", "P4"]},
}
BURST = 24


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stack(tmp_path: Path, tiny_registry: Path, kafka_broker, monkeypatch):
    """As tests/test_e2e.py's, on chdb, with ONE partition per topic so the scored topic carries
    news in event-time order (several partitions interleave arbitrarily, and windows would
    close before the burst arrived)."""
    run = uuid.uuid4().hex[:8]
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    env = {
        "VIGIL_DATA_DIR": str(tmp_path / "vigil"),
        "VIGIL_KAFKA_BROKERS": kafka_broker.bootstrap,
        "VIGIL_TOPIC_NEWS": f"a{run}.news",
        "VIGIL_TOPIC_SUPPORT": f"a{run}.support",
        "VIGIL_TOPIC_SCORED": f"a{run}.scored",
        "VIGIL_TOPIC_DLQ": f"a{run}.dlq",
        "VIGIL_TOPIC_ALERTS": f"a{run}.alerts",
        "VIGIL_TOPIC_PARTITIONS": "1",
        "VIGIL_CONSUMER_GROUP": f"g{run}",
        "VIGIL_BATCH_MAX": "64",
        "VIGIL_BATCH_WITHIN_S": "0.2",
        "VIGIL_MAX_LENGTH": "32",
        "VIGIL_KAFKA_SESSION_TIMEOUT_S": "6",
        "VIGIL_KAFKA_REBALANCE_TIMEOUT_S": "8",
        "VIGIL_ALERT_RULES_PATH": str(rules),
        "VIGIL_TRIAGE_MIN_CONFIDENCE": "0",
        "VIGIL_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{_closed_port()}/hook",
        "VIGIL_ALERT_WEBHOOK_TIMEOUT_S": "0.5",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = VigilSettings()
    shutil.copytree(tiny_registry, settings.registry_dir)
    ensure_topics(kafka_broker.bootstrap, all_topics(settings), settings.topic_partitions)
    worker = WorkerProcess(kafka_broker.bootstrap, tmp_path / "worker.log", env)
    yield settings, worker
    worker.stop(timeout_s=10)


def _news(id_: str, ticker: str, minute: int, second: int, headline: str) -> OutgoingMessage:
    at = (T0 + timedelta(minutes=minute, seconds=second)).isoformat()
    return OutgoingMessage.raw(Kind.news, id_, news_json(id=id_, published_at=at, headline=headline, tickers=[ticker]))


def _traffic() -> tuple[list[OutgoingMessage], set[str]]:
    msgs, burst = [], set()
    for minute in range(9):
        for i in range(2):
            msgs.append(_news(f"calm-{minute}-{i}", "CALM", minute, 10 + 20 * i, f"Calm Corp holds its annual meeting {minute}-{i}"))
            msgs.append(_news(f"shk-{minute}-{i}", "SHK", minute, 15 + 20 * i, f"Shaky Inc publishes its monthly report {minute}-{i}"))
    for i in range(BURST):
        id_ = f"shk-burst-{i}"
        burst.add(id_)
        msgs.append(_news(id_, "SHK", 8, 40 + i // 2, f"Shaky Inc shares plunge {20 + i}% after fraud probe, losses widen, CEO resigns"))
    # Later traffic moves the watermark past the burst window's end plus the allowed lateness.
    msgs += [_news("calm-late-0", "CALM", 10, 0, "Calm Corp announces a routine dividend"),
             _news("calm-late-1", "CALM", 11, 0, "Calm Corp names a new board member")]
    msgs.append(OutgoingMessage.raw(
        Kind.support, "sup-stolen",
        support_json(id="sup-stolen", text="my card was stolen and someone is using it", created_at=T0.isoformat()),
    ))
    return msgs, burst


async def _alert_ids(settings: VigilSettings, wanted: int, timeout_s: float) -> dict[str, dict]:
    """Alerts on the alerts topic (key = alert id), once at least ``wanted`` arrived or time ran out."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic_alerts, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        seen: dict[str, dict] = {}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(seen) < wanted and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    alert = json.loads(r.value)
                    assert r.key.decode() == alert["id"]
                    seen[alert["id"]] = alert
        return seen
    finally:
        await consumer.stop()


async def _run(settings: VigilSettings, messages: list[OutgoingMessage], alerts_wanted: int):
    tracker, ready = Tracker(), asyncio.Event()
    follower = asyncio.create_task(follow(settings, settings.kafka_brokers, tracker, ready, from_start=True))
    await ready.wait()
    await replay(settings.kafka_brokers, settings.raw_topics, messages, rate_per_s=0)
    finished = await wait_for(tracker, len(messages), timeout_s=120)
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    alerts = await _alert_ids(settings, alerts_wanted, timeout_s=30)
    return tracker, finished, alerts


def _wait_for_log(path: Path, text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_burst_and_urgent_ticket_raise_alerts_while_a_dead_webhook_stalls_nothing(stack):
    settings, worker = stack
    messages, burst = _traffic()
    worker.start()
    # At least the volume spike and the support message's priority alert.
    tracker, finished, on_topic = asyncio.run(_run(settings, messages, alerts_wanted=2))
    gave_up = _wait_for_log(worker.log_path, "not delivered to the webhook", timeout_s=30)
    assert worker.stop() == 0
    assert gave_up, "the worker never reported the unreachable webhook"

    # The webhook's port is closed: scoring still went through, every message is out and none refused.
    assert finished, f"only {tracker.done} of {len(messages)} messages came out of the worker"
    assert tracker.dead == 0 and len(tracker.scored_ids) == len(messages)

    store = open_store(settings)
    try:
        stored = {a.id: a for a in store.fetch_alerts()}
        news = {m.id: m for m in store.fetch_scored(Kind.news, [m.key.decode() for m in messages if m.kind is Kind.news])}
        (ticket,) = store.fetch_scored(Kind.support, ["sup-stolen"])
    finally:
        store.close()
    assert set(stored) == set(on_topic), "the alerts topic and the alerts table disagree"

    # Volume spike: decided by counts alone, so exactly one, on the burst's window, for SHK.
    spikes = [a for a in stored.values() if a.rule == "volume_spike"]
    assert [(a.ticker, a.window_start) for a in spikes] == [("SHK", T0 + timedelta(minutes=8))]
    (spike,) = spikes
    assert spike.figures["volume"] == BURST + 2
    assert {m.id for m in spike.top_messages} <= burst | {"shk-8-0", "shk-8-1"}
    assert spike.model_version == news["shk-burst-0"].model_version

    # Negative share: expected wherever the model's stored labels put a busy enough window over the level.
    windows: dict[tuple[str, datetime], list[str]] = {}
    for m in news.values():
        start = m.event_time.replace(second=0, microsecond=0)
        for t in m.tickers:
            windows.setdefault((t, start), []).append(m.label)
    expected_share = {
        key for key, labels in windows.items()
        if len(labels) >= MIN_VOLUME and labels.count("negative") / len(labels) >= NEG_SHARE_LEVEL
    }
    shares = {(a.ticker, a.window_start): a for a in stored.values() if a.rule == "negative_share"}
    assert set(shares) == expected_share
    for key, alert in shares.items():
        assert alert.figures["negative_share"] == pytest.approx(windows[key].count("negative") / len(windows[key]))

    # The support ticket: routed by the mapping for the intent the model predicted, alerted at once.
    route = TriageMapping.model_validate_json(DEFAULT_PATH.read_bytes()).route(ticket.label)
    (urgent,) = [a for a in stored.values() if a.rule == "priority_intent"]
    assert [m.id for m in urgent.top_messages] == ["sup-stolen"]
    assert (urgent.intent, urgent.queue) == (ticket.label, route.queue)
    assert urgent.severity == ("critical" if route.priority == "P1" else "warning")
    assert urgent.window_end - urgent.window_start == timedelta(minutes=route.sla_minutes)
