"""Prometheus metrics of a labelling-service instance, served on its own port at ``/metrics``
(no token: they hold counts, no text or names). One registry per service, as for the worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from feedback.ownership import QueueOwnership


class UiMetrics:
    def __init__(self, ownership: QueueOwnership) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
