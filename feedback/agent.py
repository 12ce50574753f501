"""The feedback adapter: faust agents that feed the selection policy and the drift monitors, and
make what they produce durable. The logic lives in feedback/selection.py and feedback/drift.py.

- scored topic -> each message feeds the confidence and label-mix monitors; those with a selection
  reason go to the label-candidates topic, keyed by their text's fingerprint.
- alerts topic -> each alert's contributing messages, read back from ClickHouse (the scored row
  carries what a request needs), go to the label-candidates topic too, with their alert.
- label-candidates topic -> Selector -> LabelRequests to the label-requests topic (key: item id)
  and the label_queue table.
- corrections topic -> corrections of 'audit' items feed the audited-error monitor; their
  withdrawals (undo) take them out of it again.
- drift events (and drift_withdrawn, for those a withdrawal took back) -> the model-events topic
  and the model_events table.
- model-events topic -> retraining and champion changes (retrain_started, retrain_failed,
  gate_refused, promoted, rolled_back) counted in vigil_model_events_total: the training process,
  `vigil retrain` (cron) and `vigil models promote|rollback` record them and serve no metrics. Each
  event reaches one worker of the group; the kinds the workers record themselves (drift, swaps,
  starts, refusals) are counted where they happen, not again here.

Per micro-batch: publish (awaited), write to ClickHouse (retried until it succeeds), then ack the
offsets by hand (``streams.batching.process_batches``). A replay re-selects the same item ids
(uuid5 of task, message and model version), and the store never duplicates or reopens a queued
item, so label_queue shows each item once; the label-requests topic is at least once, keyed by
item id.

Selector and monitor state is in memory (bounded). Before its first batch, and again after each
rebalance, the selector reads back what the label queue holds from its kept hours, and keeps the
items of its own label-candidate partitions (the partition each text's fingerprint key goes to), so
neither a restart nor a partition moving between workers re-spends an hour's budget or re-queues a
text.
Likewise, before a task's first scored message (and its first audit label) its drift monitors
replay from ClickHouse, without events, up to ``VIGIL_DRIFT_WARM_START`` of the messages its model
version scored (of the audit labels) before that batch, so a change already under way is still
seen; the batch and what follows are read live, not twice. That history is every partition's:
stored rows keep the raw topic's partition, not the scored topic's that a worker owns.
With several workers each selects from its own partitions of the label-candidates topic and keeps
that share of the hourly budget, so together they keep the budget. Candidates are keyed by text
fingerprint, so every copy of a text meets in one selector and near-duplicates collapse across
workers, not only within one.
Support text on the scored topic is already PII-masked; requests mask it again (a no-op there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import faust
from aiokafka.partitioner import DefaultPartitioner
from faust.types import EventT, TopicT
from pydantic import BaseModel, ValidationError

from feedback.contracts import Correction, LabelCandidate, LabelRequest, ModelEvent, ModelEventKind, Task
from feedback.drift import DriftMonitor, audit_error
from feedback.selection import TASK_OF_KIND, Selector, fingerprint, policy_from_settings
from feedback.store import FeedbackStore
from streams.alerting.contracts import Alert
from streams.batching import batch_agent, pause_unless_stopping
from streams.clickhouse import ClickHouseStore
from streams.contracts import Kind, ScoredMessage
from streams.durable import until_stored
from streams.metrics import Metrics
from streams.settings import VigilSettings
from streams.watchdog import Watchdogs

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

KIND_OF_ALERT = {"sentiment": Kind.news, "triage": Kind.support}
# The scoring agent publishes a message before it writes it to ClickHouse, and alerting reads the
# topic: an alert can arrive before its messages are stored. Wait this long for them at most (a
# stop ends the wait: the alerts are not acked and come again after the restart).
_CONTRIBUTOR_WAIT_S = 30.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def candidate_partition(key: bytes, partitions: int) -> int:
    """The label-candidates partition a candidate keyed ``key`` goes to: ``propose`` leaves the
    partition to the producer, whose partitioner this is (faust's default, no
    producer_partitioner set)."""
    return DefaultPartitioner()(key, list(range(partitions)), [])


def _challenger_label(msg: ScoredMessage) -> str | None:
    """What the shadow challenger said, when one scored the message too."""
    return msg.shadow.label if msg.shadow is not None else None


# Counted off the model-events topic: recorded by processes that serve no metrics (see above).
COUNTED_FROM_TOPIC = frozenset({
    ModelEventKind.retrain_started, ModelEventKind.retrain_failed, ModelEventKind.gate_refused,
    ModelEventKind.promoted, ModelEventKind.rolled_back,
})


def decode_all(model: type[M], values: Sequence[bytes], topic: str) -> list[M]:
    out = []
    for value in values:
        try:
            out.append(model.model_validate_json(value))
        except ValidationError as exc:
            log.error("skipping a %s record that is not a %s: %s", topic, model.__name__, exc)
    return out


class FeedbackProcessor:
    def __init__(
        self,
        *,
        selector: Selector,
        drift: DriftMonitor,
        candidates_topic: TopicT,
        requests_topic: TopicT,
        model_events_topic: TopicT,
        store: ClickHouseStore,
        feedback: FeedbackStore,
        metrics: Metrics,
        io_executor: ThreadPoolExecutor,
        retry_max_s: float,
        watchdogs: Watchdogs,
        warm_start: int,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.selector = selector
        self._drift = drift
        self._candidates_topic = candidates_topic
        self._requests_topic = requests_topic
        self._model_events_topic = model_events_topic
        self._store = store
        self._feedback = feedback
        self._metrics = metrics
        self._io_executor = io_executor
        self._retry_max_s = retry_max_s
        self._watchdogs = watchdogs
        self._clock = clock
        self._remembered = False
        self._warm_start = warm_start
        self._warmed_scored: set[Task] = set()
        self._warmed_audit: set[Task] = set()
        self._warming = asyncio.Lock()

    async def _durably(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        return await until_stored(
            what, fn, *args, executor=self._io_executor, metrics=self._metrics, watchdogs=self._watchdogs,
            retry_max_s=self._retry_max_s,
        )

    def forget_selections(self) -> None:
        """After a rebalance: the fingerprints this worker now owns may have been another's, so the
        selector's history is read again before the next batch."""
        self.selector.forget()
        self._remembered = False

    async def remember_selections(self) -> None:
        """Before the first batch (and the first after a rebalance): the label queue's items of the
        selector's kept hours and its partitions (the queue holds every partition's)."""
        if self._remembered:
            return
        since = self._clock() - timedelta(hours=self.selector.policy.hours_kept)
        taken = self.selector.remember(
            await self._durably("reading recent selections", self._feedback.fetch_selections, since),
            candidate_partition,
        )
        self._remembered = True
        log.info("label selection: took %d items queued since %s as its history", taken, since.isoformat())

    async def warm_scored(self, messages: Sequence[ScoredMessage]) -> None:
        """Before each task's first scored message here: its monitors replay the stored messages the
        version now scoring it scored before this batch."""
        if not self._warm_start:
            return
        async with self._warming:  # one read per task even if agents were to overlap
            for kind in dict.fromkeys(m.kind for m in messages):
                task = TASK_OF_KIND[kind]
                if task in self._warmed_scored:
                    continue
                batch = [m for m in messages if m.kind is kind]
                version, before = batch[0].model_version, min(m.scored_time for m in batch)
                history = await self._durably("reading scored history", partial(
                    self._store.fetch_recent_scored, kind, version, before=before, limit=self._warm_start
                ))
                replayed = self._drift.warm_scored(task, version, history)
                self._warmed_scored.add(task)
                log.info("drift: %s model %s starts from its last %d scored messages before %s",
                         task, version, replayed, before.isoformat())

    async def warm_audit(self, task: Task, version: str, before: datetime) -> None:
        """Before a task's first audit label here: its audited-error monitor replays the stored
        labels of that version's audit items made before this batch."""
        if not self._warm_start:
            return
        async with self._warming:
            if task in self._warmed_audit:
                return
            history = await self._durably("reading audit history", partial(
                self._feedback.fetch_audit_corrections, task, version, before=before, limit=self._warm_start
            ))
            replayed = self._drift.warm_audit(task, version, history)
            self._warmed_audit.add(task)
        log.info("drift: %s model %s starts from its last %d audit labels before %s",
                 task, version, replayed, before.isoformat())

    async def on_scored(self, values: Sequence[bytes]) -> list[LabelCandidate]:
        messages = decode_all(ScoredMessage, values, "scored")
        await self.warm_scored(messages)
        candidates, events = [], []
        for msg in messages:
            if self.selector.reasons(msg, challenger_label=_challenger_label(msg)):
                candidates.append(LabelCandidate(message=msg))
            events += self._drift.observe_scored(
                TASK_OF_KIND[msg.kind], msg.model_version, msg.label, msg.confidence, msg.event_time
            )
        await self.propose(candidates)
        await self.emit(events)
        return candidates

    async def on_alerts(self, values: Sequence[bytes]) -> list[LabelCandidate]:
        alerts = decode_all(Alert, values, "alerts")
        candidates = [
            LabelCandidate(message=msg, alert_id=alert.id)
            for alert, contributors in zip(alerts, await self._contributors(alerts), strict=True)
            for msg in contributors
        ]
        await self.propose(candidates)
        return candidates

    async def on_candidates(self, values: Sequence[bytes]) -> list[LabelRequest]:
        await self.remember_selections()
        now = self._clock()
        requests = []
        for c in decode_all(LabelCandidate, values, "label candidates"):
            msg = c.message
            decision = self.selector.decide(msg, now, challenger_label=_challenger_label(msg), alert_id=c.alert_id)
            if decision.request is not None:
                requests.append(decision.request)
            elif c.alert_id is not None:
                log.info("alert %s: message %s not requested (%s)", c.alert_id, msg.id, decision.dropped)
        await self.request(requests)
        return requests

    async def _contributors(self, alerts: Sequence[Alert]) -> list[list[ScoredMessage]]:
        """Per alert, the stored scored messages behind it, as the alert's model version scored
        them. One read per kind for the whole batch, then one for what is still missing: urgent
        support intents alert on every message, so a read per alert would cost more than scoring."""
        missing = {(KIND_OF_ALERT[a.kind], m.id) for a in alerts for m in a.top_messages}
        stored: dict[tuple[Kind, str], list[ScoredMessage]] = defaultdict(list)
        deadline = time.monotonic() + _CONTRIBUTOR_WAIT_S
        while missing:
            for kind in {k for k, _ in missing}:
                ids = [i for k, i in missing if k == kind]
                for m in await self._durably("reading alert contributors", self._store.fetch_scored, kind, ids):
                    stored[(kind, m.id)].append(m)
            missing -= stored.keys()
            if not missing or time.monotonic() > deadline:
                break
            self._watchdogs.excuse(time.monotonic())  # waiting on the scoring agents' writes
            await pause_unless_stopping(0.5)
        out = []
        for alert in alerts:
            kind, found = KIND_OF_ALERT[alert.kind], {}
            for m in sorted(alert.top_messages, key=lambda m: m.id):
                versions = stored.get((kind, m.id))
                if versions:
                    found[m.id] = next((v for v in versions if v.model_version == alert.model_version), versions[0])
            if lost := {m.id for m in alert.top_messages} - set(found):
                log.error("alert %s: contributing messages %s are not in ClickHouse; not requested", alert.id, sorted(lost))
            out.append(list(found.values()))
        return out

    async def on_corrections(self, values: Sequence[bytes]) -> list[ModelEvent]:
        events = []
        corrections = decode_all(Correction, values, "corrections")
        first = min((c.created_at for c in corrections), default=None)
        for c in corrections:
            # A withdrawal is no correction, but the audited-error monitor counted the label it takes back.
            if not c.withdrawn:
                self._metrics.corrections.labels(c.task, c.source.value).inc()
            if c.item_id is None:
                continue
            item = await self._durably("reading a queue item", self._feedback.fetch_item, c.item_id)
            if item is not None and audit_error(c, item) is not None:
                await self.warm_audit(item.request.task, item.request.model_version, first)
                events += self._drift.observe_correction(c, item)
        await self.emit(events)
        return events

    async def on_model_events(self, values: Sequence[bytes]) -> None:
        for e in decode_all(ModelEvent, values, "model-events"):
            if e.kind in COUNTED_FROM_TOPIC:
                self._metrics.model_events.labels(e.task, e.kind.value).inc()

    async def propose(self, candidates: Sequence[LabelCandidate]) -> None:
        """Publish candidates keyed by text fingerprint: the selector owning that key sees every copy."""
        futures = [
            await self._candidates_topic.send(key=fingerprint(c.message.text), value=c.model_dump_json().encode())
            for c in candidates
        ]
        await asyncio.gather(*futures)
        for c in candidates:
            self._metrics.label_candidates.labels(TASK_OF_KIND[c.message.kind]).inc()

    async def request(self, requests: Sequence[LabelRequest]) -> None:
        if not requests:
            return
        futures = [
            await self._requests_topic.send(key=r.item_id.encode(), value=r.model_dump_json().encode())
            for r in requests
        ]
        await asyncio.gather(*futures)
        await self._durably("writing label requests", self._feedback.write_requests, requests)
        for r in requests:
            for reason in r.reasons:
                self._metrics.label_requests.labels(r.task, reason.value).inc()

    async def emit(self, events: Sequence[ModelEvent]) -> None:
        if not events:
            return
        futures = [
            await self._model_events_topic.send(key=e.event_id.encode(), value=e.model_dump_json().encode())
            for e in events
        ]
        await asyncio.gather(*futures)
        await self._durably("writing model events", self._feedback.write_model_events, events)
        for e in events:
            self._metrics.model_events.labels(e.task, e.kind.value).inc()
            log.warning("model event %s %s %s: %s", e.kind.value, e.task, e.model_version, e.detail)


