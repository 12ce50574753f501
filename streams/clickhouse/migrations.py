"""Apply ops/clickhouse/migrations/NNNN_name.sql once each, recorded in <db>.schema_migrations.

The compatibility level is fixed when the first migration is applied and recorded with it: a
schema created on 18.16 stays 'legacy-18' after a server upgrade (its tables have no Map or
DateTime64 columns), so later migrations and the writer keep matching it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from streams.settings import REPO_ROOT

from .backends import Backend
from .cluster import ClusterRewriter, bookkeeping_table, is_swap_leftover
from .compat import CompatLevel, level_for_version, render_sql, template_values
from .errors import ClickHouseConfigError, MigrationError, QueryFailed
from .migration_lock import cluster_migration_lock, ensure_anchor

log = logging.getLogger(__name__)

MIGRATIONS_DIR = REPO_ROOT / "ops" / "clickhouse" / "migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    template: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()


@dataclass
class MigrationReport:
    level: CompatLevel
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    removed_leftovers: list[str] = field(default_factory=list)


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise MigrationError(f"{path} is not named NNNN_name.sql; rename it so its order is explicit")
        found.append(Migration(int(m.group(1)), path.stem, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations in {directory} share a number: {versions}")
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    return found


def rendered_statements(mig: Migration, level: CompatLevel, values: dict[str, str]) -> list[str]:
    """The statements one migration runs on a single node."""
    return render_sql(mig.template, level, values)


def rendered_plan(
    migrations: list[Migration], level: CompatLevel, values: dict[str, str], cluster: str | None = None,
    swap_token: str = "0",
) -> list[tuple[Migration, list[str]]]:
    """Each migration with the statements it runs: as written for a single node, or rewritten for
    ``cluster`` by one ClusterRewriter fed every migration in order (a column change re-issues the
    Distributed definition of an earlier migration, under temporary names with ``swap_token``)."""
    if not cluster:
        return [(mig, rendered_statements(mig, level, values)) for mig in migrations]
    rewriter = ClusterRewriter(cluster, swap_token)
    return [
        (mig, [out for statement in rendered_statements(mig, level, values) for out in rewriter.statements(statement)])
        for mig in migrations
    ]


def _ensure_bookkeeping(backend: Backend, database: str, cluster: str | None) -> None:
    if cluster:
        backend.execute(f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster}")
        backend.execute(bookkeeping_table(database, cluster))
        ensure_anchor(backend, database, cluster)
        return
    backend.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    backend.execute(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version UInt32, name String, level String, checksum String, applied_at DateTime('UTC')) "
        "ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"
    )


_ADD_COLUMN = re.compile(r"\bADD\s+COLUMN\s+(\w+)", re.IGNORECASE)


def _apply(backend: Backend, statement: str) -> None:
    """Run one statement. A column that is already there was added by a worker migrating at the
    same moment (or by a run that stopped before recording the migration): 18.16 has no
    ``ADD COLUMN IF NOT EXISTS``, so that error means done."""
    try:
        backend.execute(statement)
    except QueryFailed as exc:
        added = _ADD_COLUMN.search(statement)
        if added is None or "already exists" not in str(exc):
            raise
        log.info("column %s is already there: another process applied this migration", added.group(1))


def schema_level(backend: Backend, database: str) -> CompatLevel | None:
    """The level the existing schema was created at, or None before the first migration."""
    rows = backend.query(
        f"SELECT level FROM {database}.schema_migrations FINAL ORDER BY version LIMIT 1"
    )
    return CompatLevel(rows[0][0]) if rows else None


def _remove_leftover_swaps(backend: Backend, database: str, cluster: str) -> list[str]:
    """Drop the temporary Distributed tables a migrator killed in mid-swap left (they hold no data);
    only safe under the migration lock, when no other migrator is swapping."""
    names = [name for (name,) in backend.query(
        "SELECT name FROM system.tables WHERE database = {db:String}", {"db": database}
    ) if is_swap_leftover(name)]
    for name in names:
        log.warning("dropping %s.%s, left by a migrator that stopped in mid-swap", database, name)
        backend.execute(f"DROP TABLE IF EXISTS {database}.{name} ON CLUSTER {cluster}")
    return names


def migrate(
    backend: Backend, *, database: str, ttl_days: int, directory: Path = MIGRATIONS_DIR,
    cluster: str | None = None,
) -> MigrationReport:
    """Create the database and apply pending migrations; safe to run on every start. With
    ``cluster``, every statement runs ON CLUSTER with replicated local and Distributed tables
    (see cluster.py), one migrator at a time (migration_lock.py)."""
    migrations = load_migrations(directory)
    if cluster and backend.name != "server":
        raise ClickHouseConfigError(
            f"VIGIL_CLICKHOUSE_CLUSTER={cluster} needs clickhouse-server: set VIGIL_CLICKHOUSE_URL to one of "
            "the cluster's nodes, or unset VIGIL_CLICKHOUSE_CLUSTER for the embedded ClickHouse."
        )
    _ensure_bookkeeping(backend, database, cluster)
    if not cluster:
        return _apply_pending(backend, database, ttl_days, migrations, cluster)
    with cluster_migration_lock(backend, database, cluster) as lock:
        # What the previous holder recorded may still be on its way to this replica.
        backend.execute(f"SYSTEM SYNC REPLICA {database}.schema_migrations")
        removed = _remove_leftover_swaps(backend, database, cluster)
        report = _apply_pending(backend, database, ttl_days, migrations, cluster, lock.confirm)
    report.removed_leftovers = removed
    return report


def _single_node() -> None:
    """On one node there is no lock to confirm."""


def _apply_pending(
    backend: Backend, database: str, ttl_days: int, migrations: list[Migration], cluster: str | None,
    confirm_lock: Callable[[], None] = _single_node,
) -> MigrationReport:
    """Fix the compatibility level, then apply and record each migration not yet recorded,
    confirming the cluster's migration lock is still ours before each statement."""
    server_level = level_for_version(backend.server_version)
    level = schema_level(backend, database) or server_level
    version_text = ".".join(map(str, backend.server_version))
    if level is not server_level:
        if level is CompatLevel.modern:
            raise MigrationError(
                f"the schema in {database} is 'modern' but ClickHouse {version_text} only supports "
                "'legacy-18'; point Vigil at the server that created it or use a new database."
            )
        log.warning(
            "ClickHouse %s supports the modern schema, but %s was created at legacy-18; staying at "
            "legacy-18 (recreate the database to get Map/DateTime64/TTL)", version_text, database,
        )
    log.info("ClickHouse %s: schema compatibility level %s for database %s", version_text, level, database)

    applied = {
        int(v): (name, checksum)
        for v, name, checksum in backend.query(
            f"SELECT version, name, checksum FROM {database}.schema_migrations FINAL"
        )
    }
    report = MigrationReport(level=level)
    values = template_values(level, database=database, ttl_days=ttl_days)
    # Its own swap names per run, so what a killed run left is told apart from the live swap.
    for mig, statements in rendered_plan(migrations, level, values, cluster, swap_token=uuid.uuid4().hex[:12]):
        if mig.version in applied:
            if applied[mig.version][1] != mig.checksum:
                raise MigrationError(
                    f"migration {mig.name}.sql was edited after it was applied to {database}; "
                    "restore it and put the change in a new numbered migration."
                )
            report.already_applied.append(mig.name)
            continue
        for statement in statements:
            confirm_lock()
            _apply(backend, statement)
        confirm_lock()
        backend.insert(
            f"{database}.schema_migrations",
            ("version", "name", "level", "checksum", "applied_at"),
            [(mig.version, mig.name, level.value, mig.checksum, datetime.now(UTC).replace(microsecond=0))],
        )
        log.info("applied ClickHouse migration %s (%s)", mig.name, level)
        report.applied.append(mig.name)
    return report
