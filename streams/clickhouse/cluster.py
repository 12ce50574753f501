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
table holds no data (inserts are synchronous, see above), so a new one is created ``AS`` the altered
local table, with the engine the table's CREATE had (the rewrite is stateful: ``ClusterRewriter``,
fed every migration in order, applied or not), and swapped in by one ``RENAME`` ON CLUSTER. Writers
therefore never meet a missing ``t``, as they did between a DROP and a CREATE (tests/
test_clickhouse_cluster_live.py writes through the swap). Migrators take turns (migration_lock.py),
and the temporary names carry a token per migrator run: a migrator killed in mid-swap leaves a
``t__swap_<token>`` or ``t__old_<token>`` Distributed table behind, which holds no data, and the next
migrator drops it.

Any other statement is refused, so a schema change cannot silently miss the cluster.
"""

from __future__ import annotations

import re

from .errors import MigrationError

LOCAL_SUFFIX = "_local"
_SWAP_LEFTOVER = re.compile(r"^\w+__(swap|old)_[0-9a-f]{12}$")
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


def _create_table(m: re.Match[str], cluster: str) -> tuple[str, str, str]:
    """(the replicated local table's CREATE, the Distributed table's CREATE), both ON CLUSTER, and
    the Distributed table's definition after its name (``AS ... ENGINE = Distributed(...)``)."""
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
    distributed = (
        f"AS {database}.{local}\n"
        f"ENGINE = Distributed({cluster}, {database}, {local}, {_sharding_key(order_by.group(1))})"
    )
    return (
        f"{head}{database}.{local} ON CLUSTER {cluster}\n{local_body}",
        f"{head}{database}.{table} ON CLUSTER {cluster} {distributed}",
        distributed,
    )


class ClusterRewriter:
    """Rewrites single-node migration statements for ``cluster``, in migration order. It remembers
    each table's Distributed definition, which a later column change re-issues (see the module doc);
    feed it every migration's statements, already applied ones included. ``swap_token`` names the
    temporary tables of a column change's swap: give each migrator run its own."""

    def __init__(self, cluster: str, swap_token: str = "0") -> None:
        if not re.fullmatch(r"\w+", swap_token):
            raise MigrationError(f"swap token {swap_token!r} must be letters, digits or underscores")
        self.cluster = cluster
        self.swap_token = swap_token
        self._distributed: dict[str, str] = {}

    def statements(self, statement: str) -> list[str]:
        """The statements that apply one single-node migration statement to the cluster."""
        cluster, text = self.cluster, statement.strip()
        if m := _CREATE_DB.match(text):
            return [f"CREATE DATABASE {m.group(1) or ''}{m.group(2)} ON CLUSTER {cluster}"]
        if m := _CREATE_TABLE.match(text):
            local, distributed, definition = _create_table(m, cluster)
            self._distributed[f"{m.group(2)}.{m.group(3)}"] = definition
            return [local, distributed]
        if m := _ALTER.match(text):
            database, table, change = m.group(1), m.group(2), m.group(3)
            out = [f"ALTER TABLE {database}.{table}{LOCAL_SUFFIX} ON CLUSTER {cluster} {change}"]
            if _COLUMN_CHANGE.match(change):
                out += self._swap_distributed(database, table)
            return out
        raise MigrationError(
            f"cluster mode cannot apply this migration statement on every node: {text[:80]!r}. Write it as "
            "CREATE DATABASE / CREATE TABLE db.t ... ENGINE = *MergeTree / ALTER TABLE db.t."
        )

    def _swap_distributed(self, database: str, table: str) -> list[str]:
        """A Distributed table with the altered local table's columns, renamed into ``table``'s place."""
        definition = self._distributed.get(f"{database}.{table}")
        if definition is None:
            raise MigrationError(
                f"cluster mode changes the columns of {database}.{table} by replacing its Distributed "
                "table, and no earlier migration creates it"
            )
        name, cluster = f"{database}.{table}", self.cluster
        new, old = f"{name}__swap_{self.swap_token}", f"{name}__old_{self.swap_token}"
        return [
            f"CREATE TABLE {new} ON CLUSTER {cluster} {definition}",
            f"RENAME TABLE {name} TO {old}, {new} TO {name} ON CLUSTER {cluster}",
            f"DROP TABLE IF EXISTS {old} ON CLUSTER {cluster}",
        ]


def is_swap_leftover(table: str) -> bool:
    """A temporary table of a column change's swap, as named with a migrator run's token."""
    return _SWAP_LEFTOVER.match(table) is not None


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
