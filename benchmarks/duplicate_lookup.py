"""The worker's per-batch duplicate-id read as the scored table grows.

For every micro-batch the worker asks ClickHouse which of its ids are stored already, and with
what content (``ClickHouseStore.existing_content_hashes``). An embedded chdb store, migrated as the
worker's, and a copy of its scored table without the ``id_bloom`` index of migration 0014 (the
baseline) are filled alike with scored support rows of random ids, ``--step`` rows at a time in
inserts of 100,000 rows (so the tables have several parts, as a streamed one does). After each
step the read is timed for ``--ids`` new random ids (the common case: most ids are new): on the
product's table as the product runs it, and on the baseline table as it ran before (with FINAL).

    python -m benchmarks.duplicate_lookup --steps 6 --step 500000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

from streams.clickhouse import ClickHouseStore, open_store
from streams.contracts import Kind
from streams.settings import VigilSettings

CHUNK = 100_000


BEFORE = "scored_before"


def fill(store: ClickHouseStore, first: int, n: int, table: str = "scored") -> None:
    for start in range(first, first + n, CHUNK):
        rows = min(CHUNK, first + n - start)
        store.backend.execute(
            f"INSERT INTO {store.database}.{table} (kind, id, model_name, model_version, label, confidence, margin, "
            "entropy, text, content_hash, event_time, ingest_time, scored_time, written_time) "
            f"SELECT 'support', lower(hex(cityHash64(number + {start}, 7))), 'triage', 'v1', 'card_arrival', 0.9, "
            f"0.5, 0.3, 'my card has not arrived', cityHash64(number + {start}), now64(3), now64(3), now64(3), "
            f"now64(3) FROM numbers({rows})"
        )


def new_ids(n: int) -> list[str]:
    """Random ids of the stored ids' shape, almost surely none of them stored."""
    return [uuid.uuid4().hex[:16] for _ in range(n)]


def old_lookup(store: ClickHouseStore, ids: list[str]) -> None:
    store.backend.query(
        f"SELECT id, argMax(content_hash, written_time) FROM {store.database}.{BEFORE} FINAL "
        "WHERE kind = {kind:String} AND id IN {ids:Array(String)} GROUP BY id",
        {"kind": Kind.support.value, "ids": sorted(ids)},
    )


def active_parts(store: ClickHouseStore) -> int:
    return int(store.backend.query(
        "SELECT count() FROM system.parts WHERE database = {db:String} AND table = 'scored' AND active",
        {"db": store.database},
    )[0][0])


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--step", type=int, default=500_000, help="rows added per step")
    ap.add_argument("--ids", type=int, default=256, help="ids per lookup (VIGIL_BATCH_MAX)")
    ap.add_argument("--runs", type=int, default=7, help="lookups timed per variant and step (median)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as data, open_store(VigilSettings(data_dir=data)) as store:
        db = store.database
        store.backend.execute(f"CREATE TABLE {db}.{BEFORE} AS {db}.scored")
        store.backend.execute(f"ALTER TABLE {db}.{BEFORE} DROP INDEX id_bloom")
        rows = 0
        for _ in range(args.steps):
            fill(store, rows, args.step)
            fill(store, rows, args.step, BEFORE)
            rows += args.step
            now = median_ms(lambda: store.existing_content_hashes(Kind.support, new_ids(args.ids)), args.runs)
            before = median_ms(lambda: old_lookup(store, new_ids(args.ids)), args.runs)
            print(json.dumps({
                "rows": rows, "active_parts": active_parts(store), "lookup_ms": round(now, 1),
                "before_ms": round(before, 1), "ratio": round(before / now, 1),
            }), flush=True)

if __name__ == "__main__":
    main()
