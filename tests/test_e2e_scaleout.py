"""Scale-out on the real parts: two worker processes in one consumer group on the Tansu broker,
sharing Debian's clickhouse-server 18.16 (two processes cannot open one chdb directory).

Both workers must hold partitions (each one's own /metrics shows it consumed), then one is
SIGKILLed mid-stream and not restarted: the survivor takes over its partitions after the session
timeout, and every message comes out on the scored topic and is stored. What the victim had done
but not committed, the survivor does again: the topic holds it twice, and so do ClickHouse's rows
until a merge collapses them (reads use FINAL). At least once is the promise; the counts are printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from streams.follow import Tracker, following, wait_for
from streams.replay import replay
from streams.settings import VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import (
    copies,
    free_port,
    ids_of,
    metric_total,
    real_messages,
    stack_env,
    stored_id_counts,
    use_stack,
)

pytestmark = pytest.mark.slow
IN = "vigil_messages_in_total"


@pytest.fixture
def two_workers(tmp_path: Path, tiny_registry: Path, kafka_broker, clickhouse_server, monkeypatch):
    env = stack_env(tmp_path, kafka_broker.bootstrap, clickhouse_server.up(), partitions=4)
    settings = use_stack(env, monkeypatch, tiny_registry)
    ports = [free_port(), free_port()]
    workers = [
        WorkerProcess(kafka_broker.bootstrap, tmp_path / f"worker-{i}.log", {**env, "VIGIL_WORKER_ID": f"w{i}"},
                      ("--metrics-port", str(ports[i])))
        for i in range(2)
    ]
    yield settings, workers, ports
    for w in workers:
        w.stop(timeout_s=10)


def _metric(port: int) -> float:
    try:
        return metric_total(port, IN)
    except OSError:
        return 0.0  # not serving yet: still loading its models


async def _scale_out_and_kill(settings: VigilSettings, workers: list[WorkerProcess], ports: list[int]) -> dict:
    tracker = Tracker()
    async with following(settings, settings.kafka_brokers, tracker, from_start=True):
        bootstrap, topics = settings.kafka_brokers, settings.raw_topics
        sent = []
        # Warm-up rounds until both workers have consumed: the group has settled with partitions on each.
        deadline = time.monotonic() + 240
        round_no = 0
        while not all(_metric(p) > 0 for p in ports):
            assert time.monotonic() < deadline, f"not both workers consumed: {[_metric(p) for p in ports]}"
            batch = real_messages(settings, 24, skip=24 * round_no)
            round_no += 1
            await replay(bootstrap, topics, batch)
            sent += batch
            await asyncio.sleep(2.0)
        assert await wait_for(tracker, len(sent), timeout_s=120)
        before = [_metric(p) for p in ports]

        stream = real_messages(settings, 900, skip=24 * round_no)
        sent += stream
        producing = asyncio.create_task(replay(bootstrap, topics, stream, rate_per_s=60))
        victim = workers[0]
        while len(tracker.scored) < len(sent) - len(stream) * 2 // 3:
            await asyncio.sleep(0.05)
        victim_consumed = _metric(ports[0])
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        at_kill = len(tracker.scored)
        survivor_at_kill = _metric(ports[1])
        await producing
        finished = await wait_for(tracker, len(sent), timeout_s=300)
    assert finished, f"only {tracker.done} of {len(sent)} messages came out after the kill"
    return {"tracker": tracker, "sent": sent, "before": before, "victim_consumed": victim_consumed,
            "at_kill": at_kill, "survivor_at_kill": survivor_at_kill, "survivor_end": _metric(ports[1])}


def test_two_workers_share_partitions_and_the_survivor_takes_over_after_sigkill(two_workers):
    settings, workers, ports = two_workers
    for w in workers:
        w.start()
    r = asyncio.run(_scale_out_and_kill(settings, workers, ports))

    assert all(n > 0 for n in r["before"]), "both workers should have held partitions"
    assert r["victim_consumed"] > r["before"][0], "the victim was consuming the stream when it was killed"
    assert r["at_kill"] < len(r["sent"]), "the stream finished before the kill"
    assert workers[1].alive() and not workers[0].alive()
    # Production went on for seconds after the kill, onto every partition, the victim's included:
    # with the victim dead, all of it being scored means the survivor took those partitions over.
    assert r["survivor_end"] > r["survivor_at_kill"]
    expected = ids_of(r["sent"])
    on_topic = r["tracker"].scored
    assert workers[1].stop() == 0
    rows = stored_id_counts(settings, final=False)
    print(f"{len(expected)} sent; scored topic: {copies(on_topic)}; ClickHouse scored rows: {copies(rows)}")
    for counts in (on_topic, rows):
        assert set(counts) == expected, f"missing {len(expected - set(counts))}, unexpected {len(set(counts) - expected)}"
    # VIGIL_LOG_FORMAT=json: faust's own lines included, every line the worker wrote is JSON.
    lines = [json.loads(line) for line in workers[1].log_path.read_text().splitlines() if line.strip()]
    assert {line["worker"] for line in lines} == {"w1"}
    assert any(line["logger"].startswith("faust") for line in lines)
