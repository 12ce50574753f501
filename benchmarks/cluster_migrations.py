"""What the cluster migration lock costs a worker's start, on a real 18.16 cluster.

    python -m benchmarks.cluster_migrations [--runs 10]

Starts ZooKeeper and four clickhouse-server nodes (two shards of two replicas) in a temp dir, like
the test fixture, migrates a new database once, then times ``runs`` reruns of ``migrate`` (what
every worker start does on a migrated cluster: lock, sync, read, release) and ``runs`` bare
takes and releases of the lock.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from streams.clickhouse import ServerBackend, migrate
from streams.clickhouse.migration_lock import cluster_migration_lock
from tests.fixtures.clickhouse_cluster import running_cluster

DATABASE = "bench_lock"


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_cluster(Path(tmp)) as cluster:
        backend = ServerBackend(cluster.nodes[0].url, database=DATABASE)

        def rerun() -> None:
            migrate(backend, database=DATABASE, ttl_days=30, cluster=cluster.name)

        def lock_only() -> None:
            with cluster_migration_lock(backend, DATABASE, cluster.name):
                pass

        try:
            print(f"first migrate (every table ON CLUSTER): {_timed(rerun):.2f} s")
            for label, fn in (("migrate rerun", rerun), ("lock take + release", lock_only)):
                times = [_timed(fn) * 1000 for _ in range(args.runs)]
                print(f"{label:<22} median {statistics.median(times):6.1f} ms, max {max(times):6.1f} ms "
                      f"({args.runs} runs)")
        finally:
            backend.close()


if __name__ == "__main__":
    main()
