"""The ClickHouse store on real engines: embedded chdb (26.x, 'modern') and Debian's
clickhouse-server 18.16 ('legacy-18'). Needs ``tests.fixtures.clickhouse`` registered."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from streams.alerting.contracts import Alert, ContributingMessage, Severity
from streams.clickhouse import (
    ClickHouseConfigError,
    ClickHouseStore,
    CompatLevel,
    EmbeddedInUse,
    StorageUnavailable,
    connect,
    migrate,
    open_store,
)
from streams.clickhouse.compat import to_stored_time
from streams.clickhouse.errors import BackendUnavailable
from streams.clickhouse.migrations import MIGRATIONS_DIR
from streams.contracts import DeadLetter, DeadLetterReason, Kind, ScoredMessage, ShadowPrediction
from streams.settings import VigilSettings
from tests.e2e_stack import free_port
from tests.fixtures.clickhouse import ClickHouseServer, _find_binary, users_config

# Recent: rows older than clickhouse_ttl_days (written_time) are deleted by the modern TTL.
T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=123000)
WRITTEN = T0 + timedelta(minutes=1)


def msg(i: int | str, **over: object) -> ScoredMessage:
    fields: dict[str, object] = dict(
        id=f"n-{i}", kind=Kind.news, text=f"headline {i}", model_name="sentiment", model_version="v1",
        label="neutral", probs={"positive": 0.25, "negative": 0.25, "neutral": 0.5}, confidence=0.5,
        margin=0.25, entropy=1.04, tickers=[], source="wire", content_hash=1000 + hash(str(i)) % 1000,
        event_time=T0, ingest_time=T0, scored_time=T0 + timedelta(milliseconds=5),
        src_partition=0, src_offset=int(i) if str(i).isdigit() else 0,
    )
    fields.update(over)
    return ScoredMessage(**fields)  # type: ignore[arg-type]


@pytest.fixture(params=["chdb", "server"])
def settings(request: pytest.FixtureRequest) -> VigilSettings:
    return request.getfixturevalue(f"{request.param}_settings")


@pytest.fixture
def store(settings: VigilSettings):
    with open_store(settings, clock=lambda: WRITTEN) as st:
        yield st


def test_a_column_another_process_added_first_counts_as_applied(settings: VigilSettings, tmp_path) -> None:
    """Two workers starting together both see an ADD COLUMN migration pending; the second finds
    the column there (18.16 has no ADD COLUMN IF NOT EXISTS) and must carry on, not fail to start."""
    shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations")
    backend = connect(settings)
    db = settings.clickhouse_database
    try:
        migrate(backend, database=db, ttl_days=30, directory=tmp_path / "migrations")
        (tmp_path / "migrations" / "0099_extra.sql").write_text(
            "ALTER TABLE ${db}.triage ADD COLUMN extra_col Int32 DEFAULT 0\n;\n"
        )
        backend.execute(f"ALTER TABLE {db}.triage ADD COLUMN extra_col Int32 DEFAULT 0")  # the other worker
        report = migrate(backend, database=db, ttl_days=30, directory=tmp_path / "migrations")
        assert report.applied == ["0099_extra"]
        recorded = backend.query(f"SELECT name FROM {db}.schema_migrations FINAL WHERE version = 99")
        assert recorded == [("0099_extra",)]
    finally:
        backend.close()


def test_a_cluster_on_the_embedded_clickhouse_is_refused_before_any_statement(chdb_settings: VigilSettings) -> None:
    backend = connect(chdb_settings)
    try:
        with pytest.raises(ClickHouseConfigError, match="set VIGIL_CLICKHOUSE_URL to one of the cluster's nodes"):
            migrate(backend, database=chdb_settings.clickhouse_database, ttl_days=30, cluster="vigil_c")
        assert backend.query("SELECT count() FROM system.databases WHERE name = {db:String}",
                             {"db": chdb_settings.clickhouse_database}) == [(0,)]
    finally:
        backend.close()


def test_migrations_are_idempotent_and_pick_the_level(settings: VigilSettings, caplog) -> None:
    caplog.set_level(logging.INFO, logger="streams.clickhouse")
    backend = connect(settings)
    try:
        first = migrate(backend, database=settings.clickhouse_database, ttl_days=30)
        second = migrate(backend, database=settings.clickhouse_database, ttl_days=30)
        expected = CompatLevel.modern if settings.clickhouse_url is None else CompatLevel.legacy_18
        assert first.level is second.level is expected
        assert first.applied == [
            "0001_scored", "0002_dead_letters", "0003_alerts", "0004_feedback", "0005_triage", "0006_alert_verdicts",
            "0007_shadow", "0009_alerting_state", "0010_triage_source_partition", "0011_retrain_heartbeats",
            "0012_dead_letter_replays", "0013_alerting_seen", "0014_scored_id_bloom",
            "0015_shadow_ttl", "0016_feedback_withdrawn", "0017_dead_letter_replay_reason",
        ] and first.already_applied == []
        assert second.applied == [] and second.already_applied == first.applied
        recorded = backend.query(
            f"SELECT version, level FROM {settings.clickhouse_database}.schema_migrations FINAL ORDER BY version"
        )
        assert recorded == [(int(name[:4]), expected.value) for name in first.applied]
        assert f"schema compatibility level {expected.value}" in caplog.text
        columns = {
            name: type_ for name, type_ in backend.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 'scored'",
                {"db": settings.clickhouse_database},
            )
        }
        if expected is CompatLevel.modern:
            assert columns["probs"] == "Map(String, Float32)"
            assert columns["written_time"] == "DateTime64(3, 'UTC')"
        else:
            assert columns["prob_labels"] == "Array(String)" and "probs" not in columns
            assert columns["written_time"] == "DateTime('UTC')"
    finally:
        backend.close()


def test_messages_round_trip(store: ClickHouseStore) -> None:
    texts = {
        "plain": "Acme shares fall 5%",
        "emoji": "Great service 😀👍🏽 — thanks!",
        "rtl": "الخدمة ممتازة שירות מצוין",
        "quotes": "it's \"quoted\" \\ back\tslash\nnew line {x:String} %(y)s",
        "big": ("Lorem ipsum dolor sit amet ✓ " * 3500)[:100_000],
    }
    sent = [
        msg(
            key, text=text, probs={"positive": 0.125, "negative": 0.625, "neutral": 0.25},
            label="negative", confidence=0.625, margin=0.375, tickers=["ACME", "BRK.B"],
            truncated=key == "big", ingest_time=T0 + timedelta(milliseconds=250),
            content_hash=2**64 - 1 if key == "plain" else 7,
        )
        for key, text in texts.items()
    ]
    assert store.write_scored(sent) == len(sent)
    back = {m.id: m for m in store.fetch_scored(Kind.news, [m.id for m in sent])}
    seconds_only = store.level is CompatLevel.legacy_18
    for m in sent:
        got = back[m.id]
        assert got.text == m.text
        assert got.probs == m.probs  # these probabilities are exact in Float32
        assert (got.label, got.tickers, got.truncated, got.content_hash) == (
            m.label, m.tickers, m.truncated, m.content_hash
        )
        expected_event = m.event_time.replace(microsecond=0) if seconds_only else m.event_time
        assert got.event_time == expected_event
    assert len(back["n-big"].text) == 100_000
    assert store.backend.query(f"SELECT DISTINCT e2e_ms FROM {store.database}.scored") == [(59_750,)]


def test_ids_with_quotes_and_backslashes_are_found_by_list_reads(store: ClickHouseStore) -> None:
    """On chdb a list parameter was escaped twice: an id with ``'`` failed the whole batch's duplicate
    check (not retried) and one with ``\\`` matched nothing, so the check was silently skipped."""
    ids = ["O'Neil", "back\\slash", "q\\'s", "plain"]
    sent = [msg(i, id=i, content_hash=k) for k, i in enumerate(ids)]
    store.write_scored(sent)
    assert store.existing_content_hashes(Kind.news, ids) == {i: k for k, i in enumerate(ids)}
    assert {m.id for m in store.fetch_scored(Kind.news, ids)} == set(ids)


def test_time_bounds_past_what_is_stored_mean_everything(store: ClickHouseStore) -> None:
    """18.16 read a bound from 2106 on as 1970: a range up to 2106 found nothing there."""
    store.write_scored([msg(1), msg(2)])
    everything = store.fetch_scored_between(Kind.news, datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
    assert {m.id for m in everything} == {"n-1", "n-2"}


def test_replayed_batch_collapses_to_one_row_per_id_with_final(store: ClickHouseStore) -> None:
    batch = [msg(i) for i in range(50)]
    store.write_scored(batch)
    store.write_scored(batch)  # a crash after the insert, before the offset commit, replays it
    table = f"{store.database}.scored"
    # Both inserts are physically there until a background merge; FINAL collapses them.
    assert store.backend.query(f"SELECT count() FROM {table}") == [(100,)]
    assert store.backend.query(f"SELECT count() FROM {table} FINAL") == [(50,)]
    assert store.summary().total_rows == 50
    assert store.existing_content_hashes(Kind.news, ["n-3", "n-7", "missing"]) == {
        "n-3": batch[3].content_hash, "n-7": batch[7].content_hash,
    }
    assert store.existing_content_hashes(Kind.support, ["n-3"]) == {}


def test_a_backfill_spanning_more_months_than_one_insert_may_touch_is_stored(store: ClickHouseStore) -> None:
    """The scored table has a partition per month of event time, and ClickHouse refuses an insert
    that touches over 100: a batch of old news from 150 months was refused on every retry."""
    batch = [msg(i, event_time=datetime(2000 + i // 12, 1 + i % 12, 15, tzinfo=UTC)) for i in range(150)]
    assert store.write_scored(batch) == 150
    months = store.backend.query(f"SELECT uniqExact(toYYYYMM(event_time)), count() FROM {store.database}.scored")
    assert months == [(150, 150)]


def test_dead_letters_keep_the_size_and_hash_of_invalid_utf8_bytes_and_count_once(store: ClickHouseStore) -> None:
    letters = [
        DeadLetter(source_topic="vigil.news.raw", partition=1, offset=10, key=b"\xc3\x28",
                   raw=b"\xff\xfe\x00{\"id\": \x80}", reason=DeadLetterReason.bad_encoding,
                   detail="invalid start byte", received_at=T0),
        DeadLetter(source_topic="vigil.news.raw", partition=1, offset=11, key=None,
                   raw=bytes(range(256)), reason=DeadLetterReason.bad_json, detail="x", received_at=T0),
    ]
    store.write_dead_letters(letters)
    store.write_dead_letters(letters[:1])  # replay
    back = store.fetch_dead_letters("vigil.news.raw")
    assert [d.model_dump(exclude={"received_at"}) for d in back] == [
        d.model_dump(exclude={"raw", "received_at"}) for d in letters
    ]
    assert store.summary().dead_letters_by_reason == {"bad_encoding": 1, "bad_json": 1}


def test_a_different_message_at_a_reused_position_is_not_collapsed(store: ClickHouseStore) -> None:
    # The embedded broker starts its offsets at 0 again on every run.
    def letter(raw: bytes) -> DeadLetter:
        return DeadLetter(source_topic="vigil.news.raw", partition=0, offset=0, raw=raw,
                          reason=DeadLetterReason.bad_json, detail="x", received_at=T0)

    store.write_dead_letters([letter(b"run 1: {")])
    store.write_dead_letters([letter(b"run 2: [")])
    store.write_dead_letters([letter(b"run 2: [")])  # replay of run 2's message
    assert sorted(d.raw_sha256 for d in store.fetch_dead_letters("vigil.news.raw")) == sorted(
        hashlib.sha256(raw).hexdigest() for raw in (b"run 1: {", b"run 2: [")
    )


def test_summary_on_a_known_data_set(store: ClickHouseStore) -> None:
    def news(i: int, label: str, tickers: list[str], e2e: int) -> ScoredMessage:
        return msg(i, label=label, tickers=tickers, ingest_time=WRITTEN - timedelta(milliseconds=e2e))

    rows = [
        news(1, "negative", ["ACME"], 10), news(2, "negative", ["ACME", "BOLT"], 20),
        news(3, "positive", ["ACME"], 30), news(4, "negative", ["BOLT"], 50),
        news(5, "positive", ["BOLT", "CORE"], 50),
        msg("s1", kind=Kind.support, label="card_lost", ingest_time=WRITTEN - timedelta(milliseconds=50)),
    ]
    store.write_scored(rows)
    store.write_scored(rows[:2])  # replays must not move any figure
    store.write_dead_letters([
        DeadLetter(source_topic="t", partition=0, offset=o, raw=b"x", reason=r, detail="", received_at=T0)
        for o, r in [(1, DeadLetterReason.invalid), (2, DeadLetterReason.invalid), (3, DeadLetterReason.too_large)]
    ])
    s = store.summary(min_ticker_volume=2)
    assert s.total_rows == 6
    assert [(c.kind, c.label, c.rows) for c in s.by_label] == [
        ("news", "negative", 3), ("news", "positive", 2), ("support", "card_lost", 1),
    ]
    # ACME 2/3 negative, BOLT 2/3 negative but same share -> more volume first? equal volume -> name.
    assert [(t.ticker, t.rows, t.negative) for t in s.top_negative_tickers] == [("ACME", 3, 2), ("BOLT", 3, 2)]
    assert s.top_negative_tickers[0].negative_share == pytest.approx(2 / 3)
    assert s.dead_letters_by_reason == {"invalid": 2, "too_large": 1}
    # e2e_ms = [10, 20, 30, 50, 50, 50]: the median is 30..50 by interpolation rule, p99 is 50 either way.
    assert s.e2e_p99_ms == 50
    assert s.e2e_p50_ms is not None and 30 <= s.e2e_p50_ms <= 50
    assert store.summary(min_ticker_volume=4).top_negative_tickers == []


def test_activity_counts_what_was_stored_in_the_window(store: ClickHouseStore) -> None:
    store.write_scored([msg(1, ingest_time=WRITTEN - timedelta(milliseconds=40)),
                        msg(2, model_version="v2", ingest_time=WRITTEN - timedelta(milliseconds=40)),
                        msg("s1", kind=Kind.support, ingest_time=WRITTEN - timedelta(milliseconds=40))])
    store.write_dead_letters([
        DeadLetter(source_topic="t", partition=0, offset=o, raw=b"x", reason=DeadLetterReason.invalid, detail="",
                   received_at=at)
        for o, at in [(1, T0), (2, WRITTEN)]
    ])
    a = store.activity(WRITTEN - timedelta(seconds=1))
    assert [(c.kind, c.model_version, c.rows) for c in a.scored] == [("news", "v1", 1), ("news", "v2", 1),
                                                                      ("support", "v1", 1)]
    assert (a.e2e_p50_ms, a.e2e_p99_ms) == (40, 40)
    assert a.dead_letters_by_reason == {"invalid": 1}  # the one at T0 is older than the window
    later = store.activity(WRITTEN + timedelta(minutes=1))
    assert (later.scored, later.dead_letters_by_reason, later.e2e_p50_ms) == ([], {}, None)


def test_embedded_directory_is_one_process_only(chdb_settings: VigilSettings) -> None:
    first = connect(chdb_settings)
    try:
        with pytest.raises(EmbeddedInUse, match="one per process"):
            connect(chdb_settings)
    finally:
        first.close()
    connect(chdb_settings).close()  # closed cleanly: it opens again


def test_outage_raises_storage_unavailable_then_recovers(clickhouse_server, server_settings) -> None:
    settings = server_settings.model_copy(
        update={"clickhouse_retry_attempts": 3, "clickhouse_retry_max_s": 0.2}
    )
    with open_store(settings) as store:
        clickhouse_server.stop()
        try:
            with pytest.raises(StorageUnavailable, match="keep its Kafka offsets uncommitted"):
                store.write_scored([msg(1)])
        finally:
            clickhouse_server.start()
        assert store.write_scored([msg(1)]) == 1
        assert [m.id for m in store.fetch_scored(Kind.news, ["n-1"])] == ["n-1"]


def test_modern_ttl_drops_rows_older_than_the_retention(chdb_settings: VigilSettings) -> None:
    old = datetime.now(UTC) - timedelta(days=chdb_settings.clickhouse_ttl_days + 1)
    with open_store(chdb_settings, clock=lambda: old) as store:
        store.write_scored([msg(1)])
        store.backend.execute(f"OPTIMIZE TABLE {store.database}.scored FINAL")
        assert store.summary().total_rows == 0
        fresh = ClickHouseStore(  # same backend, today's clock
            store.backend, database=store.database, level=store.level
        )
        fresh.write_scored([msg(2)])
        store.backend.execute(f"OPTIMIZE TABLE {store.database}.scored FINAL")
        assert store.summary().total_rows == 1


def test_modern_ttl_expires_shadow_predictions_with_their_scoring_time(chdb_settings: VigilSettings) -> None:
    old = datetime.now(UTC) - timedelta(days=chdb_settings.clickhouse_ttl_days + 1)
    shadow = ShadowPrediction(model_version="v2", label="negative", confidence=0.7)
    with open_store(chdb_settings) as store:
        store.write_shadow([msg(1, shadow=shadow, scored_time=old), msg(2, shadow=shadow)])
        store.backend.execute(f"OPTIMIZE TABLE {store.database}.shadow_predictions FINAL")
        assert store.shadow_agreement(Kind.news) == [("v1", "v2", 1, 1)]


_SINCE_READS = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from feedback.contracts import Correction, CorrectionSource
from feedback.store import FeedbackStore
from streams.clickhouse import open_store
from streams.clickhouse.dead_letter_store import DeadLetterStore
from streams.contracts import DeadLetter, DeadLetterReason
from streams.settings import VigilSettings
t = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
with open_store(VigilSettings(data_dir=Path(sys.argv[1]), clickhouse_url=None)) as store:
    store.write_dead_letters([DeadLetter(source_topic="raw", partition=0, offset=1, raw=b"x",
                                         reason=DeadLetterReason.bad_json, detail="d", received_at=t)])
    feedback = FeedbackStore(store)
    feedback.write_corrections([Correction(correction_id="c1", task="sentiment", message_id="m1", text="t",
                                           annotator="a", human_label="negative", source=CorrectionSource.queue,
                                           created_at=t)])
    since = t - timedelta(hours=1)
    print(len(DeadLetterStore(store).letters(since=since)), len(feedback.fetch_corrections("sentiment", since=since)))
"""


