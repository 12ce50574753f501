"""The alerting adapter: faust agents on the scored topic, on the ticker-events and intent-events
topics and on the ticket-acks topic, around the pure alerting core.

Scored topic, per micro-batch: news is re-published to the ticker-events topic once per ticker
(keyed by ticker); support goes through route() (a TriageTicket, priority alert, SLA tracking)
-> publish each ticket to its queue's topic and to the intent-events topic (keyed by intent), the
alerts to the alerts topic and the ticker events (all awaited) -> write tickets and alerts to
ClickHouse (retried until it succeeds) -> offer alerts to the webhook -> ack. The ticker-events
agent judges the sentiment windows and the intent-events agent the intent-spike windows
(streams/alerting/keyed_stage.py). TicketAcks stop SLA clocks and are stored. A timer moves event
time on while a stream is quiet, closing windows and escalating SLAs, and reloads the rules file
when it changes (an invalid one is refused and logged; the old rules stay).

Sentiment and intent-spike state is partitioned by ticker and by intent and checkpointed to
ClickHouse, so it survives restarts and follows its partition to another worker. SLA clocks belong
to the scored-topic partition their ticket was routed from: a worker assigned a partition reopens,
from the stored tickets, the clocks of its urgent tickets that are neither acknowledged nor
escalated (and the support clock where the previous owner left it), and lets them go when the
partition is revoked. Acks are spread over the
workers, so an escalation is checked against the acks stored in ClickHouse before it goes out.
Alert ids are uuid5 of what they are about, so an alert fired again after a replay, or by a keyed
stage's next owner from an older checkpoint, is known by its id in the alerts table and is not
published, counted or sent to the webhook again (AlertingProcessor.without_settled).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import EventT, StreamT, TopicT
from pydantic import BaseModel, ValidationError

from models.registry import ModelNotFound, ModelRegistry
from models.scoring import Scorer
from models.triage_mapping import DEFAULT_PATH, TriageMapping, load_triage_mapping
from streams.alerting.clock import IdleClock
from streams.alerting.contracts import HUMAN_TRIAGE, Alert, TickerEvent, TicketAck, TriageTicket
from streams.alerting.keyed_stage import KeyedStage
from streams.alerting.partitions import AlertPartitions, IntentSpikePartitions, SentimentPartitions
from streams.alerting.reload import RulesWatcher
from streams.alerting.rules import (
    AlertRules,
    RulesError,
    geometry_changes,
    ticker_events,
)
from streams.alerting.triage import (
    SlaTracker,
    UnroutableIntent,
    calibrated_threshold,
    priority_alert,
    queue_topic,
    route,
)
from streams.alerting.webhook import WebhookNotifier
from streams.batching import batch_agent, process_batches
from streams.clickhouse import ClickHouseStore
from streams.clickhouse.alerting_state import AlertingStateStore
from streams.clickhouse.triage_store import TriageStore
from streams.contracts import Kind, ScoredMessage
from streams.durable import until_stored
from streams.metrics import Metrics
from streams.settings import VigilSettings
from streams.watchdog import Watchdogs

log = logging.getLogger(__name__)

_TICK_S = 1.0


@dataclass
class Output:
    """What one batch or tick produced: alerts, tickets for the queue topics (and, keyed by intent,
    for the intent-spike stage), and news re-keyed by ticker for the sentiment stage."""

    alerts: list[Alert] = field(default_factory=list)
    tickets: list[TriageTicket] = field(default_factory=list)
    ticker_events: list[TickerEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.alerts or self.tickets or self.ticker_events)


def min_confidence_for(setting: float | None, calibrated: float | None, rules: AlertRules) -> float:
    """Below this a support message goes to human triage: the explicit setting, else the triage
    model's threshold calibrated on its validation split, else the rules' default."""
    if setting is not None:
        return setting
    return calibrated if calibrated is not None else rules.triage.min_confidence


class AlertingProcessor:
    def __init__(
        self,
        *,
        rules: AlertRules,
        mapping: TriageMapping,
        min_confidence_setting: float | None,
        calibration: Callable[[str], float | None],
        alerts_topic: TopicT,
        queue_topics: dict[str, TopicT],
        ticker_topic: TopicT,
        intent_topic: TopicT,
        store: ClickHouseStore,
        metrics: Metrics,
        io_executor: ThreadPoolExecutor,
        retry_max_s: float,
        webhook: WebhookNotifier | None,
        watchdogs: Watchdogs,
    ) -> None:
        self._rules = rules
        self._mapping = mapping
        self._min_confidence_setting = min_confidence_setting
        self._calibration = calibration
        self.sentiment = SentimentPartitions(rules.sentiment)
        self._sla = SlaTracker(rules.triage.escalate_priorities)
        self.intent_spikes = IntentSpikePartitions(rules.triage.intent_spike)
        self._support_clock = IdleClock(rules.sentiment.window.idle_after_s)
        self._sla_to_restore: set[int] = set()  # scored partitions assigned here, clocks not yet reopened
        self._scored_here: set[int] = set()  # scored partitions assigned here now
        self._alerts_topic = alerts_topic
        self._queue_topics = queue_topics
        self._ticker_topic = ticker_topic
        self._intent_topic = intent_topic
        self._store = store
        self._triage_store = TriageStore(store)
        self._metrics = metrics
        self._io_executor = io_executor
        self._retry_max_s = retry_max_s
        self._webhook = webhook
        self._watchdogs = watchdogs

    @property
    def rules(self) -> AlertRules:
        return self._rules

    def swap_rules(self, rules: AlertRules) -> None:
        """Take new thresholds, priorities and cooldowns at once, or none of them: window and
        baseline geometry cannot change under live state (RulesError says which)."""
        changed = [f"sentiment.{n}" for n in geometry_changes(self._rules.sentiment, rules.sentiment)]
        changed += [
            f"triage.intent_spike.{n}"
            for n in geometry_changes(self._rules.triage.intent_spike, rules.triage.intent_spike)
        ]
        if changed:
            raise RulesError(
                f"the new rules change {' and '.join(changed)}, which live windows and baselines were built "
                "with; restart the worker to apply them"
            )
        self.sentiment.swap_rules(rules.sentiment)
        self.intent_spikes.swap_rules(rules.triage.intent_spike)
        self._sla.priorities = frozenset(rules.triage.escalate_priorities)  # tickets opened from now on
        self._rules = rules

    def min_confidence(self, model_version: str) -> float:
        """Below this a ticket the triage model ``model_version`` scored goes to human triage: each
        version has its own calibration, and the tickets of a version swapped in mid-stream are
        routed with its threshold, not the one the worker started with."""
        return min_confidence_for(self._min_confidence_setting, self._calibration(model_version), self._rules)

    def feed(self, records: Sequence[tuple[int, bytes]], wall: float) -> Output:
        """Route one batch of scored-topic records, each ``(partition, value)``."""
        out = Output()
        for partition, value in records:
            try:
                msg = ScoredMessage.model_validate_json(value)
            except ValidationError as exc:
                log.error("skipping a scored-topic record that is not a ScoredMessage: %s", exc)
                continue
            if msg.kind is Kind.news:
                out.ticker_events += ticker_events(msg, self._rules.sentiment)
            else:
                self._support_clock.observe(msg.event_time, wall)
                self._triage(msg, partition, out)
        return out

    def _triage(self, msg: ScoredMessage, partition: int, out: Output) -> None:
        try:
            ticket = route(msg, self._mapping, self.min_confidence(msg.model_version), partition)
        except UnroutableIntent as exc:
            log.error("%s", exc)
            return
        out.tickets.append(ticket)
        self._sla.open(ticket)
        out.alerts += [a for a in [priority_alert(ticket, self._rules.triage.alert_priorities)] if a is not None]

    def assign(self, partitions: Iterable[int]) -> None:
        """Scored partitions now read here: their SLA clocks are reopened by ``restore_slas``."""
        assigned = set(partitions)
        self._scored_here |= assigned
        self._sla_to_restore |= assigned

    def revoke(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self._scored_here -= gone
        self._sla_to_restore -= gone
        if released := self._sla.release(gone):
            log.info("let go of %d SLA clocks of scored partitions %s", released, sorted(gone))

    async def restore_slas(self, wall: float) -> None:
        """Reopen the SLA clocks of the partitions assigned since the last call, from ClickHouse.
        A ticket routed here meanwhile is opened once (``SlaTracker.open`` ignores a repeat)."""
        if not self._sla_to_restore:
            return
        parts, self._sla_to_restore = sorted(self._sla_to_restore), set()
        tickets = await self.durably("reading open tickets", self._triage_store.open_tickets, parts,
                                     self._sla.priorities)
        # A rebalance during the read may have taken partitions away: their clocks are the new owner's,
        # and a clock opened after the revoke would never be released here.
        reopened = sum(self._sla.open(t) for t in tickets if t.source_partition in self._scored_here)
        if last := await self.durably("reading the last routed ticket", self._triage_store.last_routed, parts):
            event_time, written = last
            self._support_clock.recall(event_time, wall - (datetime.now(UTC) - written).total_seconds())
        log.info("scored partitions %s: reopened %d SLA clocks of unacknowledged tickets", parts, reopened)

    def acknowledge(self, values: Sequence[bytes]) -> list[TicketAck]:
        """Stop the SLA clock of each acknowledged ticket; returns the valid acks, to be stored."""
        acks = []
        for value in values:
            try:
                ack = TicketAck.model_validate_json(value)
            except ValidationError as exc:
                log.error("skipping an acks-topic record that is not a TicketAck: %s", exc)
                continue
            if self._sla.ack(ack.message_id):
                log.info("ticket %s acknowledged by %s: its SLA clock stopped", ack.message_id, ack.by)
            else:
                # Not tracked (not an escalated priority), already acked or escalated, or routed from a
                # partition another worker reads: the ack is still stored, and that worker checks the
                # stored acks before it escalates.
                log.info("ack for ticket %s, which has no SLA clock running here", ack.message_id)
            acks.append(ack)
        return acks

    def tick(self, wall: float) -> Output:
        # SLAs run on the support stream's event time, which moves with its messages or, when idle, the wall.
        now = self._support_clock.idle_now(wall) or self._support_clock.latest
        return Output(self._sla.due(now) if now is not None else [])

    async def without_settled(self, out: Output) -> Output:
        """Drop the alerts already emitted, known by their id in the alerts table, and escalations
        of tickets acknowledged where this worker could not see it (through another worker, whose
        partitions the ack went to, or before this one restarted).

        An alert already emitted comes again after a replay: a scored message published again opens
        its SLA clock again, long past due, or re-routes a priority ticket; a keyed stage's next
        owner (after a crash, or a revoke whose checkpoint could not be saved) restores a checkpoint
        from before the alert and fires it again from the events after it. Alert ids are what the
        alert is about, so the copy has the same id."""
        if not out.alerts:
            return out
        breaches = {a.top_messages[0].id for a in out.alerts if a.rule == "sla_breach"}
        emitted, acked = await self.durably(
            "reading emitted alerts and ticket acks", self._settled, {a.id for a in out.alerts}, breaches
        )
        out.alerts = [
            a for a in out.alerts
            if a.id not in emitted and not (a.rule == "sla_breach" and a.top_messages[0].id in acked)
        ]
        return out

    def _settled(self, alert_ids: set[str], breached_tickets: set[str]) -> tuple[set[str], set[str]]:
        return self._store.stored_alert_ids(alert_ids), self._triage_store.acked_ids(breached_tickets)

    async def durably(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        return await until_stored(
            what, fn, *args, executor=self._io_executor, metrics=self._metrics, watchdogs=self._watchdogs,
            retry_max_s=self._retry_max_s,
        )

    async def emit(self, out: Output) -> None:
        """Publish tickets and alerts, then store them (retried until stored), then count the alerts
        and offer them to the webhook. Alerts emitted before are left out (``without_settled``).

        Kafka and ClickHouse cannot be written as one, so an alert is published before it is
        stored: a worker that dies between the two leaves it on the alerts topic only, and whoever
        fires it again publishes it a second time (same id, which is the record key), then stores,
        counts and offers it once. Storing first would lose it from the topic instead."""
        out = await self.without_settled(out)
        if not out:
            return
        futures = [
            await self._queue_topics[t.queue].send(key=t.message_id.encode(), value=t.model_dump_json().encode())
            for t in out.tickets
        ]
        futures += [
            await self._alerts_topic.send(key=a.id.encode(), value=a.model_dump_json().encode()) for a in out.alerts
        ]
        futures += [
            await self._intent_topic.send(key=t.intent.encode(), value=t.model_dump_json().encode())
            for t in out.tickets
        ]
        futures += [
            await self._ticker_topic.send(key=e.ticker.encode(), value=e.model_dump_json().encode())
            for e in out.ticker_events
        ]
        await asyncio.gather(*futures)
        if out.tickets:
            await self.durably("writing triage tickets", self._triage_store.write_tickets, out.tickets)
        if out.alerts:
            await self.durably("writing alerts", self._store.write_alerts, out.alerts)
        for a in out.alerts:
            self._metrics.alerts.labels(a.kind, a.rule, a.severity.value).inc()
            log.warning("alert %s %s %s %s", a.severity.value, a.rule, a.ticker or a.intent, a.id)
            if self._webhook is not None:
                self._webhook.offer(a)

    async def store_acks(self, acks: Sequence[TicketAck]) -> None:
        if acks:
            await self.durably("writing ticket acks", self._triage_store.write_acks, acks)


def load_rules(settings: VigilSettings) -> AlertRules:
    return AlertRules.from_file(settings.alert_rules_path) if settings.alert_rules_path else AlertRules()


def reload_rules(processor: AlertingProcessor, watcher: RulesWatcher) -> None:
    """Swap in the rules file if it changed and is valid; otherwise log why and keep the old rules."""
    change = watcher.poll()
    if change is None:
        return
    try:
        if change.error is not None:
            raise change.error
        assert change.rules is not None
        processor.swap_rules(change.rules)
    except RulesError as exc:
        log.error("alert rules NOT reloaded, the previous rules (version %s) stay in force: %s",
                  processor.rules.version, exc)
        return
    log.warning("alert rules reloaded from %s (version %s)", watcher.path, processor.rules.version)


def register_alerting(
    app: faust.App,
    settings: VigilSettings,
    *,
    scored_topic: TopicT,
    triage_scorer: Scorer,
    store: ClickHouseStore,
    metrics: Metrics,
    io_executor: ThreadPoolExecutor,
    watchdogs: Watchdogs,
) -> None:
    """Add the alerting and ticket-ack agents, their timer and (when configured) the webhook task to ``app``."""
    rules = load_rules(settings)
    webhook = (
        WebhookNotifier(settings.alert_webhook_url.get_secret_value(), settings.alert_webhook_timeout_s, metrics,
                        drain_s=settings.alert_webhook_drain_s)
        if settings.alert_webhook_url
        else None
    )
    mapping = load_triage_mapping(triage_scorer.labels, settings.triage_mapping_path or DEFAULT_PATH)
    registry = ModelRegistry(settings.registry_dir)

    @functools.cache
    def calibration(version: str) -> float | None:
        try:
            return calibrated_threshold(registry.card("triage", version))
        except ModelNotFound:
            log.warning("triage: version %s is not in the registry; its tickets use the rules' threshold", version)
            return None

    ticker_topic = app.topic(settings.ticker_events_topic, key_type=bytes, value_type=bytes)
    intent_topic = app.topic(settings.intent_events_topic, key_type=bytes, value_type=bytes)
    acks_topic = app.topic(settings.topic_ticket_acks, key_type=bytes, value_type=bytes)
    processor = AlertingProcessor(
        rules=rules,
        mapping=mapping,
        min_confidence_setting=settings.triage_min_confidence,
        calibration=calibration,
        alerts_topic=app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes),
        queue_topics={
            q: app.topic(queue_topic(settings.topic_triage_prefix, q), key_type=bytes, value_type=bytes)
            for q in (*mapping.queues, HUMAN_TRIAGE)
        },
        ticker_topic=ticker_topic,
        intent_topic=intent_topic,
        store=store,
        metrics=metrics,
        io_executor=io_executor,
        retry_max_s=settings.clickhouse_retry_max_s,
        webhook=webhook,
        watchdogs=watchdogs,
    )
    log.info("triage: below confidence %.3f a ticket of %s goes to %s",
             processor.min_confidence(triage_scorer.model_version), triage_scorer.model_version, HUMAN_TRIAGE)
    watcher = RulesWatcher(settings.alert_rules_path) if settings.alert_rules_path else None

    async def alert_batch(events: list[EventT]) -> None:
        await processor.restore_slas(time.monotonic())
        records = [(e.message.partition, e.message.value) for e in events]
        await processor.emit(processor.feed(records, time.monotonic()))

    app.agent(scored_topic, name="vigil.alerts", concurrency=1)(
        batch_agent(alert_batch, settings, watchdogs.watch(scored_topic.get_topic_name()))
    )

    def keyed_stage(partitions: AlertPartitions, topic: TopicT, name: str, event_type: type[BaseModel]) -> KeyedStage:
        topic_name = topic.get_topic_name()
        stage = KeyedStage(
            partitions,
            AlertingStateStore(store, topic_name),
            topic=topic_name,
            event_type=event_type,
            emit=lambda alerts: processor.emit(Output(alerts)),
            durably=processor.durably,
            checkpoint_interval_s=settings.alert_checkpoint_interval_s,
            handover_save_s=settings.alert_handover_save_s,
            metrics=metrics,
        )

        watchdog = watchdogs.watch(topic_name)

        async def judge(stream: StreamT) -> None:
            async def handle(events: list[EventT]) -> None:
                await stage.handle(stream, events, app.consumer.assignment(), time.monotonic())

            # The stage acks events once a checkpoint holds them.
            await process_batches(
                stream, handle, max_=settings.batch_max, within=settings.batch_within_s, watchdog=watchdog,
                ack=False,
            )

        app.agent(topic, name=name, concurrency=1)(judge)
        return stage

    stages = [
        keyed_stage(processor.sentiment, ticker_topic, "vigil.sentiment", TickerEvent),
        keyed_stage(processor.intent_spikes, intent_topic, "vigil.intent_spikes", TriageTicket),
    ]

    scored_name = scored_topic.get_topic_name()

    @app.on_partitions_assigned.connect
    async def take_assigned(_app: faust.App, assigned: set, **_: Any) -> None:
        processor.assign(tp.partition for tp in assigned if tp.topic == scored_name)
        for stage in stages:
            stage.assign(assigned)

    @app.on_partitions_revoked.connect
    async def forget_revoked(_app: faust.App, revoked: set, **_: Any) -> None:
        for stage in stages:
            await stage.hand_over(time.monotonic(), revoked)
        processor.revoke(tp.partition for tp in revoked if tp.topic == scored_name)

    # faust sends no revoke when the worker stops; the consumer commits what was acked after this.
    @app.on_before_shutdown.connect
    async def save_before_stopping(_app: faust.App, **_: Any) -> None:
        for stage in stages:
            await stage.hand_over(time.monotonic())

    async def ticket_acks(events: list[EventT]) -> None:
        await processor.store_acks(processor.acknowledge([e.message.value for e in events]))

    app.agent(acks_topic, name="vigil.ticket_acks", concurrency=1)(
        batch_agent(ticket_acks, settings, watchdogs.watch(acks_topic.get_topic_name()))
    )

    @app.timer(_TICK_S)
    async def alert_clock() -> None:
        if watcher is not None:
            reload_rules(processor, watcher)
        await processor.restore_slas(time.monotonic())
        await processor.emit(processor.tick(time.monotonic()))
        for stage in stages:
            await stage.tick(time.monotonic())

    if webhook is not None:
        app.task(webhook.run)
