"""Prometheus metrics of a labelling-service instance, served on its own port at ``/metrics``
(no token: they hold counts, no text or names). One registry per service, as for the worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from feedback.ownership import QueueOwnership

QueueDepth = Callable[[], Mapping[str, Mapping[str, int]]]  # task -> state -> items


class _QueueItems(Collector):
    def __init__(self, depth: QueueDepth) -> None:
        self._depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "vigil_label_queue_items", "Items in the labelling queue by task and state (open: waiting for an "
            "annotator, leased: being labelled), as the queue's owner last read them; other instances report none",
            labels=["task", "state"],
        )
        for task, states in sorted(self._depth().items()):
            for state, n in sorted(states.items()):
                family.add_metric([task, state], n)
        yield family


class UiMetrics:
    def __init__(self, ownership: QueueOwnership, queue_depth: QueueDepth = dict) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_QueueItems(queue_depth))
        owner = Gauge("vigil_label_queue_owner", "1 while this instance owns the labelling queue", registry=r)
        owner.set_function(lambda: float(ownership.owns))
        self.takeovers = Counter("vigil_label_queue_takeovers_total", "Times this instance took the queue over",
                                 registry=r)
        self.unconfirmed = Counter(
            "vigil_label_queue_unconfirmed_total", "Queue changes turned away (503) because Kafka did not confirm "
            "that this instance still owns the queue", registry=r,
        )
        self.forwarded = Counter(
            "vigil_label_forwarded_total", "Queue calls forwarded to the owner, by outcome: answered (any status "
            "the owner gave), unreachable (503 to the caller), or refused (the owner is not known or is being "
            "changed; 503)", ["outcome"], registry=r,
        )
