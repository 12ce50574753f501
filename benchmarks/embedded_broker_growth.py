"""How the embedded broker's cost per request grows with what it holds.

One partition of an embedded Tansu broker is filled, ``--step`` records at a time, each produced
as its own batch (as a producer with a short linger sends a slow stream). After each step the
script times, in the broker's own CPU seconds, ``--ops`` requests of three kinds: a fetch from an
offset near the end (what a consumer that is a little behind asks), a ListOffsets for the end,
and a fetch at the end when nothing new has come (an idle consumer's poll). The idle poll is the
baseline: its cost should not move. Tansu 0.6.0's memory engine keeps every batch and offers no
DeleteRecords, so the first two grow with the number of batches ever produced.

    python -m benchmarks.embedded_broker_growth --steps 5 --step 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from benchmarks.worker_stack import cpu_seconds
from streams.broker import EmbeddedBroker

TOPIC = "growth"


async def fill(bootstrap: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for _ in range(n):
            await (await producer.send(TOPIC, b"x" * 300, partition=0))  # one batch per record
    finally:
        await producer.stop()


async def timed(bootstrap: str, pid: int, ops: int) -> dict[str, float]:
    tp = TopicPartition(TOPIC, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        out = {}
        began = cpu_seconds(pid)
        for i in range(ops):
            consumer.seek(tp, end - ops + i)
            await consumer.getmany(tp, timeout_ms=50, max_records=1)
        out["fetch_near_end_ms"] = (cpu_seconds(pid) - began) / ops * 1000
        began = cpu_seconds(pid)
        for _ in range(ops):
            await consumer.end_offsets([tp])
        out["list_offsets_ms"] = (cpu_seconds(pid) - began) / ops * 1000
        consumer.seek(tp, end)
        began = cpu_seconds(pid)
        for _ in range(ops):
            await consumer.getmany(tp, timeout_ms=20)
        out["idle_poll_ms"] = (cpu_seconds(pid) - began) / ops * 1000
        return out
    finally:
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--step", type=int, default=20_000, help="records (batches) added per step")
    ap.add_argument("--ops", type=int, default=50, help="requests timed per kind and step")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as logs, EmbeddedBroker(Path(logs)) as broker:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
        admin.close()
        time.sleep(1)
        assert broker.pid is not None
        for step in range(1, args.steps + 1):
            asyncio.run(fill(broker.bootstrap, args.step))
            costs = asyncio.run(timed(broker.bootstrap, broker.pid, args.ops))
            print(json.dumps({"batches_held": step * args.step, **{k: round(v, 2) for k, v in costs.items()}}), flush=True)


if __name__ == "__main__":
    main()
