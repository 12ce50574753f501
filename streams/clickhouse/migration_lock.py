"""One migrator at a time on a cluster.

Workers of a new release start together and each runs the migrations. Two migrators sending the
same column change through the distributed DDL queue at once is where a test cluster hung once (a
host never finished the second ALTER; the migrator gave up after ``distributed_ddl_task_timeout``),
and the leftovers of a migrator killed in mid-swap can only be removed while no other one is
swapping. So a migrator holds this lock from reading ``schema_migrations`` to recording what it
applied, and the next one finds the migration done.

The lock is a ZooKeeper node, taken through ClickHouse itself (Vigil talks to nothing else): the
holder creates ``<db>.schema_migrations_lock``, a ReplicatedMergeTree table on its own node whose
ZooKeeper path and replica name are the same for every migrator. ZooKeeper creates the replica
node atomically, so a second migrator's CREATE fails, on another node with code 253 ("replica
already exists"), on the same node with 57 ("table already exists"), and it waits. Dropping the
table removes the node. A holder that died leaves the lock behind; once the node is older than
``stale_after_s`` a waiter drops it ``ON CLUSTER`` (the table exists on one node only) and takes it.

Every node also holds a replica of the lock's table that is never dropped, the anchor
(``<db>.migration_lock_anchor``, replica ``anchor-{shard}-{replica}``, made with the bookkeeping
tables). 18.16 removes a replicated table's whole ZooKeeper path, node by node, when its last
replica is dropped, and a waiter's CREATE that came in while the holder's DROP was at it found
the path still there, added its replica node, and could have it removed under it a moment later
(in 1 of 150 tight rounds of benchmarks/lock_race.py; 67 more left the path half removed): the
waiter then held a lock nobody could see, and the next CREATE succeeded too. With the anchors
the path always has replicas, so a DROP removes only its own replica node. Break locks have
none: a CREATE that races the release of one can lose its node the same way, but by then the
generation it would break is gone, so its holder finds nothing to drop.

Workers that start together after a migrator died all find its lock stale at once. A waiter that
drops it a moment late (paused, or its DROP queued behind the others') would drop the lock another
had just taken, and both would migrate. So breaking takes a second lock of the same kind, a break
lock named for the generation it breaks (the lock node's ZooKeeper ``czxid``, which no later lock
shares): its holder checks that the lock is still that generation and drops it; the others wait.
A waiter that died while breaking leaves its break lock behind, which is broken once stale in turn,
the same way, one level up. A late drop therefore only ever finds the generation it was meant
for, which is gone, and never a lock taken since.

What no lock can tell apart is a holder that is alive but slower than ``stale_after_s`` (the
default is 15 minutes against seconds for a migration), or one whose lock an operator dropped by
hand. So a holder confirms before each statement that the lock is still its generation
(``HeldLock.confirm``) and stops with a MigrationError if not: only the statement it was in when
the lock went can overlap the next holder's work. It then leaves the lock alone, since dropping
it by name could drop the next holder's, on the same node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .backends import Backend
from .errors import MigrationError, QueryFailed

log = logging.getLogger(__name__)

LOCK_TABLE = "schema_migrations_lock"
ANCHOR_TABLE = "migration_lock_anchor"  # apart from the lock tables, whose names all start with LOCK_TABLE
_ZOOKEEPER_ERROR = 999
# Table already exists (on this node), replica already exists (on another), and a ZooKeeper error:
# a CREATE racing the DROP of a break lock (which has no anchor) meets its path half removed ("No node").
_HELD = {57, 253, _ZOOKEEPER_ERROR}


def lock_zookeeper_path(database: str, table: str = LOCK_TABLE) -> str:
    return f"/clickhouse/vigil/{database}/{table}"


def ensure_anchor(backend: Backend, database: str, cluster: str) -> None:
    """Make the anchors, unless this node has one: one anchor anywhere keeps the lock's path, and
    the check spares every worker start a DDL round through the whole cluster."""
    if backend.query("SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                     {"db": database, "t": ANCHOR_TABLE}) != [(1,)]:
        backend.execute(create_anchor_statement(database, cluster))


def create_anchor_statement(database: str, cluster: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{ANCHOR_TABLE} ON CLUSTER {cluster} (holder String) "
        f"ENGINE = ReplicatedMergeTree('{lock_zookeeper_path(database)}', 'anchor-{{shard}}-{{replica}}') "
        "ORDER BY holder"
    )


def create_lock_statement(database: str, table: str = LOCK_TABLE) -> str:
    return (
        f"CREATE TABLE {database}.{table} (holder String) ENGINE = ReplicatedMergeTree("
        f"'{lock_zookeeper_path(database, table)}', 'holder') ORDER BY holder"
    )


@dataclass(frozen=True, slots=True)
class LockNode:
    generation: int  # ZooKeeper's czxid: unique to each creation of the node
    age_s: float  # by ZooKeeper's clock against the server's


def lock_node(backend: Backend, database: str, table: str = LOCK_TABLE) -> LockNode | None:
    """Who holds the lock, and since when; None when nobody does (released between our CREATE and
    this read)."""
    try:
        rows = backend.query(
            "SELECT czxid, toInt64(now()) - toInt64(ctime) FROM system.zookeeper "
            "WHERE path = {path:String} AND name = 'holder'",
            {"path": f"{lock_zookeeper_path(database, table)}/replicas"},
        )
    except QueryFailed as exc:
        if exc.code == _ZOOKEEPER_ERROR:  # the holder's DROP removed the path ("No node")
            return None
        raise
    return LockNode(int(rows[0][0]), float(rows[0][1])) if rows else None


def lock_age_s(backend: Backend, database: str, table: str = LOCK_TABLE) -> float | None:
    """Seconds since the lock was taken; None when nobody holds it."""
    node = lock_node(backend, database, table)
    return None if node is None else node.age_s


def break_lock_table(table: str, generation: int) -> str:
    """The lock a waiter holds while it breaks ``generation`` of ``table``."""
    return f"{table}_break_{generation}"


def _refusal(backend: Backend, database: str, table: str = LOCK_TABLE) -> QueryFailed | None:
    """None once this migrator holds the lock, else why it could not take it."""
    try:
        backend.execute(create_lock_statement(database, table))
    except QueryFailed as exc:
        if exc.code in _HELD:
            return exc
        raise
    return None


def _release(backend: Backend, database: str, table: str, stale_after_s: float) -> None:
    try:
        backend.execute(f"DROP TABLE IF EXISTS {database}.{table}")
    except Exception:  # noqa: BLE001 - the lock goes stale and is broken; what it guarded stands
        log.exception("could not release %s.%s; the next migrator breaks it after %.0f s", database, table,
                      stale_after_s)


def _break_if_stale(backend: Backend, database: str, cluster: str, table: str, stale_after_s: float) -> bool:
    """Drop ``table``'s lock if it is stale, holding the break lock of its generation from the
    check to the drop (breaking that one first if its waiter died). False when the lock is not
    stale or another waiter is breaking it."""
    stale = lock_node(backend, database, table)
    if stale is None or stale.age_s <= stale_after_s:
        return False
    breaker = break_lock_table(table, stale.generation)
    if _refusal(backend, database, breaker) is not None:
        _break_if_stale(backend, database, cluster, breaker, stale_after_s)
        return False
    try:
        current = lock_node(backend, database, table)
        if current is not None and current.generation == stale.generation:
            log.warning(
                "%s.%s was taken %.0f s ago and never released (its holder died?); breaking it",
                database, table, stale.age_s,
            )
            backend.execute(f"DROP TABLE IF EXISTS {database}.{table} ON CLUSTER {cluster}")
    finally:
        _release(backend, database, breaker, stale_after_s)
    return True


@dataclass(frozen=True, slots=True)
class HeldLock:
    """The migration lock this migrator took, by generation. A migrator that was paused or slow
    past ``stale_after_s`` may have had it broken (or an operator dropped it as a waiter's error
    says), and another may hold it now: it confirms before each statement and stops if so."""

    backend: Backend
    database: str
    generation: int

    def still_held(self) -> bool:
        current = lock_node(self.backend, self.database)
        return current is not None and current.generation == self.generation

    def confirm(self) -> None:
        if not self.still_held():
            raise self.lost()

    def lost(self) -> MigrationError:
        return MigrationError(
            f"this migrator's lock on {self.database} was broken while it migrated (taken for dead, or "
            "dropped by hand), so it stopped before its next statement; another migrator may hold the "
            "lock now. Start it again: it finds what was applied and finishes the rest."
        )


@contextmanager
def cluster_migration_lock(
    backend: Backend, database: str, cluster: str, *, wait_s: float = 600.0, stale_after_s: float = 900.0,
    poll_s: float = 0.5,
) -> Iterator[HeldLock]:
    """Hold the cluster's migration lock for the block; ``database`` must exist on every node."""
    deadline = time.monotonic() + wait_s
    while (refused := _refusal(backend, database)) is not None:
        if _break_if_stale(backend, database, cluster, LOCK_TABLE, stale_after_s):
            continue
        held_for = lock_age_s(backend, database)
        if time.monotonic() > deadline:
            if held_for is None:
                raise MigrationError(
                    f"could not take the migration lock of {database} in {wait_s:.0f} s: {refused}. Check "
                    "that the servers reach ZooKeeper."
                )
            raise MigrationError(
                f"another migrator has held the migration lock of {database} for {held_for:.0f} s and "
                f"this one gave up after {wait_s:.0f} s. If no Vigil process is migrating, a dead one left "
                f"the lock: remove it with `DROP TABLE IF EXISTS {database}.{LOCK_TABLE} ON CLUSTER "
                f"{cluster}`, or wait until {stale_after_s:.0f} s after it was taken and start again."
            )
        time.sleep(poll_s)
    taken = lock_node(backend, database)
    held = HeldLock(backend, database, -1 if taken is None else taken.generation)
    try:
        if taken is None:  # gone as soon as it was taken
            raise held.lost()
        yield held
    finally:
        # Dropping a lock broken under us could drop the next holder's, on the same node by name.
        if held.still_held():
            _release(backend, database, LOCK_TABLE, stale_after_s)
        else:
            log.warning("%s.%s was broken while this migrator held it; left to whoever holds it now",
                        database, LOCK_TABLE)
