"""End-to-end pipeline throughput against the raw scoring rate of the same models, same texts, same run.

    python -m benchmarks.bench_pipeline --messages 3000

1. raw: the registry's champion scorers score the texts in micro-batches of VIGIL_BATCH_MAX, in
   this process, nothing else running.
2. pipeline: embedded broker + one worker process (faust, decode, score, publish, ClickHouse write,
   ack). A warm-up slice is sent first and waited for, so model loading and the group join are not
   timed; then the rest is produced as fast as possible and timed until the last message has come
   out on the scored topic.

Prints msgs/s for both, the ratio, and p50/p99 latency (Kafka timestamp of the raw message to its
arrival on the scored topic). Uses VIGIL_DATA_DIR's models (run `vigil demo` or `vigil train` first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.engine import load_scorer  # noqa: E402
from streams.contracts import Kind  # noqa: E402
from streams.demo import DemoOptions, demo_messages  # noqa: E402
from streams.follow import Tracker, following, wait_for  # noqa: E402
from streams.replay import replay  # noqa: E402
from streams.runtime import kafka_bootstrap  # noqa: E402
from streams.settings import VigilSettings  # noqa: E402
from streams.worker import TASK_BY_KIND, WorkerProcess  # noqa: E402

WARMUP = 200


def raw_rate(settings: VigilSettings, messages) -> float:
    by_kind: dict[Kind, list[str]] = {k: [] for k in Kind}
    for m in messages:
        payload = json.loads(m.value)
        by_kind[m.kind].append(payload.get("headline") or payload.get("text"))
    scorers = {k: load_scorer(settings, TASK_BY_KIND[k]) for k in Kind}
    for k in Kind:  # warm-up, like the pipeline's
        scorers[k].score(by_kind[k][:64])
    started = time.perf_counter()
    for k, texts in by_kind.items():
        for i in range(0, len(texts), settings.batch_max):
            scorers[k].score(texts[i : i + settings.batch_max])
    return sum(map(len, by_kind.values())) / (time.perf_counter() - started)


async def pipeline_run(settings: VigilSettings, bootstrap: str, warm, timed) -> tuple[float, Tracker]:
    tracker = Tracker()
    async with following(settings, bootstrap, tracker):
        await replay(bootstrap, settings.raw_topics, warm)
        assert await wait_for(tracker, len(warm), timeout_s=300), "worker did not come up"
        warm_latencies = len(tracker.latencies_ms)
        started = time.perf_counter()
        await replay(bootstrap, settings.raw_topics, timed)
        assert await wait_for(tracker, len(warm) + len(timed), timeout_s=1800), "worker did not finish"
        seconds = time.perf_counter() - started
    del tracker.latencies_ms[:warm_latencies]
    return len(timed) / seconds, tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    base = VigilSettings()
    messages = list(demo_messages(base, DemoOptions(messages=args.messages + WARMUP, hostile=False)))
    warm, timed = messages[:WARMUP], messages[WARMUP:]

    with tempfile.TemporaryDirectory() as tmp:
        # A fresh data dir (empty ClickHouse) with the same models.
        shutil.copytree(base.registry_dir, Path(tmp) / "models")
        env = {"VIGIL_DATA_DIR": tmp}
        os.environ.update(env)
        settings = VigilSettings()
        raw = raw_rate(settings, timed)
        with kafka_bootstrap(settings) as kafka:
            worker = WorkerProcess(kafka.bootstrap, Path(tmp) / "worker.log", env)
            worker.start()
            try:
                rate, tracker = asyncio.run(pipeline_run(settings, kafka.bootstrap, warm, timed))
            finally:
                worker.stop()
    print(f"messages timed           {len(timed)} (after {WARMUP} warm-up), batch_max {settings.batch_max}")
    print(f"raw scoring (in-process) {raw:8.1f} msg/s")
    print(f"pipeline end to end      {rate:8.1f} msg/s")
    print(f"pipeline / raw           {rate / raw:8.2f}")
    print(f"latency p50 / p99        {tracker.quantile(0.5):8.0f} / {tracker.quantile(0.99):.0f} ms (backlog included)")


if __name__ == "__main__":
    main()
