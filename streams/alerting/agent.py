"""The alerting adapter: a faust agent on the scored topic that feeds the pure alerting core and
makes its alerts and triage tickets durable, and one on the ticket-acks topic.

Per micro-batch: decode ScoredMessage JSON -> news into SentimentAlerter, support through route()
(a TriageTicket, priority alert, SLA tracking, intent spikes) -> publish each ticket to its queue's
topic and the alerts to the alerts topic (awaited) -> write them to ClickHouse (retried until it
succeeds) -> offer alerts to the webhook -> ack. TicketAcks stop SLA clocks and are stored. A timer
moves event time on while the stream is quiet, closing windows and escalating SLAs, and reloads the
rules file when it changes (an invalid one is refused and logged; the old rules stay).

State (open windows, baselines, cooldowns, open P1 tickets) lives in this process's memory: a
restart loses it, so windows open at the time are not judged, baselines warm up again and
unacknowledged tickets are not escalated. Alert ids are uuid5 of what they are about, so alerts
re-emitted after a replay collapse in the alerts table. It also assumes ONE alerting consumer:
with several workers each sees only its share of the scored partitions (and of the acks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import faust
from faust.types import StreamT, TopicT
from pydantic import ValidationError

from models.registry import ModelRegistry
from models.scoring import Scorer
from models.triage_mapping import DEFAULT_PATH, TriageMapping, load_triage_mapping
from streams.alerting.contracts import HUMAN_TRIAGE, Alert, TicketAck, TriageTicket
from streams.alerting.reload import RulesWatcher
from streams.alerting.rules import (
    AlertRules,
    RulesError,
    SentimentAlerter,
    geometry_changes,
)
from streams.alerting.triage import (
    IntentSpikeDetector,
    SlaTracker,
    UnroutableIntent,
    calibrated_threshold,
    priority_alert,
    queue_topic,
    route,
)
from streams.alerting.webhook import WebhookNotifier
from streams.clickhouse import ClickHouseStore
from streams.clickhouse.triage_store import TriageStore
from streams.contracts import Kind, ScoredMessage
from streams.durable import until_stored
from streams.metrics import Metrics
from streams.settings import VigilSettings
from streams.watchdog import ProgressWatchdog

log = logging.getLogger(__name__)

_TICK_S = 1.0


class IdleClock:
    """Event time as the stream last showed it. Once the stream has been silent for ``idle_s`` of
    wall-clock time, event time is taken to move on with the wall clock, so a quiet stream still
    closes its windows and escalates its SLAs; during traffic only messages move it."""

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._latest: datetime | None = None
        self._seen_at = 0.0

    def observe(self, event_time: datetime, wall: float) -> None:
        if self._latest is None or event_time > self._latest:
            self._latest = event_time
        self._seen_at = wall

    @property
    def latest(self) -> datetime | None:
        return self._latest

    def idle_now(self, wall: float) -> datetime | None:
        """The extrapolated event time, or None while the stream is not idle (or never spoke)."""
        idle = wall - self._seen_at
        if self._latest is None or idle < self._idle_s:
            return None
        return self._latest + timedelta(seconds=idle)


@dataclass
class Output:
    """What one batch or tick produced: alerts, and tickets for the queue topics."""

    alerts: list[Alert] = field(default_factory=list)
    tickets: list[TriageTicket] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.alerts or self.tickets)


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
        calibrated_min_confidence: float | None,
        alerts_topic: TopicT,
        queue_topics: dict[str, TopicT],
        store: ClickHouseStore,
        metrics: Metrics,
        io_executor: ThreadPoolExecutor,
        retry_max_s: float,
        webhook: WebhookNotifier | None,
        watchdog: ProgressWatchdog,
    ) -> None:
        self._rules = rules
        self._mapping = mapping
        self._min_confidence_setting = min_confidence_setting
        self._calibrated = calibrated_min_confidence
        self.min_confidence = min_confidence_for(min_confidence_setting, calibrated_min_confidence, rules)
        self._sentiment = SentimentAlerter(rules.sentiment)
        self._sla = SlaTracker(rules.triage.escalate_priorities)
        self._spikes = IntentSpikeDetector(rules.triage.intent_spike)
        window = rules.sentiment.window
        idle_s = (window.lateness_minutes + window.step_minutes) * 60
        self._news_clock = IdleClock(idle_s)
        self._support_clock = IdleClock(idle_s)
        self._alerts_topic = alerts_topic
        self._queue_topics = queue_topics
        self._store = store
        self._triage_store = TriageStore(store)
        self._metrics = metrics
        self._io_executor = io_executor
        self._retry_max_s = retry_max_s
        self._webhook = webhook
        self._watchdog = watchdog

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
        self._sentiment.swap_rules(rules.sentiment)
        self._spikes.swap_rule(rules.triage.intent_spike)
        self._sla.priorities = frozenset(rules.triage.escalate_priorities)  # tickets opened from now on
        self._rules = rules
        self.min_confidence = min_confidence_for(self._min_confidence_setting, self._calibrated, rules)

    def feed(self, values: Sequence[bytes], wall: float) -> Output:
        out = Output()
        for value in values:
            try:
                msg = ScoredMessage.model_validate_json(value)
            except ValidationError as exc:
                log.error("skipping a scored-topic record that is not a ScoredMessage: %s", exc)
                continue
            if msg.kind is Kind.news:
                self._news_clock.observe(msg.event_time, wall)
                fed = self._sentiment.feed(msg)
                if fed.too_late:
                    self._metrics.alert_late_messages.inc()
                out.alerts += fed.alerts
            else:
                self._support_clock.observe(msg.event_time, wall)
                self._triage(msg, out)
        return out

    def _triage(self, msg: ScoredMessage, out: Output) -> None:
        try:
            ticket = route(msg, self._mapping, self.min_confidence)
        except UnroutableIntent as exc:
            log.error("%s", exc)
            return
        out.tickets.append(ticket)
        self._sla.open(ticket)
        out.alerts += [a for a in [priority_alert(ticket, self._rules.triage.alert_priorities)] if a is not None]
        out.alerts += self._spikes.feed(ticket).alerts

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
                # Not tracked (not an escalated priority), already acked or escalated, or routed before
                # this worker started: the ack is still stored, so the SLA summary shows it.
                log.info("ack for ticket %s, which has no SLA clock running here", ack.message_id)
            acks.append(ack)
        return acks

    def tick(self, wall: float) -> Output:
        alerts: list[Alert] = []
        if (news_now := self._news_clock.idle_now(wall)) is not None:
            alerts += self._sentiment.advance(news_now)
        support_now = self._support_clock.idle_now(wall)
        if support_now is not None:
            alerts += self._spikes.advance(support_now)
        # SLAs run on the support stream's event time, which moves with its messages or, when idle, the wall.
        latest = support_now or self._support_clock.latest
        if latest is not None:
            alerts += self._sla.due(latest)
        return Output(alerts)

    async def _durably(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        await until_stored(
            what, fn, *args, executor=self._io_executor, metrics=self._metrics, watchdog=self._watchdog,
            retry_max_s=self._retry_max_s,
        )

    async def emit(self, out: Output) -> None:
        """Publish tickets and alerts, then store them (retried until stored), then offer alerts to the webhook."""
        if not out:
            return
        futures = [
            await self._queue_topics[t.queue].send(key=t.message_id.encode(), value=t.model_dump_json().encode())
            for t in out.tickets
        ]
        futures += [
            await self._alerts_topic.send(key=a.id.encode(), value=a.model_dump_json().encode()) for a in out.alerts
        ]
        await asyncio.gather(*futures)
        if out.tickets:
            await self._durably("writing triage tickets", self._triage_store.write_tickets, out.tickets)
        if out.alerts:
            await self._durably("writing alerts", self._store.write_alerts, out.alerts)
        for a in out.alerts:
            self._metrics.alerts.labels(a.kind, a.rule, a.severity.value).inc()
            log.warning("alert %s %s %s %s", a.severity.value, a.rule, a.ticker or a.intent, a.id)
            if self._webhook is not None:
                self._webhook.offer(a)

    async def store_acks(self, acks: Sequence[TicketAck]) -> None:
        if acks:
            await self._durably("writing ticket acks", self._triage_store.write_acks, acks)


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
    watchdog: ProgressWatchdog,
) -> None:
    """Add the alerting and ticket-ack agents, their timer and (when configured) the webhook task to ``app``."""
    rules = load_rules(settings)
    webhook = (
        WebhookNotifier(settings.alert_webhook_url, settings.alert_webhook_timeout_s, metrics)
        if settings.alert_webhook_url
        else None
    )
    mapping = load_triage_mapping(triage_scorer.labels, settings.triage_mapping_path or DEFAULT_PATH)
    card = ModelRegistry(settings.registry_dir).card("triage", triage_scorer.model_version)
    processor = AlertingProcessor(
        rules=rules,
        mapping=mapping,
        min_confidence_setting=settings.triage_min_confidence,
        calibrated_min_confidence=calibrated_threshold(card),
        alerts_topic=app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes),
        queue_topics={
            q: app.topic(queue_topic(settings.topic_triage_prefix, q), key_type=bytes, value_type=bytes)
            for q in (*mapping.queues, HUMAN_TRIAGE)
        },
        store=store,
        metrics=metrics,
        io_executor=io_executor,
        retry_max_s=settings.clickhouse_retry_max_s,
        webhook=webhook,
        watchdog=watchdog,
    )
    log.info("triage: below confidence %.3f a ticket goes to %s", processor.min_confidence, HUMAN_TRIAGE)
    watcher = RulesWatcher(settings.alert_rules_path) if settings.alert_rules_path else None

    async def alert_stream(stream: StreamT) -> None:
        async for events in stream.noack_take(settings.batch_max, within=settings.batch_within_s):
            await processor.emit(processor.feed([e.message.value for e in events], time.monotonic()))
            for event in events:
                await stream.ack(event)
            watchdog.beat(time.monotonic())  # the scored topic's lag counts in the watchdog's check too

    app.agent(scored_topic, name="vigil.alerts", concurrency=1)(alert_stream)

    async def ack_stream(stream: StreamT) -> None:
        async for events in stream.noack_take(settings.batch_max, within=settings.batch_within_s):
            await processor.store_acks(processor.acknowledge([e.message.value for e in events]))
            for event in events:
                await stream.ack(event)
            watchdog.beat(time.monotonic())

    acks_topic = app.topic(settings.topic_ticket_acks, key_type=bytes, value_type=bytes)
    app.agent(acks_topic, name="vigil.ticket_acks", concurrency=1)(ack_stream)

    @app.timer(_TICK_S)
    async def alert_clock() -> None:
        if watcher is not None:
            reload_rules(processor, watcher)
        await processor.emit(processor.tick(time.monotonic()))

    if webhook is not None:
        app.task(webhook.run)
