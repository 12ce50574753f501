"""The alerting processor's state: tickets out of the stream, acks that stop an escalation, an
alert emitted before that is not emitted again (on the real broker), SLA clocks that follow their
scored partition to a new owner, the low-confidence threshold's precedence (setting > calibrated >
rules), and rules reloaded from a real file while running (an invalid file is refused, the old
rules stay).

Its topics are real faust topic objects of an app that is never started, and nothing sends, except
where a test gives it an app on the real broker."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import faust
import pytest

from models.triage_mapping import load_triage_mapping
from streams.alerting.agent import AlertingProcessor, Output, min_confidence_for, reload_rules
from streams.alerting.contracts import HUMAN_TRIAGE, Alert, Severity, TicketAck
from streams.alerting.reload import RulesWatcher
from streams.alerting.rules import AlertRules, RulesError
from streams.alerting.webhook import WebhookNotifier
from streams.app import worker_app
from streams.clickhouse import open_store
from streams.clickhouse.triage_store import TriageStore
from streams.contracts import ScoredMessage, SupportMessage
from streams.metrics import Metrics
from streams.settings import VigilSettings
from streams.watchdog import Watchdogs
from tests.fixtures.alerting import DATA, scored
from tests.fixtures.broker import stored_batches

T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
INTENTS = json.loads((DATA / "banking77" / "categories.json").read_text())
MAPPING = load_triage_mapping(INTENTS)
P1 = next(i for i in INTENTS if MAPPING.route(i).priority == "P1")
P4 = next(i for i in INTENTS if MAPPING.route(i).priority == "P4")


def support(mid: str, intent: str, t: datetime, confidence: float, partition: int = 0) -> tuple[int, bytes]:
    """A scored-topic record: (partition, value)."""
    m = SupportMessage(id=mid, channel="chat", customer_id="c-1", text=f"message {mid}", created_at=t)
    value = scored(m, intent, INTENTS).model_copy(update={"confidence": confidence}).model_dump_json().encode()
    return partition, value


@pytest.fixture
def make_processor(tmp_path: Path):
    store = open_store(VigilSettings(data_dir=tmp_path, clickhouse_url=None))
    app = faust.App("t-processor", broker="kafka://127.0.0.1:1", web_enabled=False, datadir=str(tmp_path / "faust"))
    executor = ThreadPoolExecutor(1)

    def make(rules: AlertRules | None = None, setting: float | None = None,
             calibrated: float | None | Callable[[str], float | None] = None, *, on: faust.App = app,
             alerts_topic: str = "alerts", metrics: Metrics | None = None, webhook: WebhookNotifier | None = None):
        return AlertingProcessor(
            rules=rules or AlertRules(), mapping=MAPPING, min_confidence_setting=setting,
            calibration=calibrated if callable(calibrated) else lambda version: calibrated,
            alerts_topic=on.topic(alerts_topic), queue_topics={q: on.topic(q) for q in (*MAPPING.queues, HUMAN_TRIAGE)},
            ticker_topic=on.topic("by-ticker"), intent_topic=on.topic("by-intent"),
            store=store, metrics=metrics or Metrics(), io_executor=executor, retry_max_s=1.0, webhook=webhook,
            watchdogs=Watchdogs(60, started_at=time.monotonic()),
        )

    make.store = store  # type: ignore[attr-defined]  # where "another worker" stores its acks
    yield make
    executor.shutdown()
    store.close()


def test_each_support_message_becomes_a_ticket_and_unsure_ones_go_to_human_triage(make_processor) -> None:
    p = make_processor(setting=0.7)
    out = p.feed([support("a", P1, T0, 0.9), support("b", P4, T0, 0.69), (0, b"not json")], wall=0.0)
    by_id = {t.message_id: t for t in out.tickets}
    assert (by_id["a"].queue, by_id["a"].human_triage) == (MAPPING.route(P1).queue, False)
    assert (by_id["b"].queue, by_id["b"].routed_queue, by_id["b"].human_triage) == (HUMAN_TRIAGE, MAPPING.route(P4).queue, True)
    assert [a.rule for a in out.alerts] == ["priority_intent"]  # the confident P1 only


def test_an_acked_p1_does_not_escalate_and_an_unacked_one_does(make_processor) -> None:
    p = make_processor(setting=0.0)
    p.feed([support("acked", P1, T0, 0.9), support("forgotten", P1, T0, 0.9)], wall=0.0)
    acks = p.acknowledge([TicketAck(message_id="acked", by="ana", at=T0).model_dump_json().encode(), b"{}"])
    assert [a.message_id for a in acks] == ["acked"]
    sla = MAPPING.route(P1).sla_minutes
    later = support("later", P4, T0 + timedelta(minutes=sla + 1), 0.9)
    out = p.feed([later], wall=1.0)
    out.alerts += p.tick(wall=1.0).alerts
    assert [(a.rule, a.top_messages[0].id) for a in out.alerts if a.rule == "sla_breach"] == [("sla_breach", "forgotten")]


def test_an_ack_that_reached_another_worker_stops_the_escalation(make_processor) -> None:
    p = make_processor(setting=0.0)
    p.feed([support("acked-elsewhere", P1, T0, 0.9), support("forgotten", P1, T0, 0.9)], wall=0.0)
    TriageStore(make_processor.store).write_acks([TicketAck(message_id="acked-elsewhere", by="bo", at=T0)])
    sla = MAPPING.route(P1).sla_minutes
    p.feed([support("later", P4, T0 + timedelta(minutes=sla + 1), 0.9)], wall=1.0)
    due = p.tick(wall=1.0)
    assert sorted(a.top_messages[0].id for a in due.alerts) == ["acked-elsewhere", "forgotten"]
    out = asyncio.run(p.without_settled(due))
    assert [(a.rule, a.top_messages[0].id) for a in out.alerts] == [("sla_breach", "forgotten")]


def test_a_ticket_published_again_after_its_escalation_does_not_escalate_again(make_processor) -> None:
    """A replay re-publishes a scored P1 long past its due time: its clock opened again and the
    breach went out a second time (the alerts topic and the webhook)."""
    p = make_processor(setting=0.0)
    sla = MAPPING.route(P1).sla_minutes
    p.feed([support("p1", P1, T0, 0.9), support("later", P4, T0 + timedelta(minutes=sla + 1), 0.9)], wall=0.0)
    first = asyncio.run(p.without_settled(p.tick(wall=1.0)))
    assert [a.rule for a in first.alerts] == ["sla_breach"]
    make_processor.store.write_alerts(first.alerts)  # what emit stores
    p.feed([support("p1", P1, T0, 0.9), support("later-2", P4, T0 + timedelta(minutes=sla + 2), 0.9)], wall=2.0)
    again = p.tick(wall=3.0)
    assert [a.rule for a in again.alerts] == ["sla_breach"]  # the clock opened again...
    assert asyncio.run(p.without_settled(again)).alerts == []  # ...and its breach is not sent twice


def test_an_alert_emitted_before_is_not_published_counted_or_offered_again(
    make_processor, kafka_broker, new_topic, tmp_path: Path
) -> None:
    """A keyed stage's next owner, restored from a checkpoint older than an alert (its previous
    owner crashed), fires the alert again: it went to the alerts topic, vigil_alerts_total and the
    webhook a second time; only the alerts table collapsed it."""
    topic, metrics = new_topic(partitions=1), Metrics()
    webhook = WebhookNotifier("http://127.0.0.1:9/hook", 1.0, metrics)  # never run: what it was offered stays queued
    alert = Alert(id=Alert.make_id("sentiment", "negative_share", "VGLX", T0.isoformat()), kind="sentiment",
                  rule="negative_share", severity=Severity.warning, ticker="VGLX", figures={"negative_share": 0.8},
                  model_version="v1", created_at=T0)

    async def emit_twice() -> int:
        app = worker_app(VigilSettings(data_dir=tmp_path / "app"), kafka_broker.bootstrap)
        p = make_processor(on=app, alerts_topic=topic, metrics=metrics, webhook=webhook)
        await app.producer.start()
        try:
            await p.emit(Output(alerts=[alert]))  # the old owner
            await p.emit(Output(alerts=[alert]))  # the next one, from the older checkpoint
        finally:
            await app.producer.stop()
        return sum(await stored_batches(kafka_broker.bootstrap, topic))

    assert asyncio.run(emit_twice()) == 1
    assert [a.id for a in make_processor.store.fetch_alerts()] == [alert.id]
    assert metrics.registry.get_sample_value(
        "vigil_alerts_total", {"kind": "sentiment", "rule": "negative_share", "severity": "warning"}) == 1
    assert webhook._queue.qsize() == 1


def test_a_new_owner_of_a_partition_reopens_its_unacked_clocks_and_escalates_them(make_processor) -> None:
    sla = MAPPING.route(P1).sla_minutes
    first = make_processor(setting=0.0)
    routed = first.feed([
        support("open", P1, T0, 0.9, partition=0), support("acked", P1, T0, 0.9, partition=0),
        support("escalated", P1, T0 - timedelta(minutes=sla), 0.9, partition=0),
        support("other-partition", P1, T0, 0.9, partition=1),
    ], wall=0.0)
    escalated = first.tick(wall=1.0).alerts
    assert [a.top_messages[0].id for a in escalated] == []  # the support clock is not idle yet
    triage = TriageStore(make_processor.store)
    triage.write_tickets(routed.tickets)  # what emit stores, before the events are acknowledged
    triage.write_acks([TicketAck(message_id="acked", by="ana", at=T0)])
    late = first.feed([support("late", P4, T0 + timedelta(minutes=1), 0.9, partition=0)], wall=2.0)
    triage.write_tickets(late.tickets)
    (breach,) = first.tick(wall=2.0).alerts
    assert breach.top_messages[0].id == "escalated"
    make_processor.store.write_alerts([breach])
    # The first worker dies here. A second one is assigned partition 0 and sees no support message.
    second = make_processor(setting=0.0)
    second.assign([0])
    restored_at = 100.0
    asyncio.run(second.restore_slas(wall=restored_at))
    idle_s = second.rules.sentiment.window.idle_after_s
    assert second.tick(wall=restored_at + idle_s + 1).alerts == []  # event time T0+1min+idle: not due yet
    due = second.tick(wall=restored_at + (sla - 1) * 60 + 2)  # the clock moved on from where the first left it
    assert [(a.rule, a.top_messages[0].id) for a in due.alerts] == [("sla_breach", "open")]
    assert second.tick(wall=restored_at + sla * 60 * 2).alerts == []  # once


def test_a_revoked_partition_lets_go_of_its_clocks(make_processor) -> None:
    sla = MAPPING.route(P1).sla_minutes
    p = make_processor(setting=0.0)
    p.feed([support("p0", P1, T0, 0.9, partition=0), support("p1", P1, T0, 0.9, partition=1)], wall=0.0)
    p.assign([0, 1])  # a rebalance keeps partition 1 here and moves partition 0 away
    p.revoke([0])
    p.feed([support("later", P4, T0 + timedelta(minutes=sla + 1), 0.9, partition=1)], wall=1.0)
    assert [a.top_messages[0].id for a in p.tick(wall=1.0).alerts] == ["p1"]


def test_a_partition_revoked_while_its_clocks_are_read_back_is_not_reopened(make_processor) -> None:
    """The read's tickets were opened after the revoke: the worker kept clocks of a partition
    another worker owned, and escalated its tickets too."""
    sla = MAPPING.route(P1).sla_minutes
    first = make_processor(setting=0.0)
    routed = first.feed([support("p0", P1, T0, 0.9, partition=0), support("p1", P1, T0, 0.9, partition=1)], wall=0.0)
    TriageStore(make_processor.store).write_tickets(routed.tickets)
    second = make_processor(setting=0.0)
    second.assign([0, 1])

    async def restore_while_partition_0_moves() -> None:
        restoring = asyncio.create_task(second.restore_slas(wall=100.0))
        await asyncio.sleep(0)  # the restore is reading ClickHouse now
        second.revoke([0])
        await restoring

    asyncio.run(restore_while_partition_0_moves())
    due = second.tick(wall=100.0 + sla * 60 * 2)
    assert [(a.rule, a.top_messages[0].id) for a in due.alerts] == [("sla_breach", "p1")]


def test_tickets_are_routed_with_the_calibration_of_the_version_that_scored_them(make_processor) -> None:
    """A worker that hot swapped its triage model kept the threshold of the version it started
    with: tickets of the new version between the two thresholds skipped human triage."""
    p = make_processor(calibrated={"v1": 0.4, "v2": 0.95}.get)

    def by(version: str, mid: str) -> tuple[int, bytes]:
        scored = ScoredMessage.model_validate_json(support(mid, P4, T0, 0.9)[1])
        return 0, scored.model_copy(update={"model_version": version}).model_dump_json().encode()

    by_id = {t.message_id: t for t in p.feed([by("v1", "old"), by("v2", "new")], wall=0.0).tickets}
    assert (by_id["old"].human_triage, by_id["new"].human_triage) == (False, True)
    assert (p.min_confidence("v1"), p.min_confidence("v2"), p.min_confidence("v9")) == (0.4, 0.95, 0.5)


def test_the_threshold_is_the_setting_else_the_calibration_else_the_rules() -> None:
    rules = AlertRules.from_mapping({"triage": {"min_confidence": 0.4}})
    assert min_confidence_for(0.8, 0.3, rules) == 0.8
    assert min_confidence_for(0.0, 0.3, rules) == 0.0
    assert min_confidence_for(None, 0.3, rules) == 0.3
    assert min_confidence_for(None, None, rules) == 0.4


def test_rules_reload_swaps_valid_files_and_refuses_invalid_ones(make_processor, tmp_path: Path, caplog) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"version": "1", "triage": {"alert_priorities": ["P1"]}}))
    p = make_processor(rules=AlertRules.from_file(path))
    watcher = RulesWatcher(path)
    reload_rules(p, watcher)
    assert p.rules.version == "1"  # unchanged file: nothing to do

    path.write_text(json.dumps({"version": "2", "triage": {"alert_priorities": ["P1", "P4"], "min_confidence": 0.3}}))
    reload_rules(p, watcher)
    assert (p.rules.version, p.min_confidence("v1")) == ("2", 0.3)
    out = p.feed([support("p4", P4, T0, 0.9)], wall=0.0)
    assert [a.rule for a in out.alerts] == ["priority_intent"]  # P4 now alerts too

    caplog.set_level(logging.ERROR, logger="streams.alerting.agent")
    path.write_text(json.dumps({"version": "3", "triage": {"min_confidence": 7}}))
    reload_rules(p, watcher)
    assert p.rules.version == "2"
    assert "NOT reloaded" in caplog.text and "triage.min_confidence" in caplog.text

    caplog.clear()
    path.write_text(json.dumps({"version": "4", "sentiment": {"window": {"size_minutes": 30}}}))
    reload_rules(p, watcher)
    assert p.rules.version == "2" and "sentiment.window" in caplog.text
    with pytest.raises(RulesError, match="triage.intent_spike.window"):
        p.swap_rules(AlertRules.from_mapping({"triage": {"intent_spike": {"window": {"size_minutes": 30}}}}))
