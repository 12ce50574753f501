"""End-to-end load: msgs/s and p50/p99 latency with 1..N worker processes and 1..P partitions.

    VIGIL_DATA_DIR=/tmp/vq python -m benchmarks.load --workers 1 2 --partitions 1 2 4 --messages 600

Real stack for every cell: the embedded Tansu broker, clickhouse-server (Debian's 18.16, started
here on free ports; several workers cannot share one embedded chdb), and `vigil worker`
processes in one consumer group, each with --metrics-port. Each cell gets its own topics (with
P partitions), consumer group and database, and fresh workers. Models: VIGIL_DATA_DIR's registry
champions (run `vigil train` or `vigil demo` first). CPU threads per worker: as `vigil up --workers N`
gives them (cores / N, at least 1).

Per cell: a warm-up slice is sent and waited for (models loaded, group joined: every worker that
can hold a partition has consumed), then the timed messages are produced at --rate (0: as fast as
possible) and timed until the last one is on the scored topic. Latency is the message's Kafka
ingest time to its arrival on the scored topic; at --rate 0 it includes the backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from streams.demo import DemoOptions, demo_messages
from streams.follow import Tracker, following, wait_for
from streams.replay import replay
from streams.runtime import all_topics, kafka_bootstrap
from streams.settings import VigilSettings
from streams.topics import ensure_topics
from streams.worker import WorkerProcess, cpu_share_env
from tests.e2e_stack import free_port, metric_total
from tests.fixtures.clickhouse import ClickHouseServer, _find_binary

WARMUP = 60
SPARE = 200  # top-ups, distinct ids, until every worker that can hold a partition has consumed


@dataclass
class Cell:
    workers: int
    partitions: int
    messages: int
    seconds: float
    p50_ms: float
    p99_ms: float
    per_worker: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _consumed(port: int) -> float:
    try:
        return metric_total(port, "vigil_messages_in_total")
    except OSError:
        return -1.0  # not serving yet: still loading its models


def _settled_consumed(ports: list[int], quiet_s: float = 1.0, timeout_s: float = 15.0) -> list[float]:
    """A worker counts a batch once it is stored, which is after the batch reached the scored topic:
    read the counts once they stop moving."""
    last = [_consumed(p) for p in ports]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = [_consumed(p) for p in ports]
        if now == last:
            break
        last = now
    return last


async def _drive(settings: VigilSettings, ports: list[int], warm, spare, timed, rate: float) -> tuple[float, Tracker]:
    bootstrap = settings.kafka_brokers
    tracker = Tracker()
    async with following(settings, bootstrap, tracker):
        deadline = time.monotonic() + 600
        while min(_consumed(p) for p in ports) < 0:
            assert time.monotonic() < deadline, "workers did not come up"
            await asyncio.sleep(1.0)
        await replay(bootstrap, settings.raw_topics, warm)
        assert await wait_for(tracker, len(warm), timeout_s=600), "warm-up did not come out"
        # Every worker that can hold a partition must have consumed: the group has settled.
        holders = min(len(ports), settings.topic_partitions)
        sent = len(warm)
        while sum(_consumed(p) > 0 for p in ports) < holders:
            assert time.monotonic() < deadline and spare, f"group did not settle: {[_consumed(p) for p in ports]}"
            top_up, spare = spare[:20], spare[20:]
            await replay(bootstrap, settings.raw_topics, top_up)
            sent += len(top_up)
            assert await wait_for(tracker, sent, timeout_s=600), "top-up did not come out"
            await asyncio.sleep(2.0)
        tracker.scored.clear()
        tracker.dead_offsets.clear()
        tracker.latencies_ms.clear()
        started = time.perf_counter()
        await replay(bootstrap, settings.raw_topics, timed, rate_per_s=rate)
        assert await wait_for(tracker, len(timed), timeout_s=1800), f"only {tracker.done} of {len(timed)} came out"
        seconds = time.perf_counter() - started
    return seconds, tracker


def run_cell(server: ClickHouseServer, bootstrap: str, tmp: Path, workers: int,
             partitions: int, warm, spare, timed, rate: float) -> Cell:
    run = uuid.uuid4().hex[:8]
    env = {
        "VIGIL_DATA_DIR": str(tmp),
        "VIGIL_KAFKA_BROKERS": bootstrap,
        "VIGIL_CLICKHOUSE_URL": server.url,
        "VIGIL_CLICKHOUSE_DATABASE": f"load_{run}",
        "VIGIL_TOPIC_NEWS": f"l{run}.news",
        "VIGIL_TOPIC_SUPPORT": f"l{run}.support",
        "VIGIL_TOPIC_SCORED": f"l{run}.scored",
        "VIGIL_TOPIC_DLQ": f"l{run}.dlq",
        "VIGIL_TOPIC_ALERTS": f"l{run}.alerts",
        "VIGIL_TOPIC_TRIAGE_PREFIX": f"l{run}.triage.",
        "VIGIL_TOPIC_TICKET_ACKS": f"l{run}.acks",
        "VIGIL_TOPIC_LABEL_REQUESTS": f"l{run}.label-requests",
        "VIGIL_TOPIC_CORRECTIONS": f"l{run}.corrections",
        "VIGIL_TOPIC_MODEL_EVENTS": f"l{run}.model-events",
        "VIGIL_TOPIC_PARTITIONS": str(partitions),
        "VIGIL_CONSUMER_GROUP": f"load{run}",
    }
    os.environ.update(env)
    settings = VigilSettings()
    ensure_topics(bootstrap, all_topics(settings), partitions)
    ports = [free_port() for _ in range(workers)]
    procs = [
        # CPU threads as `vigil up --workers N` gives them
        WorkerProcess(bootstrap, tmp / "logs" / f"load-{run}-{i}.log",
                      {**env, **cpu_share_env(settings, workers), "VIGIL_WORKER_ID": f"load-w{i}"},
                      ("--metrics-port", str(ports[i])))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        seconds, tracker = asyncio.run(_drive(settings, ports, warm, spare, timed, rate))
        consumed = _settled_consumed(ports)
    finally:
        for p in procs:
            p.stop()
    return Cell(workers, partitions, len(timed), seconds, tracker.quantile(0.5), tracker.quantile(0.99), consumed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--messages", type=int, default=600, help="Timed messages per cell.")
    parser.add_argument("--rate", type=float, default=0.0, help="Offered msgs/s (0: as fast as possible).")
    args = parser.parse_args()
    base = VigilSettings()
    messages = list(demo_messages(base, DemoOptions(messages=WARMUP + SPARE + args.messages, hostile=False)))
    warm, spare, timed = messages[:WARMUP], messages[WARMUP:WARMUP + SPARE], messages[WARMUP + SPARE:]
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        shutil.copytree(base.registry_dir, tmp / "models")
        server = ClickHouseServer(_find_binary(), tmp / "clickhouse-server")
        server.start()
        os.environ["VIGIL_DATA_DIR"] = str(tmp)
        try:
            with kafka_bootstrap(VigilSettings(kafka_brokers=None)) as kafka:
                for workers in args.workers:
                    for partitions in args.partitions:
                        cell = run_cell(server, kafka.bootstrap, tmp, workers, partitions, warm, spare, timed, args.rate)
                        cells.append(cell)
                        print(f"workers {workers} partitions {partitions}: {cell.rate:7.1f} msg/s "
                              f"p50 {cell.p50_ms:6.0f} ms p99 {cell.p99_ms:6.0f} ms", flush=True)
        finally:
            server.stop()
    load = os.getloadavg()
    print(f"\n{args.messages} timed messages per cell after {WARMUP} warm-up, offered rate "
          f"{'max' if not args.rate else args.rate}, batch_max {base.batch_max}, {os.cpu_count()} cores, "
          f"load average at the end {load[0]:.1f}")
    print("| workers | partitions | msgs/s | p50 ms | p99 ms | consumed per worker (incl. warm-up) |")
    print("|---|---|---|---|---|---|")
    for c in cells:
        shares = " / ".join(f"{n:.0f}" for n in c.per_worker)
        print(f"| {c.workers} | {c.partitions} | {c.rate:.1f} | {c.p50_ms:.0f} | {c.p99_ms:.0f} | {shares} |")


if __name__ == "__main__":
    main()
