"""Alerting end to end on the real parts: Tansu broker, a worker process (faust) with the alerting
agent, the tiny real model, chdb, and a webhook URL nobody listens on.

Event times are crafted so the windows close while the test runs: one-minute tumbling windows,
steady traffic for two tickers, then a burst of negative headlines for one of them. The tiny
model's labels are not reliable, so the rules are set so the burst's VOLUME decides the spike
alert, and the negative-share alert is expected exactly where the model's own stored labels put
the share over the threshold.

The triage test stops its worker between routing the urgent tickets and their due time: the next
worker has to reopen their SLA clocks from ClickHouse to escalate them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from typer.testing import CliRunner

from models.triage_mapping import DEFAULT_PATH, TriageMapping
from streams.alerting.contracts import HUMAN_TRIAGE, TicketAck, TriageTicket
from streams.alerting.triage import queue_topic
from streams.cli import app as vigil_cli
from streams.clickhouse import open_store
from streams.clickhouse.alerting_state import AlertingStateStore
from streams.clickhouse.triage_store import TriageStore
from streams.contracts import Kind
from streams.follow import Tracker, following, wait_for
from streams.replay import OutgoingMessage, replay
from streams.samples import news_json, support_json
from streams.settings import VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import stack_env, use_stack
from tests.fixtures.alerting import DATA as DATA_DIR

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
    """On chdb, with ONE partition per topic so the scored topic carries news in event-time order
    (several partitions interleave arbitrarily, and windows would close before the burst arrived)."""
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    companies = tmp_path / "companies.json"
    companies.write_text(json.dumps({"Shaky Inc": "SHK"}))
    env = stack_env(
        tmp_path, kafka_broker.bootstrap, partitions=1, VIGIL_BATCH_MAX="64",
        VIGIL_ALERT_RULES_PATH=str(rules), VIGIL_TRIAGE_MIN_CONFIDENCE="0",
        VIGIL_TICKER_DICTIONARY_PATH=str(companies),
        VIGIL_ALERT_WEBHOOK_URL=f"http://127.0.0.1:{_closed_port()}/hook", VIGIL_ALERT_WEBHOOK_TIMEOUT_S="0.5",
    )  # fmt: skip
    settings = use_stack(env, monkeypatch, tiny_registry)
    worker = WorkerProcess(kafka_broker.bootstrap, tmp_path / "worker.log", env)
    yield settings, worker
    worker.stop(timeout_s=10)


def _news(id_: str, ticker: str | None, minute: int, second: int, headline: str) -> OutgoingMessage:
    at = (T0 + timedelta(minutes=minute, seconds=second)).isoformat()
    tickers = [ticker] if ticker is not None else None
    return OutgoingMessage.raw(Kind.news, id_, news_json(id=id_, published_at=at, headline=headline, tickers=tickers))


def _traffic() -> tuple[list[OutgoingMessage], set[str]]:
    msgs, burst = [], set()
    for minute in range(9):
        for i in range(2):
            msgs.append(_news(f"calm-{minute}-{i}", "CALM", minute, 10 + 20 * i, f"Calm Corp holds its annual meeting {minute}-{i}"))
            msgs.append(_news(f"shk-{minute}-{i}", "SHK", minute, 15 + 20 * i, f"Shaky Inc publishes its monthly report {minute}-{i}"))
    for i in range(BURST):
        id_ = f"shk-burst-{i}"
        burst.add(id_)
        # no tickers field: the company dictionary names SHK
        msgs.append(_news(id_, None, 8, 40 + i // 2, f"Shaky Inc shares plunge {20 + i}% after fraud probe, losses widen, CEO resigns"))
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
    tracker = Tracker()
    async with following(settings, settings.kafka_brokers, tracker, from_start=True):
        await replay(settings.kafka_brokers, settings.raw_topics, messages, rate_per_s=0)
        finished = await wait_for(tracker, len(messages), timeout_s=120)
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
    assert tracker.dead == 0 and len(tracker.scored) == len(messages)

    with open_store(settings) as store:
        stored = {a.id: a for a in store.fetch_alerts()}
        news = {m.id: m for m in store.fetch_scored(Kind.news, [m.key.decode() for m in messages if m.kind is Kind.news])}
        (ticket,) = store.fetch_scored(Kind.support, ["sup-stolen"])
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


# --- live triage: queue topics, human triage, the triage table, acks and escalation ---------------

TRIAGE_TEXTS = 12


@pytest.fixture
def triage_stack(tmp_path: Path, tiny_registry: Path, tiny_scorers, kafka_broker, monkeypatch):
    """Two workers (one after the other) whose mapping makes every intent P1 with a one-minute SLA
    (the queues stay the bundled mapping's), and whose low-confidence threshold splits the texts
    they will see: the test scores them first with the same tiny model and puts the threshold in
    the widest gap."""
    import csv

    with (DATA_DIR / "banking77" / "train.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows[:: len(rows) // TRIAGE_TEXTS]][:TRIAGE_TEXTS]
    confidences = sorted(p.confidence for p in tiny_scorers["triage"].score(texts))
    # The widest gap away from the ends, so both sides keep at least two texts.
    i = max(range(1, len(confidences) - 2), key=lambda k: confidences[k + 1] - confidences[k])
    threshold = (confidences[i] + confidences[i + 1]) / 2

    bundled = TriageMapping.model_validate_json(DEFAULT_PATH.read_bytes())
    urgent = bundled.model_copy(update={
        "version": "test-all-p1",
        "intents": {k: r.model_copy(update={"priority": "P1", "sla_minutes": 1}) for k, r in bundled.intents.items()},
    })
    mapping_path = tmp_path / "mapping.json"
    mapping_path.write_text(urgent.model_dump_json())
    env = stack_env(
        tmp_path, kafka_broker.bootstrap, partitions=1, VIGIL_BATCH_MAX="64",
        VIGIL_MAX_LENGTH="64",  # as tiny_scorers score
        VIGIL_TRIAGE_MAPPING_PATH=str(mapping_path), VIGIL_TRIAGE_MIN_CONFIDENCE=repr(threshold),
    )  # fmt: skip
    settings = use_stack(env, monkeypatch, tiny_registry)
    workers = [WorkerProcess(kafka_broker.bootstrap, tmp_path / f"worker-{n}.log", env) for n in (1, 2)]
    yield settings, workers, texts, threshold, urgent
    for worker in workers:
        worker.stop(timeout_s=10)


async def _collect(settings: VigilSettings, topics: list[str], done, timeout_s: float) -> dict[str, list]:
    """Records per topic (from the start) until ``done(records)`` holds or time runs out."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, 0) for t in topics]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got: dict[str, list] = {t: [] for t in topics}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not done(got) and asyncio.get_running_loop().time() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                got[tp.topic] += records
        return got
    finally:
        await consumer.stop()


async def _send(settings: VigilSettings, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


def _support(id_: str, text: str, at: datetime) -> OutgoingMessage:
    return OutgoingMessage.raw(Kind.support, id_, support_json(id=id_, text=text, created_at=at.isoformat()))


def test_tickets_reach_their_queue_topics_and_the_table_and_only_unacked_p1s_escalate(triage_stack):
    settings, (first_worker, worker), texts, threshold, mapping = triage_stack
    queue_topics = {q: queue_topic(settings.topic_triage_prefix, q) for q in (*mapping.queues, HUMAN_TRIAGE)}
    ids = [f"t-{i}" for i in range(len(texts))]
    first_worker.start()

    def tickets(got: dict[str, list]) -> dict[str, tuple[str, TriageTicket]]:
        out = {}
        for queue, topic in queue_topics.items():
            for r in got.get(topic, []):
                t = TriageTicket.model_validate_json(r.value)
                assert r.key.decode() == t.message_id
                out[t.message_id] = (queue, t)
        return out

    # 1. Every message comes out as a ticket on one queue topic.
    asyncio.run(replay(settings.kafka_brokers, settings.raw_topics,
                       [_support(i, t, T0) for i, t in zip(ids, texts, strict=True)], rate_per_s=0))
    first = tickets(asyncio.run(_collect(settings, list(queue_topics.values()),
                                         lambda got: len(tickets(got)) >= len(ids), timeout_s=240)))
    assert set(first) == set(ids), f"tickets seen: {sorted(first)}"

    # 2. The worker that routed them stops before any is due; the next one reopens their SLA clocks
    #    from ClickHouse (it never sees those messages: the first committed them).
    assert first_worker.stop() == 0
    worker.start()
    assert _wait_for_log(worker.log_path, f"reopened {len(ids)} SLA clocks", timeout_s=120), "no clocks reopened"

    # 3. One ticket is acknowledged before its SLA runs out (in event time); then the support
    #    stream moves on past every due time.
    acked = ids[0]
    ack = TicketAck(message_id=acked, by="agent-7", at=T0 + timedelta(seconds=30))
    asyncio.run(_send(settings, settings.topic_ticket_acks, acked.encode(), ack.model_dump_json().encode()))
    assert _wait_for_log(worker.log_path, f"ticket {acked} acknowledged", timeout_s=60), "the ack was not taken"
    asyncio.run(replay(settings.kafka_brokers, settings.raw_topics,
                       [_support("t-late", "I still have not got my card", T0 + timedelta(minutes=10))], rate_per_s=0))

    def breaches(got: dict[str, list]) -> list[dict]:
        return [a for a in map(json.loads, (r.value for r in got[settings.topic_alerts])) if a["rule"] == "sla_breach"]

    got = asyncio.run(_collect(settings, [settings.topic_alerts, *queue_topics.values()],
                               lambda g: len(breaches(g)) >= len(ids) - 1 and "t-late" in tickets(g), timeout_s=120))
    on_topics = tickets(got)
    assert worker.stop() == 0

    # Escalations: every unacknowledged ticket past its one-minute SLA, none for the acked one or
    # for t-late (due at minute 11, and the stream only reached minute 10).
    assert sorted(a["top_messages"][0]["id"] for a in breaches(got)) == sorted(set(ids) - {acked})

    with open_store(settings) as store:
        triage = TriageStore(store)
        stored = {t.message_id: t for t in triage.fetch_tickets()}
        scored = {m.id: m for m in store.fetch_scored(Kind.support, [*ids, "t-late"])}
        acked_ids = triage.acked_ids()
        summary = triage.sla_summary(T0 + timedelta(minutes=5))
        intent_checkpoint = AlertingStateStore(store, settings.intent_events_topic).load(0)

    # The table holds what the topics carried, each on its queue's topic; unsure ones in human triage.
    assert set(stored) == set(on_topics) == {*ids, "t-late"}
    for mid, (queue, ticket) in on_topics.items():
        s = scored[mid]
        human = s.confidence < threshold
        assert (ticket.human_triage, ticket.queue) == (human, HUMAN_TRIAGE if human else mapping.route(s.label).queue)
        assert queue == ticket.queue
        assert (ticket.intent, ticket.routed_queue, ticket.priority, ticket.sla_minutes) == (
            s.label, mapping.route(s.label).queue, "P1", 1)
        assert ticket.text == s.text and ticket.model_version == s.model_version
        assert stored[mid].queue == ticket.queue and stored[mid].due_at == ticket.due_at
    humans = {mid for mid in ids if on_topics[mid][1].human_triage}
    assert humans and humans != set(ids), "the threshold was meant to split the texts"
    # The tickets went on, keyed by intent, to the intent-spike stage, which checkpointed their windows.
    assert intent_checkpoint is not None and intent_checkpoint.offset >= 0

    # SLA states five minutes in: the acked one acked, the rest of the first batch breached, t-late open.
    assert acked_ids == {acked}
    totals = {f: sum(getattr(r, f) for r in summary) for f in ("open", "acked", "breached")}
    assert totals == {"open": 1, "acked": 1, "breached": len(ids) - 1}
    assert {r.queue for r in summary} == {t.queue for t in stored.values()}

    result = CliRunner().invoke(vigil_cli, ["triage", "status", "--at", (T0 + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")])
    assert result.exit_code == 0, result.output
    assert "breached" in result.output and HUMAN_TRIAGE in result.output
