"""The worker's Prometheus surface beyond what the agents' own tests check: end-to-end latency per
message, consumer lag per topic, and retraining and champion changes counted off the model-events
topic (recorded by processes that serve no metrics)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from feedback.agent import FeedbackProcessor
from feedback.contracts import ModelEvent, ModelEventKind
from feedback.selection import Selector, policy_from_settings
from feedback.store import FeedbackStore
from streams.app import create_app
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.metrics import Metrics
from streams.pipeline import BatchResult
from streams.settings import VigilSettings
from streams.watchdog import Watchdogs
from tests.test_drift_history_store import T0, scored


def test_end_to_end_latency_runs_from_each_messages_arrival_to_its_row_stored() -> None:
    """Only the whole batch's time was measured (vigil_batch_seconds), from decode on: not how long a
    message waited in Kafka before it, which is most of the end-to-end latency under a backlog."""
    metrics = Metrics()
    batch = BatchResult(scored=[
        scored(1).model_copy(update={"ingest_time": T0 - timedelta(seconds=1.5)}),
        scored(2).model_copy(update={"ingest_time": T0 - timedelta(seconds=40)}),
        scored(3).model_copy(update={"ingest_time": T0 + timedelta(seconds=3)}),  # the producer's clock is ahead
    ])
    metrics.observe_batch(Kind.news, 3, batch, 0.2, stored_at=T0)
    sample = metrics.registry.get_sample_value
    assert sample("vigil_e2e_seconds_count", {"kind": "news"}) == 3
    assert sample("vigil_e2e_seconds_sum", {"kind": "news"}) == 41.5
    assert [sample("vigil_e2e_seconds_bucket", {"kind": "news", "le": le}) for le in ("0.05", "2.0", "60.0")] == [1, 2, 3]


def test_consumer_lag_is_per_topic_and_a_topic_no_longer_read_here_has_none() -> None:
    metrics = Metrics()
    metrics.set_consumer_lag({"news": 12, "acks": 0})
    metrics.set_consumer_lag({"news": 3, "scored": 7})  # a rebalance took the acks topic's partitions away
    sample = metrics.registry.get_sample_value
    assert [sample("vigil_consumer_lag", {"topic": t}) for t in ("news", "scored", "acks")] == [3, 7, None]


def test_retraining_and_champion_changes_are_counted_off_the_model_events_topic(tmp_path, tiny_scorers) -> None:
    """The training process, `vigil retrain` from cron and `vigil models promote|rollback` record these,
    and serve no metrics: vigil_model_events_total only ever had the workers' drift and swaps."""
    settings = VigilSettings(data_dir=tmp_path, clickhouse_url=None)
    metrics = Metrics()

    def event(kind: ModelEventKind, task: str = "sentiment") -> bytes:
        return ModelEvent(kind=kind, task=task, model_version="v2", created_at=T0).model_dump_json().encode()

    values = [event(ModelEventKind.retrain_started), event(ModelEventKind.gate_refused),
              event(ModelEventKind.retrain_started), event(ModelEventKind.promoted),
              event(ModelEventKind.rolled_back, "triage"), event(ModelEventKind.retrain_failed, "triage"),
              event(ModelEventKind.drift), event(ModelEventKind.swapped),  # counted where they happen
              event(ModelEventKind.retrain_started).replace(b"retrain_started", b"a_newer_kind"), b"not json"]
    with open_store(settings) as store, ThreadPoolExecutor(1) as executor:
        proc = FeedbackProcessor(
            selector=Selector(policy_from_settings(settings)), drift=None, candidates_topic=None,
            requests_topic=None, model_events_topic=None, store=store, feedback=FeedbackStore(store),
            metrics=metrics, io_executor=executor, retry_max_s=1.0,
            watchdogs=Watchdogs(60, started_at=time.monotonic()), warm_start=0,
        )
        asyncio.run(proc.on_model_events(values))
        scorers = {Kind.news: lambda: tiny_scorers["sentiment"], Kind.support: lambda: tiny_scorers["triage"]}
        app = create_app(settings, "127.0.0.1:9", scorers, store, Metrics())
    counted = {(s.labels["task"], s.labels["kind"]): s.value
               for s in metrics.model_events.collect()[0].samples if s.name.endswith("_total")}
    assert counted == {("sentiment", "retrain_started"): 2, ("sentiment", "gate_refused"): 1,
                       ("sentiment", "promoted"): 1, ("triage", "rolled_back"): 1, ("triage", "retrain_failed"): 1}
    assert settings.topic_model_events in {agent.channel.get_topic_name() for agent in app.agents.values()}
