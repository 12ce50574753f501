"""Insert throughput of ClickHouseStore.write_scored on chdb and on a local clickhouse-server.

    python -m benchmarks.clickhouse_insert [--rows 1000] [--batches 5]

Starts its own clickhouse-server (Debian's 18.16) in a temp dir, like the test fixture.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streams.clickhouse import open_store
from streams.contracts import Kind, ScoredMessage
from streams.settings import VigilSettings
from tests.fixtures.clickhouse import ClickHouseServer, _find_binary


def batch(n: int, start: int) -> list[ScoredMessage]:
    now = datetime.now(UTC)
    return [
        ScoredMessage(
            id=f"b-{start + i}", kind=Kind.news, text=f"Headline number {start + i} about ACME earnings",
            model_name="sentiment", model_version="v1", label="neutral",
            probs={"positive": 0.2, "negative": 0.1, "neutral": 0.7}, confidence=0.7, margin=0.5,
            entropy=0.8, tickers=["ACME"], source="wire", content_hash=start + i, event_time=now,
            ingest_time=now - timedelta(milliseconds=40), scored_time=now, src_partition=0,
            src_offset=start + i,
        )
        for i in range(n)
    ]


def measure(label: str, settings: VigilSettings, rows: int, batches: int) -> None:
    store = open_store(settings)
    try:
        store.write_scored(batch(rows, 10**9))  # warm-up: first insert creates the parts layout
        timings = []
        for b in range(batches):
            data = batch(rows, b * rows)
            t0 = time.perf_counter()
            store.write_scored(data)
            timings.append(time.perf_counter() - t0)
        best, median = min(timings), sorted(timings)[len(timings) // 2]
        print(f"{label:<28} {rows} rows/insert: median {median * 1000:7.1f} ms "
              f"({rows / median:,.0f} rows/s), best {best * 1000:7.1f} ms")
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure("chdb (embedded, modern)", VigilSettings(data_dir=Path(tmp) / "chdb"), args.rows, args.batches)
        server = ClickHouseServer(_find_binary(), Path(tmp) / "server")
        server.start()
        try:
            settings = VigilSettings(data_dir=Path(tmp), clickhouse_url=server.url, clickhouse_database="bench")
            measure("server 18.16 (legacy-18)", settings, args.rows, args.batches)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
