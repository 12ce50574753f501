"""A faust app whose Kafka consumer holds an empty fetch for ``VIGIL_KAFKA_FETCH_MAX_WAIT_MS``.

faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer. Kafka answers a waiting fetch as soon
as data arrives, so there the value costs nothing; Tansu, the embedded broker, answered a waiting
fetch across several partitions only when the wait ran out: measured here, a message offered at
150 msg/s to 4 partitions reached an aiokafka consumer after p50 387 ms / p99 755 ms with 1500, and
33 / 59 ms with 100. The worker has two such hops (raw -> scoring, scored -> alerting), so the
setting is the worker's, not faust's.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_fetch_max_wait_ms"):
            raise RuntimeError(
                f"aiokafka {aiokafka.__version__} keeps its fetch wait elsewhere; "
                "update streams/kafka_fetch.py for this version"
            )
        # aiokafka hands this to its Fetcher at start(), which has not run yet.
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class FetchWaitApp(faust.App):
    """``faust.App`` with ``fetch_max_wait_ms`` for its worker consumer as a keyword argument."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)
