"""Retention on a legacy-18 schema (streams/clickhouse/retention.py): the TTLs read from the
migrations, and expired rows deleted on Debian's clickhouse-server 18.16, which has no TTL."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.clickhouse import ClickHouseStore, CompatLevel, MigrationError, open_store
from streams.clickhouse.backends import EmbeddedBackend
from streams.clickhouse.migrations import MIGRATIONS_DIR, load_migrations
from streams.clickhouse.retention import Expiry, delete_statement, expiries, prune_expired, wait_for_deletes
from streams.contracts import DeadLetter, DeadLetterReason, Kind, ShadowPrediction
from streams.settings import MAX_TTL_DAYS, VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import stack_env, use_stack
from tests.test_clickhouse_store import msg


def test_expiries_are_the_ttls_the_modern_schema_declares() -> None:
    found = expiries(load_migrations(), ttl_days=30)
    assert set(found) == {
        Expiry("scored", "written_time", 30),
        Expiry("dead_letters", "received_at", 30),
        Expiry("alerts", "written_time", 30),
        Expiry("triage", "written_time", 30),
        Expiry("ticket_acks", "written_time", 30),
        Expiry("dead_letter_replays", "replayed_at", 30),
        Expiry("alerting_seen", "saved_at", 2),  # its own fixed TTL, whatever the setting
        Expiry("shadow_predictions", "scored_time", 30),  # given by a later ALTER
    }
    assert len(found) == len(set(found))


def test_a_later_modify_ttl_replaces_the_create_s(tmp_path: Path) -> None:
    shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations")
    (tmp_path / "migrations" / "0999_shorter.sql").write_text(
        "--@modern ALTER TABLE ${db}.scored MODIFY TTL toDateTime(scored_time) + INTERVAL 9 DAY\n;", encoding="utf-8"
    )
    found = {e.table: e for e in expiries(load_migrations(tmp_path / "migrations"), ttl_days=30)}
    assert found["scored"] == Expiry("scored", "scored_time", 9)
    assert found["alerts"] == Expiry("alerts", "written_time", 30)


@pytest.mark.parametrize("statement", [
    "CREATE TABLE IF NOT EXISTS ${db}.extra (t DateTime) ENGINE = MergeTree() ORDER BY t\n"
    "--@modern TTL t + INTERVAL 1 MONTH\n;",
    "--@modern ALTER TABLE ${db}.scored MODIFY TTL toDateTime(written_time) + INTERVAL 9 DAY "
    "DELETE WHERE kind = 'news'\n;",
])
def test_a_ttl_the_prune_cannot_mirror_is_refused(tmp_path: Path, statement: str) -> None:
    shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations")
    (tmp_path / "migrations" / "0999_extra.sql").write_text(statement, encoding="utf-8")
    with pytest.raises(MigrationError, match="0999_extra.sql: a TTL must be a CREATE TABLE's last clause"):
        expiries(load_migrations(tmp_path / "migrations"), ttl_days=30)


def test_on_a_cluster_the_delete_goes_to_every_shard_s_local_table() -> None:
    expiry = Expiry("scored", "written_time", 7)
    assert delete_statement(expiry, "vigil", None) == (
        "ALTER TABLE vigil.scored DELETE WHERE toDateTime(written_time) + INTERVAL 7 DAY < now()"
    )
    assert delete_statement(expiry, "vigil", "two_shards") == (
        "ALTER TABLE vigil.scored_local ON CLUSTER two_shards "
        "DELETE WHERE toDateTime(written_time) + INTERVAL 7 DAY < now()"
    )


def test_the_prune_counts_days_as_the_ttl_does_across_a_clock_change(chdb_client: EmbeddedBackend) -> None:
    """The TTL adds its days to the UTC column. A cutoff of ``now() - INTERVAL n DAY`` counts them in
    the server's time zone instead: across a daylight-saving change it was an hour off the TTL's."""
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime.now(UTC)
    # Back to just before Berlin's last change of UTC offset: exactly one change in the range.
    days = next(d for d in range(1, 400)
                if (now - timedelta(days=d)).astimezone(berlin).utcoffset() != now.astimezone(berlin).utcoffset())
    cutoff = now - timedelta(days=days)
    rows = " UNION ALL ".join(
        f"SELECT '{name}' AS name, toDateTime('{at:%Y-%m-%d %H:%M:%S}', 'UTC') AS written_time"
        for name, at in (("kept", cutoff + timedelta(minutes=20)), ("expired", cutoff - timedelta(minutes=20)))
    )
    condition = Expiry("t", "written_time", days).condition
    in_berlin = "SETTINGS session_timezone = 'Europe/Berlin'"  # now() in the zone, as a server's there
    pruned = chdb_client.query(f"SELECT name FROM ({rows}) WHERE {condition} {in_berlin}")
    assert pruned == [("expired",)]


def test_a_modern_schema_needs_no_prune(chdb_settings: VigilSettings) -> None:
    with open_store(chdb_settings) as store:
        assert store.level is CompatLevel.modern
        expiring = expiries(load_migrations(), chdb_settings.clickhouse_ttl_days)
        assert prune_expired(store.backend, database=store.database, level=store.level, expiring=expiring) == []
    result = CliRunner().invoke(app, ["db", "prune"], env={"VIGIL_DATA_DIR": str(chdb_settings.data_dir)})
    assert result.exit_code == 0, result.output
    assert "its tables' TTL deletes expired rows" in result.output


def test_a_retention_past_clickhouse_s_last_date_is_refused(tmp_path: Path) -> None:
    """An expiry past 2106, DateTime's end, wraps round to 1970: with 36500 days ("keep a century")
    the modern TTL deleted every row at its first merge (so would a legacy-18 schema's prune on a
    server upgraded past 18.16, whose ``now() - INTERVAL 36500 DAY`` wraps to 2063)."""
    result = CliRunner().invoke(app, ["db", "prune"], env={"VIGIL_DATA_DIR": str(tmp_path),
                                                          "VIGIL_CLICKHOUSE_TTL_DAYS": "36500"})
    assert result.exit_code == 1, result.output
    assert "VIGIL_CLICKHOUSE_TTL_DAYS: at most 10000 days" in " ".join(result.output.split())


def test_the_longest_retention_keeps_a_new_row(chdb_settings: VigilSettings) -> None:
    settings = chdb_settings.model_copy(update={"clickhouse_ttl_days": MAX_TTL_DAYS})
    with open_store(settings) as store:
        store.write_scored([msg(1)])
        store.backend.execute(f"OPTIMIZE TABLE {store.database}.scored FINAL")  # a merge applies the TTL
        assert _ids(store)[0] == ["n-1"]


def _letter(offset: int, at: datetime) -> DeadLetter:
    return DeadLetter(source_topic="vigil.news.raw", partition=0, offset=offset, raw=b"{",
                      reason=DeadLetterReason.bad_json, detail="not JSON", received_at=at)


def _ids(store: ClickHouseStore) -> tuple[list[str], list[int]]:
    db = store.database
    scored = [i for (i,) in store.backend.query(f"SELECT id FROM {db}.scored ORDER BY id")]
    letters = [int(o) for (o,) in store.backend.query(f"SELECT src_offset FROM {db}.dead_letters ORDER BY src_offset")]
    return scored, letters


def _mutations(store: ClickHouseStore) -> int:
    (n,), = store.backend.query("SELECT count() FROM system.mutations WHERE database = {db:String}",
                                {"db": store.database})
    return int(n)


def test_legacy_prune_deletes_what_the_ttl_would_and_nothing_else(server_settings: VigilSettings) -> None:
    days = server_settings.clickhouse_ttl_days
    now = datetime.now(UTC)
    expired, kept = now - timedelta(days=days, hours=1), now - timedelta(days=days - 1)
    with open_store(server_settings, clock=lambda: expired) as old_store:
        assert old_store.level is CompatLevel.legacy_18
        old_store.write_scored([msg(1), msg(2)])
        recent = ClickHouseStore(old_store.backend, database=old_store.database, level=old_store.level,
                                 clock=lambda: kept)
        recent.write_scored([msg(3)])
        recent.write_dead_letters([_letter(10, expired), _letter(11, kept)])
        shadow = ShadowPrediction(model_version="v2", label="negative", confidence=0.7)
        recent.write_shadow([msg(4, shadow=shadow, scored_time=expired), msg(5, shadow=shadow, scored_time=kept)])
        assert _ids(recent) == (["n-1", "n-2", "n-3"], [10, 11])

    runner = CliRunner()
    env = {"VIGIL_CLICKHOUSE_URL": server_settings.clickhouse_url,
           "VIGIL_CLICKHOUSE_DATABASE": server_settings.clickhouse_database,
           "VIGIL_DATA_DIR": str(server_settings.data_dir)}
    result = runner.invoke(app, ["db", "prune", "--wait"], env=env)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "scored: 2 expired rows, deleting" in said and "dead_letters: 1 expired rows, deleting" in said
    assert "shadow_predictions: 1 expired rows, deleting" in said
    assert "alerts: 0 expired rows, nothing to delete" in said and "deletes finished" in said

    with open_store(server_settings) as store:
        assert _ids(store) == (["n-3"], [11])
        assert store.shadow_agreement(Kind.news) == [("v1", "v2", 1, 1)]
        issued = _mutations(store)
        assert issued == 3  # one per table that had expired rows
        expiring = expiries(load_migrations(), days)
        again = prune_expired(store.backend, database=store.database, level=store.level, expiring=expiring)
        assert {r.table: (r.expired_rows, r.deleting) for r in again}["scored"] == (0, False)
        assert _mutations(store) == issued  # nothing expired: no table is rewritten for nothing


def test_a_delete_still_running_is_not_issued_again(server_settings: VigilSettings) -> None:
    """Workers and cron may prune at the same time; 18.16 runs a mutation after the merges in hand,
    so a second prune usually meets the first one's delete unfinished and must leave it be."""
    expired = datetime.now(UTC) - timedelta(days=server_settings.clickhouse_ttl_days + 1)
    with open_store(server_settings, clock=lambda: expired) as store:
        store.write_scored([msg(i) for i in range(1, 6)])
        expiring = [Expiry("scored", "written_time", server_settings.clickhouse_ttl_days)]
        where = dict(database=store.database, expiring=expiring)
        # Merges stopped, the delete cannot finish until they are started again.
        store.backend.execute(f"SYSTEM STOP MERGES {store.database}.scored")
        try:
            first = prune_expired(store.backend, level=store.level, **where)
            second = prune_expired(store.backend, level=store.level, **where)
            assert [(r.expired_rows, r.deleting) for r in first + second] == [(5, True), (5, True)]
            assert _mutations(store) == 1
        finally:
            store.backend.execute(f"SYSTEM START MERGES {store.database}.scored")
        wait_for_deletes(store.backend, **where, timeout_s=60)
        assert _ids(store)[0] == []