def register_feedback(
    app: faust.App,
    settings: VigilSettings,
    *,
    scored_topic: TopicT,
    store: ClickHouseStore,
    metrics: Metrics,
    io_executor: ThreadPoolExecutor,
    watchdogs: Watchdogs,
) -> FeedbackProcessor:
    """Add the feedback agents (scored, alerts, corrections, model events) to ``app``."""

    def topic(name: str) -> TopicT:
        return app.topic(name, key_type=bytes, value_type=bytes)

    candidates_topic = topic(settings.label_candidates_topic)
    model_events_topic = topic(settings.topic_model_events)
    processor = FeedbackProcessor(
        selector=Selector(policy_from_settings(settings)),
        drift=DriftMonitor(),
        candidates_topic=candidates_topic,
        requests_topic=topic(settings.topic_label_requests),
        model_events_topic=model_events_topic,
        store=store,
        feedback=FeedbackStore(store),
        metrics=metrics,
        io_executor=io_executor,
        retry_max_s=settings.clickhouse_retry_max_s,
        watchdogs=watchdogs,
        warm_start=settings.drift_warm_start,
    )

    def on_values(topic: TopicT, name: str, handle: Callable[[Sequence[bytes]], Awaitable[object]]) -> None:
        async def values(events: list[EventT]) -> None:
            await handle([e.message.value for e in events])

        watchdog = watchdogs.watch(topic.get_topic_name())
        app.agent(topic, name=name, concurrency=1)(batch_agent(values, settings, watchdog))

    candidates_name = settings.label_candidates_topic

    @app.on_partitions_assigned.connect
    async def take_budget_share(_app: faust.App, assigned: set, **_: Any) -> None:
        owned = sorted(tp.partition for tp in assigned if tp.topic == candidates_name)
        total = app.consumer.topic_partitions(candidates_name) or settings.topic_partitions
        total = max(total, max(owned, default=-1) + 1)  # the count as far as the ids show it
        processor.selector.see_share(owned, total)
        processor.forget_selections()
        log.info("label selection: %d of %d label-candidate partitions here, so that share of each hour's budget",
                 len(owned), total)

    on_values(scored_topic, "vigil.feedback.scored", processor.on_scored)
    on_values(candidates_topic, "vigil.feedback.select", processor.on_candidates)
    on_values(topic(settings.topic_alerts), "vigil.feedback.alerts", processor.on_alerts)
    on_values(topic(settings.topic_corrections), "vigil.feedback.corrections", processor.on_corrections)
    on_values(model_events_topic, "vigil.feedback.model_events", processor.on_model_events)
    return processor
