"""The faust app: one scoring agent per message kind, the alerting agent on the scored topic, the
feedback agents (label queue, drift; feedback/agent.py), a watchdog timer and, on a legacy-18
ClickHouse schema, the retention prune; nothing else.

Everything here wires parts together; the logic lives in streams/pipeline.py (scoring),
streams/alerting (alerts), streams/watchdog.py (stalls) and streams/clickhouse (storage).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import faust
from aiokafka.errors import KafkaError
from faust.types import TP

from feedback.agent import register_feedback
from models.scoring import Scorer
from streams.agents import BatchProcessor
from streams.alerting.agent import register_alerting
from streams.batching import crash_worker, pipelined_agent
from streams.clickhouse import ClickHouseError, ClickHouseStore, CompatLevel
from streams.clickhouse.migrations import load_migrations
from streams.clickhouse.retention import expiries, prune_expired
from streams.contracts import Kind
from streams.kafka_config import faust_broker_credentials
from streams.kafka_fetch import FetchWaitApp
from streams.kafka_lag import partition_lag
from streams.metrics import Metrics
from streams.pipeline import Limits
from streams.settings import VigilSettings
from streams.tickers import CompanyDictionary
from streams.watchdog import Watchdogs

log = logging.getLogger(__name__)


class ConsumerStalled(RuntimeError):
    """The watchdog saw no progress while messages waited; the supervisor should restart the worker."""


async def consumer_lag(app: faust.App) -> dict[str, int]:
    """Messages on the assigned partitions past the last committed offset, per topic. A partition
    the group has not committed yet is asked for its start, where the consumer began reading it."""
    consumer = app.consumer
    ends = {tp: end for tp in consumer.assignment() if (end := consumer.highwater(tp)) is not None}
    committed = {tp: consumer._committed_offset.get(tp) for tp in ends}  # faust keeps no public accessor for it
    uncommitted = [tp for tp, done in committed.items() if done is None]
    starts: Mapping[TP, int] = {}
    if uncommitted:
        try:
            starts = await consumer.earliest_offsets(*uncommitted)
        except (KafkaError, TimeoutError) as exc:
            log.warning("consumer lag leaves out %d partitions never committed: their start offsets could not be "
                        "read: %r", len(uncommitted), exc)
    return lag_per_topic({tp: (committed[tp], starts.get(tp), end) for tp, end in ends.items()})


def lag_per_topic(partitions: Mapping[TP, tuple[int | None, int | None, int]]) -> dict[str, int]:
    """Lag per topic from each partition's (committed offset, start, end), counted as `vigil status`
    counts it (kafka_lag.partition_lag): a partition never committed counts from its start (none
    when that is not known), not from 0. Whatever retention deleted, or a group whose offsets
    expired, would otherwise show as lag that never shrinks, and the watchdog restart the worker
    for it again and again."""
    lag: dict[str, int] = defaultdict(int)
    for tp, (committed, start, end) in partitions.items():
        if committed is None and start is None:
            continue
        lag[tp.topic] += partition_lag(committed, start if start is not None else committed, end)
    return dict(lag)


def worker_app(settings: VigilSettings, bootstrap: str) -> FetchWaitApp:
    """The worker's faust app, configured and empty: create_app adds its agents."""
    return FetchWaitApp(
        settings.consumer_group,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        broker=[f"kafka://{host}" for host in bootstrap.split(",")],
        broker_credentials=faust_broker_credentials(settings),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # faust's 60 s defaults leave a killed worker's partitions idle for two minutes.
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_session_timeout_s / 3,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_s,
        stream_buffer_maxsize=settings.batch_max * 4,
        # faust cancels the agents on stop rather than waiting for their buffered messages; each
        # agent still finishes the batch in hand (streams.batching.process_batches), so what it
        # published is stored and acked. The rest is un-acked and comes again after a restart.
        stream_wait_empty=False,
        # The embedded broker's fetches cost in proportion to the batches a partition holds, and
        # faust's defaults (no linger, 16 KB) split a micro-batch of scored records into dozens.
        producer_linger=settings.kafka_producer_linger_ms / 1000,
        producer_max_batch_size=settings.kafka_producer_max_batch_bytes,
        datadir=str(settings.data_dir / "faust"),
    )


