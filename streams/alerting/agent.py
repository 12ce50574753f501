"""The alerting adapter: a faust agent on the scored topic that feeds the pure alerting core and
makes its alerts durable.

Per micro-batch: decode ScoredMessage JSON -> news into SentimentAlerter, support through route()
(priority alert, SLA tracking, intent spikes) -> publish alerts to the alerts topic (awaited) ->
write them to ClickHouse (retried until it succeeds) -> offer them to the webhook -> ack. A timer
moves event time on while the stream is quiet, closing windows and escalating SLAs.

State (open windows, baselines, cooldowns, open P1 tickets) lives in this process's memory: a
restart loses it, so windows open at the time are not judged, baselines warm up again and
unacknowledged tickets are not escalated. Alert ids are uuid5 of what they are about, so alerts
re-emitted after a replay collapse in the alerts table. It also assumes ONE alerting consumer:
with several workers each sees only its share of the scored partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import faust
from faust.types import StreamT, TopicT
from pydantic import ValidationError

from models.triage_mapping import TriageMapping, load_triage_mapping
from streams.alerting.contracts import Alert
from streams.alerting.rules import AlertRules, SentimentAlerter
from streams.alerting.triage import IntentSpikeDetector, SlaTracker, UnroutableIntent, priority_alert, route
from streams.alerting.webhook import WebhookNotifier
from streams.clickhouse import ClickHouseStore, StorageUnavailable
from streams.contracts import Kind, ScoredMessage
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


class AlertingProcessor:
    def __init__(
        self,
        *,
        rules: AlertRules,
        mapping: TriageMapping,
        min_confidence: float,
        alerts_topic: TopicT,
        store: ClickHouseStore,
        metrics: Metrics,
        io_executor: ThreadPoolExecutor,
        retry_max_s: float,
        webhook: WebhookNotifier | None,
        watchdog: ProgressWatchdog,
    ) -> None:
        self._rules = rules
        self._mapping = mapping
        self._min_confidence = min_confidence
        self._sentiment = SentimentAlerter(rules.sentiment)
        self._sla = SlaTracker(rules.triage.escalate_priorities)
        self._spikes = IntentSpikeDetector(rules.triage.intent_spike)
        window = rules.sentiment.window
        idle_s = (window.lateness_minutes + window.step_minutes) * 60
        self._news_clock = IdleClock(idle_s)
        self._support_clock = IdleClock(idle_s)
        self._alerts_topic = alerts_topic
        self._store = store
        self._metrics = metrics
        self._io_executor = io_executor
        self._retry_max_s = retry_max_s
        self._webhook = webhook
        self._watchdog = watchdog

    def feed(self, values: Sequence[bytes], wall: float) -> list[Alert]:
        alerts: list[Alert] = []
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
                alerts += fed.alerts
            else:
                self._support_clock.observe(msg.event_time, wall)
                alerts += self._triage(msg)
        return alerts

    def _triage(self, msg: ScoredMessage) -> list[Alert]:
        try:
            decision = route(msg, self._mapping, self._min_confidence)
        except UnroutableIntent as exc:
            log.error("%s", exc)
            return []
        self._sla.open(decision)
        alerts = [a for a in [priority_alert(decision, self._rules.triage.alert_priorities)] if a is not None]
        return alerts + self._spikes.feed(decision).alerts

    def tick(self, wall: float) -> list[Alert]:
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
        return alerts

    async def emit(self, alerts: Sequence[Alert]) -> None:
        """Publish, then store (retried until stored), then offer to the webhook."""
        if not alerts:
            return
        futures = [
            await self._alerts_topic.send(key=a.id.encode(), value=a.model_dump_json().encode()) for a in alerts
        ]
        await asyncio.gather(*futures)
        delay = 0.5
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(self._io_executor, self._store.write_alerts, alerts)
                break
            except StorageUnavailable as exc:
                self._metrics.storage_errors.inc()
                log.error("writing alerts failed, retrying in %.1fs (offsets stay uncommitted): %s", delay, exc)
                self._watchdog.beat(time.monotonic())  # waiting on a known dependency is not a stall
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
        for a in alerts:
            self._metrics.alerts.labels(a.kind, a.rule, a.severity.value).inc()
            log.warning("alert %s %s %s %s", a.severity.value, a.rule, a.ticker or a.intent, a.id)
            if self._webhook is not None:
                self._webhook.offer(a)


def load_rules(settings: VigilSettings) -> AlertRules:
    return AlertRules.from_file(settings.alert_rules_path) if settings.alert_rules_path else AlertRules()


def register_alerting(
    app: faust.App,
    settings: VigilSettings,
    *,
    scored_topic: TopicT,
    triage_labels: Sequence[str],
    store: ClickHouseStore,
    metrics: Metrics,
    io_executor: ThreadPoolExecutor,
    watchdog: ProgressWatchdog,
) -> None:
    """Add the alerting agent, its timer and (when configured) the webhook task to ``app``."""
    rules = load_rules(settings)
    webhook = (
        WebhookNotifier(settings.alert_webhook_url, settings.alert_webhook_timeout_s, metrics)
        if settings.alert_webhook_url
        else None
    )
    processor = AlertingProcessor(
        rules=rules,
        mapping=load_triage_mapping(triage_labels),
        min_confidence=(
            rules.triage.min_confidence if settings.triage_min_confidence is None else settings.triage_min_confidence
        ),
        alerts_topic=app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes),
        store=store,
        metrics=metrics,
        io_executor=io_executor,
        retry_max_s=settings.clickhouse_retry_max_s,
        webhook=webhook,
        watchdog=watchdog,
    )

    async def alert_stream(stream: StreamT) -> None:
        async for events in stream.noack_take(settings.batch_max, within=settings.batch_within_s):
            await processor.emit(processor.feed([e.message.value for e in events], time.monotonic()))
            for event in events:
                await stream.ack(event)
            watchdog.beat(time.monotonic())  # the scored topic's lag counts in the watchdog's check too

    app.agent(scored_topic, name="vigil.alerts", concurrency=1)(alert_stream)

    @app.timer(_TICK_S)
    async def alert_clock() -> None:
        await processor.emit(processor.tick(time.monotonic()))

    if webhook is not None:
        app.task(webhook.run)
