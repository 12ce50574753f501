"""Cluster mode (VIGIL_CLICKHOUSE_CLUSTER): the DDL the real migrations render to.

Every rendered statement is parsed by real ClickHouse (chdb's formatQuery), and the rewrite is
checked against the single-node rendering. test_clickhouse_cluster_live.py runs the same DDL on a
real two-shard 18.16 cluster with ZooKeeper.
"""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from streams.clickhouse import MigrationError
from streams.clickhouse.cluster import ClusterRewriter, cluster_statements, is_swap_leftover
from streams.clickhouse.compat import CompatLevel, template_values
from streams.clickhouse.migrations import load_migrations, rendered_plan
from streams.settings import VigilSettings

CLUSTER, DB = "vigil_c", "vigil"
_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)", re.IGNORECASE)


def _render(level: CompatLevel, cluster: str | None) -> list[str]:
    values = template_values(level, database=DB, ttl_days=30)
    return [s for _, statements in rendered_plan(load_migrations(), level, values, cluster) for s in statements]


def _tables(statements: list[str]) -> dict[str, str]:
    return {m.group(2): s for s in statements if (m := _TABLE.match(s))}


@pytest.mark.parametrize("level", list(CompatLevel))
def test_every_table_becomes_a_replicated_local_table_and_a_distributed_table(level: CompatLevel):
    single = _tables(_render(level, None))
    clustered = _render(level, CLUSTER)
    assert single, "the migrations create tables"
    assert all(f"ON CLUSTER {CLUSTER}" in s for s in clustered)
    tables = _tables(clustered)
    assert set(tables) == set(single) | {f"{t}_local" for t in single}
    for name, ddl in single.items():
        local, dist = tables[f"{name}_local"], tables[name]
        engine = re.search(r"ENGINE = (\w+)\(([^()]*)\)", ddl)
        assert engine, ddl
        assert f"ENGINE = Replicated{engine.group(1)}('/clickhouse/tables/{{shard}}/{DB}/{name}_local', '{{replica}}'" in local
        if engine.group(2):  # the version column of ReplacingMergeTree stays its last argument
            assert f"'{{replica}}', {engine.group(2)})" in local
        order_by = re.search(r"^ORDER BY \(?(.+?)\)?$", ddl, re.MULTILINE).group(1)
        assert order_by in local
        assert dist == (
            f"CREATE TABLE IF NOT EXISTS {DB}.{name} ON CLUSTER {CLUSTER} AS {DB}.{name}_local\n"
            f"ENGINE = Distributed({CLUSTER}, {DB}, {name}_local, cityHash64({order_by}))"
        )
        # Columns, partitioning and (modern) TTL are the single-node table's.
        assert local.split("(", 1)[1].split("ENGINE")[0] == ddl.split("(", 1)[1].split("ENGINE")[0]
        for clause in ("PARTITION BY", "TTL"):
            assert (clause in local) == (clause in ddl)


def test_real_clickhouse_parses_every_rendered_cluster_statement(chdb_client):
    for statement in _render(CompatLevel.modern, CLUSTER):
        (formatted,), = chdb_client.query("SELECT formatQuery({q:String})", {"q": statement})
        assert f"ON CLUSTER {CLUSTER}" in formatted


def test_database_and_alter_statements_go_on_cluster_to_both_tables():
    assert cluster_statements("CREATE DATABASE IF NOT EXISTS v", "c") == ["CREATE DATABASE IF NOT EXISTS v ON CLUSTER c"]
    rewriter = ClusterRewriter("c", swap_token="t1")
    _, distributed = rewriter.statements("CREATE TABLE v.scored (id String) ENGINE = MergeTree ORDER BY id")
    # 18.16 refuses ALTER ON CLUSTER on the Distributed table (internal_replication): a column change
    # alters the replicated tables, then a Distributed table made from them, with the first one's
    # engine, is renamed into the old one's place in one statement.
    assert rewriter.statements("ALTER TABLE v.scored ADD COLUMN lang String") == [
        "ALTER TABLE v.scored_local ON CLUSTER c ADD COLUMN lang String",
        distributed.replace("v.scored ", "v.scored__swap_t1 ", 1),
        "RENAME TABLE v.scored TO v.scored__old_t1, v.scored__swap_t1 TO v.scored ON CLUSTER c",
        "DROP TABLE IF EXISTS v.scored__old_t1 ON CLUSTER c",
    ]
    # Data changes only make sense on the local tables.
    assert rewriter.statements("ALTER TABLE v.scored DELETE WHERE id = ''") == [
        "ALTER TABLE v.scored_local ON CLUSTER c DELETE WHERE id = ''"
    ]
    # A column change of a table no migration created has no Distributed definition to swap in.
    with pytest.raises(MigrationError):
        cluster_statements("ALTER TABLE v.other ADD COLUMN lang String", "c")
    with pytest.raises(MigrationError):
        ClusterRewriter("c", swap_token="x; DROP DATABASE v")


def test_only_the_names_a_migrator_run_gives_its_swap_tables_count_as_leftovers():
    # What a run's uuid token names may be dropped by the next migrator; nothing else may.
    assert is_swap_leftover("scored__old_0123456789ab") and is_swap_leftover("triage__swap_fedcba987654")
    for name in ("scored", "scored_local", "scored__old_", "scored__old_0123456789abc", "scored__swap_t1",
                 "scored__old_0123456789AB", "schema_migrations_lock"):
        assert not is_swap_leftover(name), name


def test_migration_0010_swaps_in_a_distributed_triage_table_with_the_new_column():
    values = template_values(CompatLevel.legacy_18, database=DB, ttl_days=30)
    plan = rendered_plan(load_migrations(), CompatLevel.legacy_18, values, CLUSTER, swap_token="abc")
    (clustered,) = [statements for mig, statements in plan if mig.name == "0010_triage_source_partition"]
    created = _tables(_render(CompatLevel.legacy_18, CLUSTER))["triage"]
    assert clustered == [
        f"ALTER TABLE {DB}.triage_local ON CLUSTER {CLUSTER} ADD COLUMN source_partition Int32 DEFAULT -1",
        created.replace(f"IF NOT EXISTS {DB}.triage ", f"{DB}.triage__swap_abc ", 1),
        f"RENAME TABLE {DB}.triage TO {DB}.triage__old_abc, {DB}.triage__swap_abc TO {DB}.triage ON CLUSTER {CLUSTER}",
        f"DROP TABLE IF EXISTS {DB}.triage__old_abc ON CLUSTER {CLUSTER}",
    ]


@pytest.mark.parametrize("statement", [
    "INSERT INTO v.t VALUES (1)",
    "CREATE TABLE v.t (a UInt8) ENGINE = Memory",
    "CREATE TABLE v.t (a UInt8) ENGINE = MergeTree() PARTITION BY a",
])
def test_statements_cluster_mode_cannot_place_are_refused(statement: str):
    with pytest.raises(MigrationError):
        cluster_statements(statement, "c")


def test_cluster_name_must_be_an_identifier():
    assert VigilSettings(clickhouse_cluster="prod_1").clickhouse_cluster == "prod_1"
    with pytest.raises(ValidationError):
        VigilSettings(clickhouse_cluster="x; DROP DATABASE vigil")