def test_time_bounds_mean_utc_whatever_the_process_time_zone(tmp_path) -> None:
    """chdb read a ``{since:DateTime}`` bound in the process's zone: west of UTC, rows an hour after
    the bound were not found (dead letters, corrections, the label queue's reads)."""
    out = subprocess.run([sys.executable, "-c", _SINCE_READS, str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "TZ": "America/New_York"}, timeout=120, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_a_user_allowed_only_its_own_database_opens_the_store(tmp_path) -> None:
    """The backend connected to 'default' first, which such a user may not see: the refusal read as
    "cannot reach ClickHouse"."""
    server = ClickHouseServer(_find_binary(), tmp_path / "server")
    users = users_config().replace("</default></users>", "</default><vigil><password>pw</password><networks>"
                                   "<ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota>"
                                   "<allow_databases><database>vigil</database></allow_databases></vigil></users>")
    (server.root / "users.xml").write_text(users)
    server.start()
    try:
        admin = connect(VigilSettings(clickhouse_url=server.url))
        admin.execute("CREATE DATABASE vigil")
        admin.close()
        url = f"clickhouse://vigil:pw@127.0.0.1:{server.tcp_port}/vigil"
        with open_store(VigilSettings(data_dir=tmp_path, clickhouse_url=url, clickhouse_database="vigil")) as st:
            assert st.write_scored([msg(1)]) == 1
    finally:
        server.stop()


def test_a_password_given_apart_from_the_url_is_used_as_it_is(tmp_path) -> None:
    """ClickHouse takes a password as written in its users.xml (and docker-compose.yml gives .env's
    to it so); in VIGIL_CLICKHOUSE_URL the same one was refused (# ? /) or decoded (%41 is A)."""
    from xml.sax.saxutils import escape

    password = "Tr0ub4dor#3/x%41?&<"
    server = ClickHouseServer(_find_binary(), tmp_path / "server")
    users = users_config().replace("</default></users>", f"</default><vigil><password>{escape(password)}</password>"
                                   "<networks><ip>127.0.0.1</ip></networks><profile>default</profile>"
                                   "<quota>default</quota></vigil></users>")
    (server.root / "users.xml").write_text(users)
    server.start()
    try:
        settings = VigilSettings(data_dir=tmp_path, clickhouse_url=f"clickhouse://vigil@127.0.0.1:{server.tcp_port}",
                                 clickhouse_password=password)
        with open_store(settings) as st:
            assert st.write_scored([msg(1)]) == 1
            assert st.backend.query("SELECT user FROM system.processes WHERE is_initial_query") == [("vigil",)]
    finally:
        server.stop()


@pytest.mark.parametrize(("url", "why"), [
    (None, "VIGIL_CLICKHOUSE_PASSWORD is for a server: set VIGIL_CLICKHOUSE_URL too"),
    ("clickhouse://vigil:pw@ch:9000", "VIGIL_CLICKHOUSE_URL names a password and VIGIL_CLICKHOUSE_PASSWORD is set"),
])
def test_a_password_apart_needs_a_server_url_without_one(tmp_path, url: str | None, why: str) -> None:
    with pytest.raises(ValueError, match=why) as refused:
        VigilSettings(data_dir=tmp_path, clickhouse_url=url, clickhouse_password="s3cret-apart")
    assert "s3cret-apart" not in str(refused.value)


def test_a_shard_with_no_live_replica_is_waited_out_not_failed(clickhouse_server) -> None:
    """Code 279 (a Distributed read found no live replica of a shard) was a permanent QueryFailed:
    the worker crashed instead of keeping its offsets until the shard is back."""
    backend = connect(VigilSettings(clickhouse_url=clickhouse_server.url))
    try:
        with pytest.raises(BackendUnavailable, match="code 279"):
            backend.query(f"SELECT * FROM remote('127.0.0.1:{free_port()}', system, one)")
    finally:
        backend.close()


def test_url_database_must_agree_with_the_setting(clickhouse_server) -> None:
    from streams.clickhouse import ClickHouseConfigError

    settings = VigilSettings(clickhouse_url=clickhouse_server.url + "/other", clickhouse_database="vigil")
    with pytest.raises(ClickHouseConfigError, match="make the two agree"):
        connect(settings)


def test_alerts_round_trip_and_a_re_emitted_alert_counts_once(store: ClickHouseStore) -> None:
    sentiment = Alert(
        id=Alert.make_id("sentiment", "negative_share", "TSLA", T0.isoformat()), kind="sentiment",
        rule="negative_share", severity=Severity.warning, ticker="TSLA", window_start=T0 - timedelta(minutes=15),
        window_end=T0, figures={"volume": 20.0, "negative_share": 0.85}, model_version="v1",
        top_messages=[ContributingMessage(id="n-1", text="TSLA plunges — “recall”", label="negative", score=-0.9)],
        created_at=T0,
    )
    ticket = Alert(
        id=Alert.make_id("triage", "priority_intent", "s-1"), kind="triage", rule="priority_intent",
        severity=Severity.critical, intent="lost_or_stolen_card", queue="fraud", created_at=T0,
    )
    store.write_alerts([sentiment, ticket])
    store.write_alerts([sentiment])  # re-emitted after a replay
    fetched = store.fetch_alerts()
    back = {a.id: a for a in fetched}
    assert len(fetched) == 2 and set(back) == {sentiment.id, ticket.id}
    # Times come back at the precision the level keeps (ms modern, seconds legacy-18).
    assert back[ticket.id] == ticket.model_copy(update={"created_at": to_stored_time(T0, store.level)})
    assert back[sentiment.id] == sentiment.model_copy(update={
        f: to_stored_time(getattr(sentiment, f), store.level) for f in ("window_start", "window_end", "created_at")
    })


def test_shadow_predictions_count_disagreements_once_per_message(store: ClickHouseStore) -> None:
    def shadowed(i: int, label: str) -> ScoredMessage:
        return msg(i).model_copy(update={"shadow": ShadowPrediction(model_version="v2", label=label, confidence=0.7)})

    batch = [shadowed(1, msg(1).label), shadowed(2, "negative" if msg(2).label != "negative" else "neutral"),
             msg(3)]  # no shadow: skipped
    assert store.write_shadow(batch) == 2
    store.write_shadow(batch)  # replayed
    assert store.shadow_agreement(Kind.news) == [(msg(1).model_version, "v2", 2, 1)]
    assert store.shadow_agreement(Kind.support) == []
