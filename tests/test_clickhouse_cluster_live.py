"""Cluster mode (VIGIL_CLICKHOUSE_CLUSTER) on a real cluster: ZooKeeper and four clickhouse-server
18.16 processes, two shards of two replicas (tests/fixtures/clickhouse_cluster.py). The real
migrations run ON CLUSTER, once and again from every node; the store then writes and reads scored
rows, alerts, triage tickets, acks and alerting checkpoints through the Distributed tables, and
each node's local tables show where the rows went: split between the shards, copied to both
replicas of a shard, a replayed row on the shard of its original, where FINAL collapses it. While
a shard's first replica is down, writes and reads go to its second, and the first catches up. A
column change migrated from two nodes at once, while a writer writes, fails and loses no write;
migrators take turns, and the next one clears what a killed one left."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import pytest

from benchmarks.lock_race import race
from feedback.contracts import Correction, CorrectionSource, LabelRequest, SelectionReason
from feedback.store import FeedbackStore
from streams.alerting.contracts import (
    Alert,
    Severity,
    TicketAck,
    TriageTicket,
    sla_breach_id,
)
from streams.alerting.partitions import Checkpoint, SeenId
from streams.clickhouse import (
    ClickHouseStore,
    MigrationError,
    ServerBackend,
    migrate,
    open_store,
)
from streams.clickhouse.alerting_state import AlertingStateStore
from streams.clickhouse.compat import to_stored_time
from streams.clickhouse.backends import Backend
from streams.clickhouse.migration_lock import (
    ANCHOR_TABLE,
    LOCK_TABLE,
    break_lock_table,
    cluster_migration_lock,
    create_lock_statement,
    lock_age_s,
    lock_node,
)
from streams.clickhouse.migrations import MIGRATIONS_DIR, load_migrations
from streams.clickhouse.retention import expiries, prune_expired, wait_for_deletes
from streams.clickhouse.triage_store import QueueSla, TriageStore
from streams.contracts import DeadLetter, DeadLetterReason, Kind, ScoredMessage
from streams.settings import VigilSettings

if TYPE_CHECKING:
    from tests.fixtures.clickhouse_cluster import ClickHouseCluster

pytest_plugins = ["tests.fixtures.clickhouse_cluster"]

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=1)
ALL = [m.name for m in load_migrations()]
GRAFANA_DASHBOARDS = Path(__file__).resolve().parents[1] / "ops" / "grafana" / "dashboards"
TABLES = {
    "scored", "dead_letters", "alerts", "label_queue", "feedback", "model_events", "triage", "ticket_acks",
    "alert_verdicts", "shadow_predictions", "alerting_state", "alerting_seen", "retrain_heartbeats",
    "dead_letter_replays",
}


def node_backend(url: str, database: str) -> ServerBackend:
    return ServerBackend(url, database=database)


def table_names(backend: ServerBackend, database: str) -> set[str]:
    """The tables of ``database`` on the node ``backend`` is connected to."""
    return {name for (name,) in backend.query(
        "SELECT name FROM system.tables WHERE database = {db:String}", {"db": database})}


@pytest.fixture(scope="module")
def cluster_db(clickhouse_cluster: ClickHouseCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VigilSettings]:
    """A database migrated through the first node (checked by the first test)."""
    settings = VigilSettings(
        data_dir=tmp_path_factory.mktemp("vigil"), clickhouse_url=clickhouse_cluster.nodes[0].url,
        clickhouse_database=f"c_{uuid.uuid4().hex[:12]}", clickhouse_cluster=clickhouse_cluster.name,
    )
    backend = node_backend(settings.clickhouse_url, settings.clickhouse_database)
    try:
        report = migrate(backend, database=settings.clickhouse_database, ttl_days=30, cluster=settings.clickhouse_cluster)
    finally:
        backend.close()
    assert report.applied == ALL and report.already_applied == []
    yield settings


@pytest.fixture
def nodes(clickhouse_cluster: ClickHouseCluster, cluster_db: VigilSettings) -> Iterator[list[ServerBackend]]:
    """One backend per node, for the local tables."""
    backends = [node_backend(n.url, cluster_db.clickhouse_database) for n in clickhouse_cluster.nodes]
    try:
        yield backends
    finally:
        for b in backends:
            b.close()


@pytest.fixture
def store(cluster_db: VigilSettings) -> Iterator[ClickHouseStore]:
    with open_store(cluster_db) as st:
        yield st


def test_migrations_create_every_table_on_every_node_and_rerun_from_any_node(
    clickhouse_cluster: ClickHouseCluster, cluster_db: VigilSettings, nodes: list[ServerBackend],
) -> None:
    db = cluster_db.clickhouse_database
    for node in nodes:
        engines = dict(node.query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String}", {"db": db}
        ))
        assert engines == {
            "schema_migrations": "ReplicatedReplacingMergeTree",
            ANCHOR_TABLE: "ReplicatedMergeTree",
            **{t: "Distributed" for t in TABLES},
            **{f"{t}_local": "ReplicatedReplacingMergeTree" for t in TABLES},
            "alerting_seen_local": "ReplicatedMergeTree",  # its rows are a set: copies do no harm
        }
        # Migration 0010's column is on the replicated table and on the (recreated) Distributed one.
        for table in ("triage", "triage_local"):
            columns = dict(node.query(f"SELECT name, type FROM system.columns WHERE database = {{db:String}} "
                                      f"AND table = '{table}'", {"db": db}))
            assert columns["source_partition"] == "Int32"
    # Re-run through every node: schema_migrations is one replicated table across the cluster.
    for node in clickhouse_cluster.nodes:
        backend = node_backend(node.url, db)
        try:
            again = migrate(backend, database=db, ttl_days=30, cluster=clickhouse_cluster.name)
        finally:
            backend.close()
        assert again.applied == [] and again.already_applied == ALL


def msg(i: int) -> ScoredMessage:
    return ScoredMessage(
        id=f"n-{i}", kind=Kind.news, text=f"headline {i}", model_name="sentiment", model_version="v1",
        label="negative" if i % 3 == 0 else "neutral", probs={"positive": 0.25, "negative": 0.25, "neutral": 0.5},
        confidence=0.5, margin=0.25, entropy=1.04, tickers=["ACME"] if i % 2 else ["BRK.B"], source="wire",
        content_hash=1000 + i, event_time=T0, ingest_time=T0, scored_time=T0 + timedelta(milliseconds=5),
        src_partition=0, src_offset=i,
    )


def test_scored_rows_split_between_shards_and_a_replay_collapses_on_its_shard(
    store: ClickHouseStore, nodes: list[ServerBackend],
) -> None:
    batch = [msg(i) for i in range(40)]
    store.write_scored(batch)
    replayed = [m.model_copy(update={"label": "positive"}) for m in batch[:10]]  # a replay, re-scored
    store.write_scored(replayed)
    table = f"{store.database}.scored"
    # insert_distributed_sync: both inserts are on their shards when write_scored returns.
    assert store.backend.query(f"SELECT count() FROM {table}") == [(50,)]
    assert store.backend.query(f"SELECT count() FROM {table} FINAL") == [(40,)]
    back = store.fetch_scored(Kind.news, [m.id for m in batch])
    assert [m.id for m in back] == sorted(m.id for m in batch)
    labels = {m.id: m.label for m in back}
    assert all(labels[m.id] == "positive" for m in replayed)  # the latest write wins
    assert store.existing_content_hashes(Kind.news, ["n-3", "missing"]) == {"n-3": 1003}
    summary = store.summary(min_ticker_volume=1)
    assert summary.total_rows == 40
    assert {t.ticker: t.rows for t in summary.top_negative_tickers} == {"ACME": 20, "BRK.B": 20}

    local = f"{store.database}.scored_local"
    per_node = []
    for node in nodes:
        node.execute(f"SYSTEM SYNC REPLICA {local}")
        per_node.append(dict(node.query(f"SELECT id, count() FROM {local} GROUP BY id")))
    # Nodes 0, 1 are shard 1's replicas, nodes 2, 3 shard 2's: each replica holds its shard's rows.
    assert per_node[0] == per_node[1] and per_node[2] == per_node[3]
    shards = per_node[0], per_node[2]
    assert all(shards), "both shards hold rows"
    assert set(shards[0]).isdisjoint(shards[1])
    assert set(shards[0]) | set(shards[1]) == {m.id for m in batch}
    for m in replayed:  # both writes of a replayed row are on one shard, where FINAL collapses them
        assert sorted(counts.get(m.id, 0) for counts in shards) == [0, 2]
    # The shard is the sorting key's hash modulo the two (equal-weight) shards.
    first_shard = {r[0] for r in nodes[3].query(
        f"SELECT id FROM {table} WHERE cityHash64(kind, id, model_version) % 2 = 0"
    )}
    assert first_shard == set(shards[0])
    # Any node reads the whole table through its Distributed table.
    for node in nodes:
        assert node.query(f"SELECT count() FROM {table} FINAL") == [(40,)]


def test_the_retention_prune_deletes_expired_rows_on_every_shard_and_replica(
    store: ClickHouseStore, nodes: list[ServerBackend], cluster_db: VigilSettings,
) -> None:
    days = 30  # as cluster_db migrated
    expired, kept = NOW - timedelta(days=days, hours=1), NOW - timedelta(days=days - 1)
    store.write_dead_letters([
        DeadLetter(source_topic="vigil.news.raw", partition=0, offset=i, raw=b"{", reason=DeadLetterReason.bad_json,
                   detail="not JSON", received_at=expired if i % 2 else kept)
        for i in range(40)
    ])
    expiring = [e for e in expiries(load_migrations(), days) if e.table == "dead_letters"]
    where = dict(database=store.database, expiring=expiring, cluster=cluster_db.clickhouse_cluster)
    (result,) = prune_expired(store.backend, level=store.level, **where)
    assert (result.expired_rows, result.deleting) == (20, True)
    wait_for_deletes(store.backend, **where, timeout_s=120)
    local = f"{store.database}.dead_letters_local"
    per_node = []
    for node in nodes:  # a replica may take a moment to fetch its shard's mutation from ZooKeeper
        node.execute(f"SYSTEM SYNC REPLICA {local}")  # and its shard's rows
        deadline = time.monotonic() + 120
        while node.query(f"SELECT count() FROM {local} WHERE {expiring[0].condition}") != [(0,)]:
            assert time.monotonic() < deadline, "a replica kept expired rows"
            time.sleep(0.5)
        per_node.append(sorted(int(o) for (o,) in node.query(f"SELECT src_offset FROM {local}")))
    assert per_node[0] == per_node[1] and per_node[2] == per_node[3]
    assert all(per_node) and sorted(per_node[0] + per_node[2]) == list(range(0, 40, 2))
    assert store.backend.query(f"SELECT count() FROM {store.database}.dead_letters") == [(20,)]


def test_alerts_tickets_acks_and_checkpoints_through_the_distributed_tables(store: ClickHouseStore) -> None:
    level = store.level
    alert = Alert(
        id=Alert.make_id("sentiment", "negative_share", "TSLA", T0.isoformat()), kind="sentiment",
        rule="negative_share", severity=Severity.warning, ticker="TSLA", window_start=T0 - timedelta(minutes=15),
        window_end=T0, figures={"volume": 20.0}, model_version="v1", created_at=T0,
    )
    store.write_alerts([alert])
    store.write_alerts([alert])  # re-emitted after a replay
    assert [a.id for a in store.fetch_alerts()] == [alert.id]
    assert store.fetch_alert(alert.id) == alert.model_copy(update={
        f: to_stored_time(getattr(alert, f), level) for f in ("window_start", "window_end", "created_at")
    })

    def ticket(i: int, queue: str, priority: str, due_in_min: float, partition: int) -> TriageTicket:
        return TriageTicket(
            message_id=f"s-{i}", text=f"help {i}", intent="lost_or_stolen_card", confidence=0.9, queue=queue,
            priority=priority, sla_minutes=30, due_at=NOW + timedelta(minutes=due_in_min), human_triage=False,
            routed_queue=queue, model_version="v1", event_time=NOW - timedelta(minutes=30), source_partition=partition,
        )

    tickets = [ticket(i, "fraud", "P1", 10 if i % 2 else -10, i % 2) for i in range(1, 13)]
    tickets.append(ticket(13, "cards", "P3", 60, 0))
    ts = TriageStore(store)
    ts.write_tickets(tickets)
    ts.write_tickets(tickets[:4])  # a replayed batch
    assert ts.fetch_tickets() == [
        t.model_copy(update={"event_time": to_stored_time(t.event_time, level), "due_at": to_stored_time(t.due_at, level)})
        for t in sorted(tickets, key=lambda t: t.message_id)
    ]
    assert [t.message_id for t in ts.fetch_tickets(["s-2", "s-9"])] == ["s-2", "s-9"]
    acks = [TicketAck(message_id=f"s-{i}", by="ana", at=NOW) for i in (1, 2, 3)]
    ts.write_acks(acks + acks[:1])
    assert ts.acked_ids() == {"s-1", "s-2", "s-3"}
    assert ts.acked_ids(["s-1", "s-4"]) == {"s-1"}
    # Tickets and acks are sharded on the message id alike, so the NOT IN subquery of each shard
    # (distributed_product_mode=local) sees every ack of its tickets.
    assert ts.sla_summary(NOW) == [
        QueueSla(queue="cards", priority="P3", open=1, acked=0, breached=0),
        QueueSla(queue="fraud", priority="P1", open=4, acked=2, breached=6, acked_late=1),  # s-2 acked late
    ]
    store.write_alerts([Alert(
        id=sla_breach_id("s-4"), kind="triage", rule="sla_breach", severity=Severity.critical, intent="x",
        queue="fraud", created_at=NOW,
    )])
    open_p0 = [t.message_id for t in ts.open_tickets([0], ["P1"])]
    assert sorted(open_p0) == ["s-10", "s-12", "s-6", "s-8"]  # s-2 acked, s-4 escalated
    assert ts.last_routed([1])[0] == to_stored_time(NOW - timedelta(minutes=30), level)  # type: ignore[index]

    states = AlertingStateStore(store, "ticker-events")
    ids = [SeenId(f"T{i}", f"m-{i}", NOW - timedelta(minutes=i)) for i in range(6)]
    states.save([Checkpoint(0, 10, "{}", tuple(ids[:2])), Checkpoint(1, 7, "{}", tuple(ids[2:3]))])
    states.save([Checkpoint(0, 25, '{"w": 1}', tuple(ids[3:]))])
    assert states.load(0) == Checkpoint(0, 25, '{"w": 1}')
    assert states.load(1) == Checkpoint(1, 7, "{}")
    assert states.load(2) is None
    # The ids of one partition are spread over the shards (sharded on the sorting key): all come back.
    assert sorted(states.load_seen(0, 25, None), key=lambda s: s.message_id) == [*ids[:2], *ids[3:]]
    assert sorted(states.load_seen(0, 10, NOW - timedelta(minutes=4)), key=lambda s: s.message_id) == ids[:2]



def test_the_audited_accuracy_panel_counts_labels_whose_queue_item_is_on_another_shard(
        store: ClickHouseStore, cluster_db: VigilSettings) -> None:
    """Labels are sharded on their correction id and queue items on theirs, so most labels sit on
    another shard than their item. The panel joins the two read in full (subqueries in FROM), not
    each shard's own rows, as a join or IN sent to the shards would under distributed_product_mode
    =local (counting only the labels that share their item's shard)."""
    feedback = FeedbackStore(store)
    feedback.write_requests([LabelRequest(
        item_id=f"i-{i}", task="sentiment", message_id=f"n-{i}", text="headline", model_name="sentiment",
        model_version="v1", model_label="positive", probs={"positive": 0.9}, confidence=0.9, margin=0.8,
        entropy=0.3, reasons=[SelectionReason.audit], event_time=T0, selected_at=T0,
    ) for i in range(20)])
    feedback.write_corrections([Correction(
        correction_id=f"c-{i}", task="sentiment", message_id=f"n-{i}", item_id=f"i-{i}", text="headline",
        annotator="ann", human_label="positive" if i % 4 else "negative", model_label="positive",
        model_version="v1", source=CorrectionSource.queue, created_at=T0,
    ) for i in range(20)])
    dashboard = json.loads((GRAFANA_DASHBOARDS / "vigil-feedback.json").read_text())
    (sql,) = [t["rawSql"] for p in dashboard["panels"] if p["title"] == "Audited accuracy per model version"
              for t in p["targets"]]
    db = cluster_db.clickhouse_database
    sql = re.sub(r"\bFROM (feedback|label_queue)\b", rf"FROM {db}.\1", sql)
    span = f"toDateTime('{T0 - timedelta(minutes=1):%Y-%m-%d %H:%M:%S}', 'UTC') AND toDateTime('{NOW:%Y-%m-%d %H:%M:%S}', 'UTC')"
    sql = re.sub(r"\$__timeFilter\(([\w.]+)\)", rf"\1 BETWEEN {span}", sql)
    assert store.backend.query(sql) == [("sentiment", "v1", 0.75, 20)]

def test_a_shard_whose_first_replica_is_down_is_written_and_read_on_the_other(
    clickhouse_cluster: ClickHouseCluster, store: ClickHouseStore,
) -> None:
    batch = [msg(i) for i in range(100, 120)]  # some rows of it belong to each shard
    first, second = clickhouse_cluster.shards[1]
    ids = [m.id for m in batch]
    with first.down():
        # load_balancing=in_order: the insert and the reads fail over to the second replica alike.
        assert store.write_scored(batch) == len(batch)
        assert [m.id for m in store.fetch_scored(Kind.news, ids)] == sorted(ids)
    # Back up, the first replica fetches what it missed from the second.
    local = f"{store.database}.scored_local"
    query = f"SELECT id FROM {local} WHERE id IN {{ids:Array(String)}}"
    replicas = [node_backend(n.url, store.database) for n in (first, second)]
    try:
        on_shard = {r[0] for r in replicas[1].query(query, {"ids": ids})}
        assert on_shard, "shard 2 holds some of the batch"
        replicas[0].execute(f"SYSTEM SYNC REPLICA {local}")
        assert {r[0] for r in replicas[0].query(query, {"ids": ids})} == on_shard
    finally:
        for b in replicas:
            b.close()


def test_a_column_change_migrated_from_two_nodes_while_a_worker_writes_fails_and_loses_nothing(
    clickhouse_cluster: ClickHouseCluster, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Workers of a new release start together and each migrates, while workers of the old one
    still write. The writer must never meet a missing Distributed table (code 60, which a
    DROP + CREATE swap gave it) nor fail on the insert that races the ALTER in ZooKeeper (code 244,
    retried), and every row must land once."""
    settings = VigilSettings(
        data_dir=tmp_path_factory.mktemp("vigil"), clickhouse_url=clickhouse_cluster.nodes[1].url,
        clickhouse_database=f"c_{uuid.uuid4().hex[:12]}", clickhouse_cluster=clickhouse_cluster.name,
    )
    db = settings.clickhouse_database
    directory = tmp_path_factory.mktemp("migrations")
    for sql in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(sql, directory)
    (directory / "0090_scored_lang.sql").write_text("ALTER TABLE ${db}.scored ADD COLUMN lang String DEFAULT ''\n;\n")

    store = open_store(settings)  # the release before: every migration but 0090
    stop, written, errors = threading.Event(), [], []

    def write() -> None:
        i = 10_000
        while not stop.is_set():
            batch = [msg(j) for j in range(i, i + 10)]
            try:
                store.write_scored(batch)
                written.extend(m.id for m in batch)
            except Exception as exc:  # noqa: BLE001 - the test reports every failed write
                errors.append(exc)
            i += 10

    def migrate_from(node: int) -> list[str]:
        backend = node_backend(clickhouse_cluster.nodes[node].url, db)
        try:
            return migrate(backend, database=db, ttl_days=30, directory=directory,
                           cluster=clickhouse_cluster.name).applied
        finally:
            backend.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(written) < 50 and not errors:
            stop.wait(0.05)
        with ThreadPoolExecutor(2) as pool:
            applied = list(pool.map(migrate_from, (0, 2)))
        before = len(written)
        while len(written) < before + 50 and not errors:
            stop.wait(0.05)
    finally:
        stop.set()
        writer.join()
    try:
        assert errors == []
        assert sorted(applied) == [[], ["0090_scored_lang"]]  # one applied it, the other waited its turn
        # A read right after the last write missed 2 of 290 rows once: load_balancing's order counts
        # replica errors, and the inserts racing the ALTER err, so reads may briefly go to a replica
        # that has not fetched everything yet (README, "ClickHouse cluster"). Count once all have.
        for node in clickhouse_cluster.nodes:
            replica = node_backend(node.url, db)
            replica.execute(f"SYSTEM SYNC REPLICA {db}.scored_local")
            replica.close()
        assert store.backend.query(f"SELECT count(), uniqExact(id) FROM {db}.scored") == [(len(written), len(written))]
    finally:
        store.close()
    for node in clickhouse_cluster.nodes:
        backend = node_backend(node.url, db)
        try:
            # No swap table is left over.
            expected = {"schema_migrations", ANCHOR_TABLE} | TABLES | {f"{t}_local" for t in TABLES}
            assert table_names(backend, db) == expected
            for table in ("scored", "scored_local"):
                columns = {name for (name,) in backend.query(
                    "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                    {"db": db, "t": table})}
                assert "lang" in columns, (node.url, table)
        finally:
            backend.close()


def _lock_holders(nodes: list[ServerBackend], db: str) -> list[int]:
    """The nodes holding a migration lock table."""
    return [i for i, node in enumerate(nodes) if LOCK_TABLE in table_names(node, db)]


def _lock_tables(nodes: list[ServerBackend], db: str) -> set[str]:
    """Every migration lock and break lock table left on any node."""
    return {name for node in nodes for name in table_names(node, db) if name.startswith(LOCK_TABLE)}


def _die_holding_the_lock_and_breaking_it(nodes: list[ServerBackend], db: str) -> list[str]:
    """A migrator that died holding the lock (node 1), and a waiter that died breaking it (node 2):
    the two lock tables."""
    nodes[1].execute(create_lock_statement(db))
    dead = lock_node(nodes[1], db)
    assert dead is not None
    breaking = break_lock_table(LOCK_TABLE, dead.generation)
    nodes[2].execute(create_lock_statement(db, breaking))
    return [LOCK_TABLE, breaking]


def test_migrators_take_turns_and_the_next_one_clears_what_a_killed_one_left(
    clickhouse_cluster: ClickHouseCluster, cluster_db: VigilSettings, nodes: list[ServerBackend],
) -> None:
    db, cluster = cluster_db.clickhouse_database, clickhouse_cluster.name
    # While a migrator on node 1 holds the lock, one on another node and one on node 1 itself wait.
    with cluster_migration_lock(nodes[1], db, cluster):
        assert _lock_holders(nodes, db) == [1]
        assert 0 <= lock_age_s(nodes[2], db) < 60  # type: ignore[operator]
        for waiter in (nodes[3], nodes[1]):
            with pytest.raises(MigrationError, match=f"DROP TABLE IF EXISTS {db}.{LOCK_TABLE} ON CLUSTER"):
                with cluster_migration_lock(waiter, db, cluster, wait_s=0.5, poll_s=0.1):
                    pass
    assert _lock_holders(nodes, db) == []
    assert lock_age_s(nodes[2], db) is None  # the release removed the lock's ZooKeeper path
    with cluster_migration_lock(nodes[3], db, cluster, wait_s=0.5):  # released: taken at once
        assert _lock_holders(nodes, db) == [3]

    # A migrator that died holding the lock and in mid-swap, and a waiter that died breaking it: both
    # locks are broken once stale, and the next migration drops the swap's temporary table.
    _die_holding_the_lock_and_breaking_it(nodes, db)
    leftover = "scored__old_0123456789ab"
    nodes[0].execute(f"CREATE TABLE {db}.{leftover} ON CLUSTER {cluster} AS {db}.scored")
    with cluster_migration_lock(nodes[3], db, cluster, wait_s=10, stale_after_s=0, poll_s=0.1):
        assert _lock_holders(nodes, db) == [3]
    report = migrate(nodes[2], database=db, ttl_days=30, cluster=cluster)
    assert report.applied == [] and report.removed_leftovers == [leftover]
    assert not any(leftover in table_names(node, db) for node in nodes)
    assert _lock_tables(nodes, db) == set()


class _Pauses(TypedDict, total=False):
    lock_s: float
    break_s: float


class _Paused:
    """A migrator's connection whose DROPs ON CLUSTER of the migration lock (``lock_s``) or of a break
    lock (``break_s``) go out late, as from a process paused between finding a lock stale and
    dropping it."""

    def __init__(self, backend: ServerBackend, *, lock_s: float = 0.0, break_s: float = 0.0) -> None:
        self.backend, self.lock_s, self.break_s = backend, lock_s, break_s

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if sql.startswith("DROP TABLE IF EXISTS") and " ON CLUSTER " in sql:
            time.sleep(self.lock_s if f".{LOCK_TABLE} ON CLUSTER" in sql else self.break_s)
        return self.backend.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def _migrate_together(
    clickhouse_cluster: ClickHouseCluster, db: str, waiters: list[tuple[int, float, _Pauses]], *,
    stale_after_s: float, hold_s: float,
) -> list[tuple[float, float]]:
    """Each waiter (node, start delay, pauses) takes the migration lock once, on its own connection
    as a process would, and holds it ``hold_s``; when each held it, in order."""
    together = threading.Barrier(len(waiters), timeout=60)  # one that fails to connect fails the rest
    held: list[tuple[float, float]] = []

    def migrate_once(node_index: int, start_after_s: float, pauses: _Pauses) -> None:
        node = node_backend(clickhouse_cluster.nodes[node_index].url, db)
        try:
            together.wait()
            time.sleep(start_after_s)
            with cluster_migration_lock(cast(Backend, _Paused(node, **pauses)), db, clickhouse_cluster.name,
                                        wait_s=60, stale_after_s=stale_after_s, poll_s=0.1):
                start = time.monotonic()
                time.sleep(hold_s)
                held.append((start, time.monotonic()))
        finally:
            node.close()

    with ThreadPoolExecutor(len(waiters)) as pool:
        list(pool.map(lambda w: migrate_once(*w), waiters))
    return sorted(held)


def _one_at_a_time(held: list[tuple[float, float]]) -> bool:
    return all(end <= next_start for (_, end), (next_start, _) in zip(held, held[1:]))


def test_waiters_that_find_a_stale_lock_together_migrate_one_at_a_time(
    clickhouse_cluster: ClickHouseCluster, cluster_db: VigilSettings, nodes: list[ServerBackend],
) -> None:
    """Workers of a new release start together after a migrator died holding the lock, and all find
    it stale at once. One of them drops it late (paused): by then another has broken the lock and
    taken it, and the late one must not drop that holder's lock and migrate beside it."""
    db = cluster_db.clickhouse_database
    stale_after_s, hold_s = 5, 2.5  # a holder's lock never looks stale
    nodes[1].execute(create_lock_statement(db))
    while (lock_age_s(nodes[1], db) or 0) <= stale_after_s:
        time.sleep(0.2)
    waiters: list[tuple[int, float, _Pauses]] = [(0, 0.0, {"lock_s": 1.5}), (2, 0.0, {}), (3, 0.0, {})]
    held = _migrate_together(clickhouse_cluster, db, waiters, stale_after_s=stale_after_s, hold_s=hold_s)
    assert len(held) == len(waiters)
    assert _one_at_a_time(held), held
    assert _lock_holders(nodes, db) == [] and _lock_tables(nodes, db) == set()


def test_waiters_that_find_a_stale_break_lock_together_migrate_one_at_a_time(
    clickhouse_cluster: ClickHouseCluster, cluster_db: VigilSettings, nodes: list[ServerBackend],
) -> None:
    """A migrator died holding the lock and a waiter died breaking it; the next release's workers
    find both stale. Node 0 drops the dead waiter's break lock late, by when node 3 has taken the
    break lock afresh and is itself slow to drop the dead migrator's lock. Were the late drop to
    remove node 3's break lock, node 2 would break the lock and take it, node 3's drop would then
    remove node 2's lock, and both would migrate (as before break locks were named for the
    generation they break)."""
    db = cluster_db.clickhouse_database
    stale_after_s, hold_s = 5, 2.5
    for table in _die_holding_the_lock_and_breaking_it(nodes, db):
        while (lock_age_s(nodes[0], db, table) or 0) <= stale_after_s:
            time.sleep(0.2)
    waiters: list[tuple[int, float, _Pauses]] = [
        (0, 0.0, {"break_s": 1.5}), (3, 0.0, {"lock_s": 3.0}), (2, 0.5, {}),
    ]
    held = _migrate_together(clickhouse_cluster, db, waiters, stale_after_s=stale_after_s, hold_s=hold_s)
    assert len(held) == len(waiters)
    assert _one_at_a_time(held), held
    assert _lock_holders(nodes, db) == [] and _lock_tables(nodes, db) == set()


def test_a_create_that_races_the_holders_drop_holds_a_lock_that_stays(
    cluster_db: VigilSettings, nodes: list[ServerBackend],
) -> None:
    """Waiters on three nodes hammer CREATE while the holder drops the lock, 20 times. 18.16 removes
    a replicated table's ZooKeeper path node by node when its last replica goes: without the anchor
    replicas, a winning CREATE that came in meanwhile left the path half removed (67 of 150 rounds,
    `python -m benchmarks.lock_race`) or lost its lock node under it (1 of 150), so that a second
    CREATE won too. With them each round's winner keeps a lock node others see, and the path stays
    whole."""
    db = cluster_db.clickhouse_database
    assert race(nodes, db, rounds=20) == Counter(clean=20)
    assert _lock_tables(nodes, db) == set()


class _SlowOn:
    """A migrator's connection whose statements that mention ``marker`` run ``delay_s`` late, as in a
    migration busy for long; ``reached`` is set at the first."""

    def __init__(self, backend: ServerBackend, marker: str, delay_s: float) -> None:
        self.backend, self.marker, self.delay_s = backend, marker, delay_s
        self.reached = threading.Event()

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if self.marker in sql:
            self.reached.set()
            time.sleep(self.delay_s)
        return self.backend.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def test_a_migrator_whose_lock_was_dropped_stops_before_its_next_statement(
    clickhouse_cluster: ClickHouseCluster, nodes: list[ServerBackend], tmp_path: Any,
) -> None:
    """A waiter's error tells the operator to drop the lock if no migrator is alive; this one was,
    only slow. Once its lock is gone it finishes the statement it was in, then stops instead of
    going on beside the next holder, leaves that holder's lock alone, and a later run finishes."""
    db, cluster = f"c_{uuid.uuid4().hex[:12]}", clickhouse_cluster.name
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    heartbeats = (MIGRATIONS_DIR / "0011_retrain_heartbeats.sql").read_text()
    (directory / "0091_slow.sql").write_text(heartbeats.replace("retrain_heartbeats", "slow_a"))
    migrator = _SlowOn(node_backend(clickhouse_cluster.nodes[1].url, db), "slow_a", delay_s=2.0)
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(migrate, cast(Backend, migrator), database=db, ttl_days=30,
                                  directory=directory, cluster=cluster)
            assert migrator.reached.wait(60)
            nodes[0].execute(f"DROP TABLE IF EXISTS {db}.{LOCK_TABLE} ON CLUSTER {cluster}")
            with cluster_migration_lock(nodes[1], db, cluster, wait_s=5):  # the next holder, on the same node
                with pytest.raises(MigrationError, match="was broken while it migrated"):
                    running.result()
                assert _lock_holders(nodes, db) == [1]  # the stopped migrator did not drop it by name
                # It finished the statement it was in (the local table), not the one after it.
                tables = table_names(nodes[1], db)
                assert "slow_a_local" in tables and "slow_a" not in tables
    finally:
        migrator.backend.close()
    report = migrate(nodes[3], database=db, ttl_days=30, directory=directory, cluster=cluster)
    assert report.applied == ["0091_slow"]
    assert "slow_a" in table_names(nodes[1], db)
