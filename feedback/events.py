"""Recording model events from outside the worker (the retrain job, `vigil models promote`): a row
in ClickHouse's model_events and a message on the model-events topic (key: the task).

The topic is for consumers that react (dashboards, other services); workers do NOT rely on it to
hot swap, because a topic message reaches only one member of a consumer group: they poll the
registry's champion pointer instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import nullcontext

from feedback.contracts import ModelEvent
from streams.settings import VigilSettings

log = logging.getLogger(__name__)


async def send_model_events(settings: VigilSettings, bootstrap: str, events: Sequence[ModelEvent]) -> None:
    from aiokafka import AIOKafkaProducer

    from streams.kafka_config import client_kwargs

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client_kwargs(settings))
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(settings.topic_model_events, key=e.task.encode(),
                                         value=e.model_dump_json().encode())
    finally:
        await producer.stop()


def publish_model_events(settings: VigilSettings, events: Sequence[ModelEvent]) -> bool:
    """Send ``events`` to the model-events topic; False (and a log line) when no broker is
    configured, since a one-off command has no embedded broker to send to."""
    if not events:
        return True
    if not settings.kafka_brokers:
        log.info("VIGIL_KAFKA_BROKERS is unset: %d model event(s) stored in ClickHouse only", len(events))
        return False
    asyncio.run(send_model_events(settings, settings.kafka_brokers, events))
    return True


def record_model_events(settings: VigilSettings, events: Sequence[ModelEvent], store=None) -> None:
    """Store then publish. ``store``: an open FeedbackStore, else one is opened (and closed) here."""
    if not events:
        return
    from feedback.store import open_feedback_store

    with nullcontext(store) if store is not None else open_feedback_store(settings) as opened:
        opened.write_model_events(events)
    publish_model_events(settings, events)
