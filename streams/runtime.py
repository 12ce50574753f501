"""The embedded stack: a Tansu broker when no Kafka is configured, and the topics Vigil needs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from models.triage_mapping import DEFAULT_PATH, read_triage_mapping
from streams.alerting.triage import triage_topics
from streams.broker import EmbeddedBroker
from streams.kafka_config import client_kwargs
from streams.settings import VigilSettings
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def all_topics(settings: VigilSettings) -> list[str]:
    return [
        settings.topic_news, settings.topic_support, settings.topic_scored, settings.topic_dlq, settings.topic_alerts,
        settings.ticker_events_topic, settings.intent_events_topic,
        settings.label_candidates_topic, settings.topic_label_requests, settings.topic_corrections,
        settings.topic_model_events,
        settings.topic_ticket_acks, *triage_topics(settings.topic_triage_prefix, read_triage_mapping(settings.triage_mapping_path or DEFAULT_PATH)),
    ]


@dataclass(frozen=True)
class Kafka:
    """The Kafka that Vigil runs on: its bootstrap address, and the embedded broker when it is one."""

    bootstrap: str
    embedded: EmbeddedBroker | None = None

    def check_alive(self) -> None:
        """Raise BrokerDied once the embedded broker has exited. A configured Kafka is not watched:
        it keeps its data, and the workers' clients reconnect when it comes back."""
        if self.embedded is not None:
            self.embedded.check_alive()


@contextmanager
def kafka_bootstrap(settings: VigilSettings) -> Iterator[Kafka]:
    """The Kafka with Vigil's topics in place, starting Tansu if none is configured."""
    if settings.kafka_brokers:
        ensure_topics(settings.kafka_brokers, all_topics(settings), settings.topic_partitions, **client_kwargs(settings))
        yield Kafka(settings.kafka_brokers)
        return
    with EmbeddedBroker(log_dir=settings.data_dir / "logs") as broker:
        log.info("embedded Kafka-compatible broker (Tansu) on %s", broker.bootstrap)
        ensure_topics(broker.bootstrap, all_topics(settings), settings.topic_partitions)
        yield Kafka(broker.bootstrap, broker)
