"""Migration statements for a ClickHouse cluster (``VIGIL_CLICKHOUSE_CLUSTER``). Pure text rewriting.

Each ``CREATE TABLE db.t ... ENGINE = XMergeTree(args)`` becomes two statements, both ``ON CLUSTER``:

- ``db.t_local`` with ``ReplicatedXMergeTree('/clickhouse/tables/{shard}/db/t_local', '{replica}', args)``:
  the data, replicated inside each shard (the servers' ``{shard}``/``{replica}`` macros fill the path);
- ``db.t`` as ``Distributed(cluster, db, t_local, cityHash64(<ORDER BY key>))``: the name Vigil reads
  and writes, so the store's queries do not change. Sharding on the sorting key keeps every replay
  of a row on the shard that holds the original, where ReplacingMergeTree/FINAL collapses it.

The Vigil user's profile needs (README, "ClickHouse cluster"; tests/test_clickhouse_cluster_live.py
runs with it): ``insert_distributed_sync=1`` (a Distributed write is otherwise acknowledged once
queued on the receiving node), ``load_balancing=in_order`` with ``prefer_localhost_replica=0``
(writes and reads go to the same, first live, replica of a shard; otherwise a read right after a
write may go to a replica that has not fetched it yet), and ``distributed_product_mode=local``
(the triage reads' ``IN (SELECT ... FROM ticket_acks)``; the default ``deny`` refuses it, and
tickets and acks are sharded alike on the message id).

``CREATE DATABASE`` gets ``ON CLUSTER``; ``ALTER TABLE db.t`` is applied to ``t_local`` ON CLUSTER. A
column change must reach the Distributed table too, but ClickHouse 18.16 refuses ``ALTER ... ON
CLUSTER`` on a non-replicated table of a cluster whose shards use ``internal_replication`` ("Table t
isn't replicated, but shard #2 is replicated according to its cluster definition"). A Distributed
table holds no data (inserts are synchronous, see above), so it is dropped and created again ``AS``
the altered local table, ON CLUSTER, with the engine its CREATE had: the rewrite is stateful
(``ClusterRewriter``), fed every migration in order, applied or not. Any other statement is refused,
so a schema change cannot silently miss the cluster.
"""

from __future__ import annotations

import re

from .errors import MigrationError

LOCAL_SUFFIX = "_local"
_CREATE_DB = re.compile(r"^CREATE\s+DATABASE\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\s*$", re.IGNORECASE)
_CREATE_TABLE = re.compile(r"^CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\.(\w+)\s*(\(.*)$", re.IGNORECASE | re.DOTALL)
_ENGINE = re.compile(r"ENGINE\s*=\s*(\w*MergeTree)\s*(\(([^()]*)\))?", re.IGNORECASE)
_ORDER_BY = re.compile(r"^\s*ORDER\s+BY\s+(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_ALTER = re.compile(r"^ALTER\s+TABLE\s+(\w+)\.(\w+)\s+(.*)$", re.IGNORECASE | re.DOTALL)
_COLUMN_CHANGE = re.compile(r"^\s*(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.IGNORECASE)


def replica_path(database: str, table: str) -> str:
    return f"/clickhouse/tables/{{shard}}/{database}/{table}"


def _sharding_key(order_by: str) -> str:
    inner = order_by.strip()
    if inner.startswith("(") and inner.endswith(")"):
        inner = inner[1:-1]
    return f"cityHash64({inner})"


def _create_table(m: re.Match[str], cluster: str) -> tuple[str, str]:
    """(the replicated local table's CREATE, the Distributed table's CREATE), both ON CLUSTER."""
    if_not_exists, database, table, body = m.group(1) or "", m.group(2), m.group(3), m.group(4)
    engine = _ENGINE.search(body)
    if engine is None:
        raise MigrationError(
            f"{database}.{table}: cluster mode needs a *MergeTree engine to replicate; give the table "
            "one or create it outside the migrations"
        )
    order_by = _ORDER_BY.search(body[engine.end():])
    if order_by is None:
        raise MigrationError(f"{database}.{table}: cluster mode shards on the ORDER BY key, and it has none")
    if body[engine.end():].lstrip().startswith("("):
        raise MigrationError(f"{database}.{table}: cluster mode cannot rewrite nested engine arguments")
    local = f"{table}{LOCAL_SUFFIX}"
    args = [f"'{replica_path(database, local)}'", "'{replica}'"]
    if engine.group(3) and engine.group(3).strip():
        args.append(engine.group(3).strip())
    replicated = f"ENGINE = Replicated{engine.group(1)}({', '.join(args)})"
    local_body = body[: engine.start()] + replicated + body[engine.end():]
    head = f"CREATE TABLE {if_not_exists}"
    return (
        f"{head}{database}.{local} ON CLUSTER {cluster}\n{local_body}",
        (
            f"{head}{database}.{table} ON CLUSTER {cluster} AS {database}.{local}\n"
            f"ENGINE = Distributed({cluster}, {database}, {local}, {_sharding_key(order_by.group(1))})"
        ),
    )


class ClusterRewriter:
    """Rewrites single-node migration statements for ``cluster``, in migration order. It remembers
    each table's Distributed CREATE, which a later column change re-issues (see the module doc);
    feed it every migration's statements, already applied ones included."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self._distributed: dict[str, str] = {}

    def statements(self, statement: str) -> list[str]:
        """The statements that apply one single-node migration statement to the cluster."""
        cluster, text = self.cluster, statement.strip()
        if m := _CREATE_DB.match(text):
            return [f"CREATE DATABASE {m.group(1) or ''}{m.group(2)} ON CLUSTER {cluster}"]
        if m := _CREATE_TABLE.match(text):
            local, distributed = _create_table(m, cluster)
            recreate = re.sub(r"^CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?", "CREATE TABLE IF NOT EXISTS ", distributed)
            self._distributed[f"{m.group(2)}.{m.group(3)}"] = recreate
            return [local, distributed]
        if m := _ALTER.match(text):
            database, table, change = m.group(1), m.group(2), m.group(3)
            out = [f"ALTER TABLE {database}.{table}{LOCAL_SUFFIX} ON CLUSTER {cluster} {change}"]
            if _COLUMN_CHANGE.match(change):
                recreate = self._distributed.get(f"{database}.{table}")
                if recreate is None:
                    raise MigrationError(
                        f"cluster mode changes the columns of {database}.{table} by recreating its Distributed "
                        "table, and no earlier migration creates it"
                    )
                out += [f"DROP TABLE IF EXISTS {database}.{table} ON CLUSTER {cluster}", recreate]
            return out
        raise MigrationError(
            f"cluster mode cannot apply this migration statement on every node: {text[:80]!r}. Write it as "
            "CREATE DATABASE / CREATE TABLE db.t ... ENGINE = *MergeTree / ALTER TABLE db.t."
        )


def cluster_statements(statement: str, cluster: str) -> list[str]:
    """One statement rewritten on its own (a column change needs ClusterRewriter's history)."""
    return ClusterRewriter(cluster).statements(statement)


def bookkeeping_table(database: str, cluster: str) -> str:
    """schema_migrations on the cluster: never distributed, so the migrator reads back at once what
    it recorded, and ONE replicated table across every node of every shard (its ZooKeeper path has
    no {shard}; its replica name is '{shard}-{replica}'), so a migrator connected to any node sees
    every migration applied through any other."""
    table = f"{database}.schema_migrations"
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ON CLUSTER {cluster} "
        "(version UInt32, name String, level String, checksum String, applied_at DateTime('UTC')) "
        f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/schema_migrations', "
        "'{shard}-{replica}', applied_at) ORDER BY version"
    )
