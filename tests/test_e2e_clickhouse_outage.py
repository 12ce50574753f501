"""Fault test on the real parts: clickhouse-server (Debian's 18.16) stopped for 30 s mid-stream
while messages keep arriving on Kafka.

While it is down the worker must pause, and know it waits (no watchdog takes it for a stall): no new batch completes (its own vigil_messages_in_total
stays put and nothing more reaches the scored topic), the group's committed offsets stay put, and
it keeps retrying (vigil_storage_errors_total grows). Pausing is what bounds its memory: what it
holds is the in-flight batch per kind plus faust's bounded stream buffer, not the backlog on
Kafka. Its RSS, read from /proc during the outage, is reported. After the server returns, every
message is in ClickHouse exactly once under FINAL.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from streams.follow import Tracker, following, wait_for
from streams.replay import replay
from streams.settings import VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import (
    assert_exactly_once,
    committed_total,
    free_port,
    ids_of,
    metric_total,
    real_messages,
    rss_kib,
    stack_env,
    use_stack,
)

pytestmark = pytest.mark.slow
OUTAGE_S = 30.0
SETTLE_S = 5.0  # the batch in flight when the server stopped may still have been finishing


@pytest.fixture
def worker_on_server(tmp_path: Path, tiny_registry: Path, kafka_broker, clickhouse_server, monkeypatch):
    env = stack_env(
        tmp_path, kafka_broker.bootstrap, clickhouse_server.up(), partitions=2,
        VIGIL_CLICKHOUSE_RETRY_ATTEMPTS="2", VIGIL_CLICKHOUSE_RETRY_MAX_S="2",
        # A third of the outage: every agent's watchdog must hear that the worker waits on ClickHouse,
        # including the agents that only queue behind the ones waiting.
        VIGIL_WATCHDOG_STALL_S="10", VIGIL_WATCHDOG_INTERVAL_S="1",
    )
    settings = use_stack(env, monkeypatch, tiny_registry)
    port = free_port()
    worker = WorkerProcess(kafka_broker.bootstrap, tmp_path / "worker.log", env, ("--metrics-port", str(port)))
    yield settings, worker, port, clickhouse_server
    worker.stop(timeout_s=10)
    clickhouse_server.up()


def _sample(settings: VigilSettings, worker: WorkerProcess, port: int, tracker: Tracker) -> dict:
    return {
        "t": time.monotonic(),
        "in": metric_total(port, "vigil_messages_in_total"),
        "errors": metric_total(port, "vigil_storage_errors_total"),
        "scored_seen": len(tracker.scored),
        "committed": committed_total(settings),
        "rss_kib": rss_kib(worker.proc.pid),
    }


async def _stream_through_outage(settings, worker, port, server) -> dict:
    tracker = Tracker()
    async with following(settings, settings.kafka_brokers, tracker, from_start=True):
        bootstrap, topics = settings.kafka_brokers, settings.raw_topics
        warm = real_messages(settings, 30)
        await replay(bootstrap, topics, warm)
        assert await wait_for(tracker, len(warm), timeout_s=240), "the worker did not start scoring"

        stream = real_messages(settings, 1500, skip=len(warm))
        # 50 msg/s for 30 s: production goes on through the whole outage.
        producing = asyncio.create_task(replay(bootstrap, topics, stream, rate_per_s=50))
        while len(tracker.scored) < len(warm) + 200:
            await asyncio.sleep(0.05)
        samples = []
        with server.down():
            down_at = time.monotonic()
            while time.monotonic() - down_at < OUTAGE_S:
                await asyncio.sleep(1.0)
                samples.append(_sample(settings, worker, port, tracker))
        await producing
        finished = await wait_for(tracker, len(warm) + len(stream), timeout_s=300)
    assert finished, f"only {tracker.done} of {len(warm) + len(stream)} came out after ClickHouse returned"
    settled = [s for s in samples if s["t"] - down_at >= SETTLE_S]
    return {"tracker": tracker, "sent": warm + stream, "samples": samples, "settled": settled}


def test_clickhouse_down_30s_pauses_the_worker_and_loses_or_duplicates_nothing(worker_on_server):
    settings, worker, port, server = worker_on_server
    worker.start()
    r = asyncio.run(_stream_through_outage(settings, worker, port, server))
    first, last = r["settled"][0], r["settled"][-1]
    rss = [s["rss_kib"] for s in r["samples"]]
    print(f"worker RSS during the outage: {min(rss) / 1024:.0f}-{max(rss) / 1024:.0f} MiB over {len(rss)} samples")

    assert last["t"] - first["t"] >= OUTAGE_S - SETTLE_S - 3
    assert last["errors"] > first["errors"], "the worker should keep retrying ClickHouse while it is down"
    assert last["in"] == first["in"], "batches completed while ClickHouse was down"
    assert last["scored_seen"] == first["scored_seen"], "messages were scored while ClickHouse was down"
    assert last["committed"] == first["committed"], "offsets were committed while ClickHouse was down"
    assert first["committed"] < len(r["sent"])
    assert worker.alive(), "the worker should wait for ClickHouse, not exit"
    assert metric_total(port, "vigil_consumer_stalls_total") == 0, "waiting on ClickHouse was taken for a stall"

    expected = ids_of(r["sent"])
    assert set(r["tracker"].scored) == expected
    assert worker.stop() == 0
    assert_exactly_once(settings, expected)