def create_app(
    settings: VigilSettings,
    bootstrap: str,
    scorers: Mapping[Kind, Callable[[], Scorer]],
    store: ClickHouseStore,
    metrics: Metrics,
    shadows: Mapping[Kind, Scorer] | None = None,
    watchdogs: Watchdogs | None = None,
) -> faust.App:
    app = worker_app(settings, bootstrap)
    watchdogs = watchdogs or Watchdogs(settings.watchdog_stall_s, started_at=time.monotonic())
    # One model thread: the engine already spreads a call over every core (its lanes, or the GPU).
    model_executor = ThreadPoolExecutor(1, thread_name_prefix="vigil-model")
    io_executor = ThreadPoolExecutor(2, thread_name_prefix="vigil-io")
    scored_topic = app.topic(settings.topic_scored, key_type=bytes, value_type=bytes)
    dlq_topic = app.topic(settings.topic_dlq, key_type=bytes, value_type=bytes)
    limits = Limits(settings.max_message_bytes, settings.max_text_chars, settings.max_tickers_per_message,
                    settings.max_event_ahead_s)
    path = settings.ticker_dictionary_path
    companies = CompanyDictionary.from_json(path) if path is not None else None

    for kind, topic_name in settings.raw_topics.items():
        watchdog = watchdogs.watch(topic_name)
        processor = BatchProcessor(
            kind=Kind(kind),
            scorer=scorers[Kind(kind)],
            store=store,
            limits=limits,
            scored_topic=scored_topic,
            dlq_topic=dlq_topic,
            watchdogs=watchdogs,
            metrics=metrics,
            model_executor=model_executor,
            io_executor=io_executor,
            retry_max_s=settings.clickhouse_retry_max_s,
            shadow=(shadows or {}).get(Kind(kind)),
            companies=companies,
        )
        topic = app.topic(topic_name, key_type=bytes, value_type=bytes)
        app.agent(topic, name=f"vigil.score.{kind}", concurrency=1)(
            pipelined_agent(processor.prepare_events, processor.commit, settings, watchdog)
        )

    register_alerting(
        app,
        settings,
        scored_topic=scored_topic,
        triage_scorer=scorers[Kind.support](),
        store=store,
        metrics=metrics,
        io_executor=io_executor,
        watchdogs=watchdogs,
    )
    register_feedback(
        app, settings, scored_topic=scored_topic, store=store, metrics=metrics, io_executor=io_executor,
        watchdogs=watchdogs,
    )

    if store.level is CompatLevel.legacy_18:
        register_retention(app, settings, store, io_executor)

    @app.timer(settings.watchdog_interval_s)
    async def watch_progress() -> None:
        lags = await consumer_lag(app)
        metrics.set_consumer_lag(lags)
        stalls = watchdogs.check(time.monotonic(), lags)
        for stall in stalls:
            metrics.stalls.inc()
            log.critical("watchdog: %s", stall)
        if stalls and settings.watchdog_exit_on_stall:
            await crash_worker(app, ConsumerStalled("; ".join(map(str, stalls))))

    return app


def register_retention(app: faust.App, settings: VigilSettings, store: ClickHouseStore,
                       io_executor: ThreadPoolExecutor) -> None:
    """The group leader deletes expired rows every interval, standing in for the TTL that 18.16
    lacks (streams/clickhouse/retention.py). A failed prune is logged and tried again next time:
    the rows only wait longer."""
    expiring = expiries(load_migrations(), settings.clickhouse_ttl_days)

    def prune() -> None:
        prune_expired(store.backend, database=store.database, level=store.level, expiring=expiring,
                      cluster=settings.clickhouse_cluster)

    @app.timer(settings.clickhouse_prune_interval_s, on_leader=True)
    async def prune_expired_rows() -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(io_executor, prune)
        except ClickHouseError as exc:
            log.warning("retention prune failed, trying again in %.0fs: %s", settings.clickhouse_prune_interval_s, exc)
