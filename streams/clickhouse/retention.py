"""Row retention on a 'legacy-18' schema, where ClickHouse 18.16 has no TTL.

On a modern schema each table's ``TTL toDateTime(<column>) + INTERVAL <n> DAY`` deletes expired
rows. 18.16 rejects that clause, so the legacy tables are created without it and would keep every
row for ever (and with it the masked support text the retention is there to bound). This module
reads the same clauses from the migrations, rendered at the modern level, so the two levels cannot
drift apart, and deletes what they would have deleted with ``ALTER TABLE ... DELETE`` (a mutation,
which 18.16 has). The worker's consumer-group leader runs it every
``VIGIL_CLICKHOUSE_PRUNE_INTERVAL_S``; ``vigil db prune`` runs it by hand or from cron.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .backends import Backend
from .cluster import LOCAL_SUFFIX
from .compat import CompatLevel, render_sql, template_values
from .errors import BackendUnavailable, MigrationError
from .migrations import Migration

log = logging.getLogger(__name__)

_TABLE = re.compile(
    r"^(?:CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?\w+\.(\w+)|ALTER\s+TABLE\s+\w+\.(\w+)\s+MODIFY\s+TTL\b)",
    re.IGNORECASE,
)
_TTL = re.compile(r"\bTTL\b(.*)$", re.IGNORECASE | re.DOTALL)
_DAYS = re.compile(r"^\s*toDateTime\((\w+)\)\s*\+\s*INTERVAL\s+(\d+)\s+DAY\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Expiry:
    """Rows of ``table`` whose ``column`` is more than ``days`` days old are expired."""

    table: str
    column: str
    days: int

    @property
    def condition(self) -> str:
        # The TTL's own expression: its days are added in the column's zone (UTC). Subtracted from
        # now(), they would be counted in the server's zone, an hour off across a clock change.
        return f"toDateTime({self.column}) + INTERVAL {self.days} DAY < now()"


@dataclass(frozen=True)
class PruneResult:
    table: str
    expired_rows: int

    @property
    def deleting(self) -> bool:
        """A mutation deletes the expired rows: issued now, or one still running from before."""
        return self.expired_rows > 0


def expiries(migrations: Sequence[Migration], ttl_days: int) -> list[Expiry]:
    """The TTL of every table, as the modern schema's migrations declare it (a later MODIFY TTL
    replaces what the CREATE said)."""
    values = template_values(CompatLevel.modern, database="db", ttl_days=ttl_days)
    found: dict[str, Expiry] = {}
    for mig in migrations:
        for statement in render_sql(mig.template, CompatLevel.modern, values):
            ttl = _TTL.search(statement)
            if ttl is None:
                continue
            table, days = _TABLE.match(statement), _DAYS.match(ttl.group(1))
            if table is None or days is None:
                raise MigrationError(
                    f"{mig.name}.sql: a TTL must be a CREATE TABLE's last clause or an ALTER TABLE's "
                    "MODIFY TTL, written 'TTL toDateTime(<column>) + INTERVAL <n> DAY', for the legacy-18 "
                    f"schema to delete the same rows; got {statement[:160]!r}"
                )
            name = table.group(1) or table.group(2)
            found[name] = Expiry(name, days.group(1), int(days.group(2)))
    return list(found.values())


def delete_statement(expiry: Expiry, database: str, cluster: str | None) -> str:
    """The mutation deleting ``expiry``'s rows. On a cluster it goes to the replicated local
    tables (a Distributed table takes no mutation); ON CLUSTER has one replica of each shard run
    it, and replication carries it to the others."""
    target = f"{database}.{_stored_table(expiry, cluster)}" + (f" ON CLUSTER {cluster}" if cluster else "")
    return f"ALTER TABLE {target} DELETE WHERE {expiry.condition}"


def _stored_table(expiry: Expiry, cluster: str | None) -> str:
    return f"{expiry.table}{LOCAL_SUFFIX}" if cluster else expiry.table


def _running_deletes(backend: Backend, database: str, table: str) -> int:
    (n,), = backend.query(
        "SELECT count() FROM system.mutations WHERE database = {db:String} AND table = {t:String} "
        "AND is_done = 0 AND command LIKE 'DELETE WHERE%'",
        {"db": database, "t": table},
    )
    return int(n)


def prune_expired(
    backend: Backend, *, database: str, level: CompatLevel, expiring: Sequence[Expiry], cluster: str | None = None,
) -> list[PruneResult]:
    """Delete the expired rows of every table on a legacy-18 schema (nothing to do on a modern
    one: its TTL does it). A table with no expired rows, or with a delete still running (from an
    earlier prune, or another worker's), gets no new mutation: each one rewrites the table's parts.
    Rows a running delete has not reached yet still count, so a table with none expired has no
    delete left to wait for."""
    if level is CompatLevel.modern:
        return []
    results = []
    for expiry in expiring:
        (expired,), = backend.query(f"SELECT count() FROM {database}.{expiry.table} WHERE {expiry.condition}")
        expired = int(expired)
        if expired and not _running_deletes(backend, database, _stored_table(expiry, cluster)):
            backend.execute(delete_statement(expiry, database, cluster))
            log.info("retention: deleting %d rows of %s.%s older than %d days (%s)",
                     expired, database, expiry.table, expiry.days, expiry.column)
        results.append(PruneResult(expiry.table, expired))
    return results


def wait_for_deletes(
    backend: Backend, *, database: str, expiring: Sequence[Expiry], cluster: str | None = None,
    timeout_s: float = 600.0, poll_s: float = 0.5,
) -> None:
    """Block until no delete mutation runs on the tables (on the node ``backend`` talks to)."""
    tables = [_stored_table(e, cluster) for e in expiring]
    deadline = time.monotonic() + timeout_s
    while any(_running_deletes(backend, database, t) for t in tables):
        if time.monotonic() > deadline:
            raise BackendUnavailable(
                f"the retention deletes on {database} were still running after {timeout_s:.0f}s; they go on "
                "in the background: see system.mutations (is_done = 0, latest_fail_reason on newer servers)"
            )
        time.sleep(poll_s)