@pytest.mark.slow
def test_the_worker_group_leader_prunes_on_its_interval(tmp_path: Path, tiny_registry: Path, kafka_broker,
                                                        clickhouse_server, monkeypatch) -> None:
    env = stack_env(tmp_path, kafka_broker.bootstrap, clickhouse_server.up(), partitions=1,
                    VIGIL_CLICKHOUSE_PRUNE_INTERVAL_S="1")
    settings = use_stack(env, monkeypatch, tiny_registry)
    expired = datetime.now(UTC) - timedelta(days=settings.clickhouse_ttl_days + 1)
    with open_store(settings, clock=lambda: expired) as store:
        store.write_scored([msg(1)])
        ClickHouseStore(store.backend, database=store.database, level=store.level).write_scored([msg(2)])
    worker = WorkerProcess(kafka_broker.bootstrap, tmp_path / "worker.log", env)
    worker.start()
    try:
        with open_store(settings) as store:
            deadline = time.monotonic() + 180
            while _ids(store)[0] != ["n-2"]:
                assert worker.alive(), worker.log_path.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, f"still stored: {_ids(store)[0]}"
                time.sleep(0.5)
    finally:
        worker.stop(timeout_s=10)
    assert "retention: deleting 1 rows of" in worker.log_path.read_text(errors="replace")
