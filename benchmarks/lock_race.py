"""How often a waiter's CREATE that races the holder's DROP of the migration lock goes wrong, on a
real 18.16 cluster, with and without the anchor replicas.

    python -m benchmarks.lock_race [--rounds 60]

Starts ZooKeeper and four clickhouse-server nodes like the test fixture. Each round, waiters on
the three other nodes retry CREATE every millisecond while the holder drops the lock; 0.3 s later
the round's outcome is one of: clean (the winner's lock node is there and the lock's ZooKeeper
path whole), half removed (the winner holds its node but the path lost the table's other nodes),
or lost (the winner's table exists but its lock node is gone: nobody sees the lock, and the next
CREATE wins too). The winner holds the lock for the next round.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from streams.clickhouse import QueryFailed, ServerBackend
from streams.clickhouse.migration_lock import (
    LOCK_TABLE,
    create_anchor_statement,
    create_lock_statement,
    lock_node,
    lock_zookeeper_path,
)

_TABLE_NODES = {"block_numbers", "blocks", "columns", "log", "metadata", "replicas"}


def _race_once(nodes: list[ServerBackend], database: str, holder: int) -> int | None:
    """The node whose CREATE won while ``holder`` dropped the lock (None: none in 5 s)."""
    won: list[int] = []

    def take(i: int) -> None:
        deadline = time.monotonic() + 5
        while not won and time.monotonic() < deadline:
            try:
                nodes[i].execute(create_lock_statement(database))
                won.append(i)
            except QueryFailed:
                time.sleep(0.001)

    waiters = [threading.Thread(target=take, args=(i,)) for i in range(len(nodes)) if i != holder]
    for w in waiters:
        w.start()
    time.sleep(0.02)
    nodes[holder].execute(f"DROP TABLE IF EXISTS {database}.{LOCK_TABLE}")
    for w in waiters:
        w.join()
    return won[0] if won else None


def _outcome(nodes: list[ServerBackend], database: str, winner: int) -> str:
    time.sleep(0.3)  # what is left of the DROP's removal has run
    if lock_node(nodes[winner], database) is None:
        return "lost"
    children = {name for (name,) in nodes[winner].query(
        "SELECT name FROM system.zookeeper WHERE path = {path:String}", {"path": lock_zookeeper_path(database)})}
    return "clean" if _TABLE_NODES <= children else "half removed"


def race(nodes: list[ServerBackend], database: str, rounds: int) -> Counter[str]:
    """Each round's outcome, counted; the lock is taken first by node 0 and dropped at the end."""
    outcomes: Counter[str] = Counter()
    holder = 0
    nodes[holder].execute(create_lock_statement(database))
    for _ in range(rounds):
        winner = _race_once(nodes, database, holder)
        if winner is None:
            outcomes["nobody won"] += 1
            continue
        outcome = _outcome(nodes, database, winner)
        outcomes[outcome] += 1
        if outcome == "lost":  # its table is a lock no one sees: drop it, take a real one
            nodes[winner].execute(f"DROP TABLE IF EXISTS {database}.{LOCK_TABLE}")
            nodes[winner].execute(create_lock_statement(database))
        holder = winner
    nodes[holder].execute(f"DROP TABLE IF EXISTS {database}.{LOCK_TABLE}")
    return outcomes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args()
    from tests.fixtures.clickhouse_cluster import running_cluster  # not at import: the test imports race()

    with tempfile.TemporaryDirectory() as tmp, running_cluster(Path(tmp)) as cluster:
        nodes = [ServerBackend(n.url, database="default") for n in cluster.nodes]
        try:
            for anchors in (False, True):
                database = f"race_{int(anchors)}"
                nodes[0].execute(f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster.name}")
                if anchors:
                    nodes[0].execute(create_anchor_statement(database, cluster.name))
                outcomes = race(nodes, database, args.rounds)
                print(f"{'with' if anchors else 'without'} anchors, {args.rounds} rounds: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
        finally:
            for node in nodes:
                node.close()


if __name__ == "__main__":
    main()
