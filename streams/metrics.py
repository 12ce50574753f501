"""Prometheus metrics of a worker. One registry per worker, so tests and several apps in one
process do not collide in the global default registry."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from streams.contracts import Kind
from streams.pipeline import BatchResult

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
# A message may wait in Kafka behind a backlog, or for a restarted worker, for minutes.
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("vigil_messages_in_total", "Raw messages consumed", ["kind"], registry=r)
        self.messages_scored = Counter("vigil_messages_scored_total", "Messages scored", ["kind", "label"], registry=r)
        self.dead_letters = Counter("vigil_dead_letters_total", "Messages refused", ["kind", "reason"], registry=r)
        self.batch_size = Histogram(
            "vigil_batch_size", "Messages per micro-batch", ["kind"],
            buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 4096), registry=r,
        )
        self.batch_seconds = Histogram(
            "vigil_batch_seconds",
            "A micro-batch from decode to stored, with any wait for the batch before it to commit", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.scoring_seconds = Histogram(
            "vigil_scoring_seconds", "The model's time on a micro-batch: its texts scored (and by a shadow model), "
            "without decoding, storage, publishing or the wait for the model thread", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.e2e_seconds = Histogram(
            "vigil_e2e_seconds", "From a message's arrival in Vigil (its raw record's Kafka timestamp, the scored "
            "message's ingest_time) to its scored row stored in ClickHouse, per message", ["kind"],
            buckets=_E2E_BUCKETS, registry=r,
        )
        self.tickers_dropped = Counter(
            "vigil_tickers_dropped_total", "Tickers of news items past VIGIL_MAX_TICKERS_PER_MESSAGE, not judged",
            registry=r,
        )
        self.storage_errors = Counter("vigil_storage_errors_total", "Failed ClickHouse calls (retried)", registry=r)
        self.consumer_lag = Gauge(
            "vigil_consumer_lag", "Messages not yet committed on the partitions assigned to this worker", ["topic"],
            registry=r,
        )
        self._lag_topics: set[str] = set()
        self.stalls = Counter("vigil_consumer_stalls_total", "Stalls detected by the watchdog", registry=r)
        self.alerts = Counter("vigil_alerts_total", "Alerts emitted", ["kind", "rule", "severity"], registry=r)
        self.alert_late_messages = Counter(
            "vigil_alert_late_messages_total", "Scored news too late for their alert windows (dropped)", registry=r
        )
        self.webhook_sent = Counter("vigil_webhook_sent_total", "Alerts delivered to the webhook", registry=r)
        self.webhook_failed = Counter("vigil_webhook_failed_total", "Alerts the webhook refused after retries", registry=r)
        self.webhook_dropped = Counter(
            "vigil_webhook_dropped_total", "Alerts not sent because the webhook queue was full", registry=r
        )
        self.webhook_unsent = Counter(
            "vigil_webhook_unsent_total", "Alerts still queued or in flight when the worker stopped, after "
            "VIGIL_ALERT_WEBHOOK_DRAIN_S", registry=r,
        )
        self.label_candidates = Counter(
            "vigil_label_candidates_total", "Scored messages with a selection reason, before budget, "
            "balance and de-duplication (alert evidence included)", ["task"], registry=r,
        )
        self.label_requests = Counter(
            "vigil_label_requests_total", "Messages sent to the label queue, per reason", ["task", "reason"], registry=r
        )
        self.corrections = Counter("vigil_corrections_total", "Human labels received", ["task", "source"], registry=r)
        self.model_events = Counter(
            "vigil_model_events_total", "Drift detections, swaps and other model events", ["task", "kind"], registry=r
        )
        self.model_behind_champion = Gauge(
            "vigil_model_behind_champion", "1 while the champion is refused (it failed to load or its self "
            "test) and an earlier version scores instead", ["task"], registry=r,
        )
        self.model = Info("vigil_model", "Model versions in use", registry=r)

    def observe_batch(self, kind: Kind, n_records: int, result: BatchResult, seconds: float,
                      stored_at: datetime) -> None:
        """A micro-batch whose scored rows were stored at ``stored_at``."""
        k = kind.value
        self.messages_in.labels(k).inc(n_records)
        self.batch_size.labels(k).observe(n_records)
        self.batch_seconds.labels(k).observe(seconds)
        e2e = self.e2e_seconds.labels(k)
        for m in result.scored:
            e2e.observe(max(0.0, (stored_at - m.ingest_time).total_seconds()))  # a producer clock ahead reads 0
        for label, n in Tally(m.label for m in result.scored).items():
            self.messages_scored.labels(k, label).inc(n)
        for reason, n in Tally(d.reason.value for d in result.dead).items():
            self.dead_letters.labels(k, reason).inc(n)
        self.tickers_dropped.inc(result.tickers_dropped)

    def set_consumer_lag(self, lags: Mapping[str, int]) -> None:
        """The lag of each topic read here; a topic no longer assigned here has no sample."""
        for gone in self._lag_topics - lags.keys():
            self.consumer_lag.remove(gone)
        for topic, n in lags.items():
            self.consumer_lag.labels(topic).set(n)
        self._lag_topics = set(lags)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)
