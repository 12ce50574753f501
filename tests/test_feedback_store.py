"""The feedback store on real engines: embedded chdb ('modern') and Debian's clickhouse-server 18.16
('legacy-18')."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pytest

from feedback.agreement import Agreement
from feedback.contracts import (
    Correction,
    CorrectionSource,
    ItemState,
    LabelRequest,
    ModelEvent,
    ModelEventKind,
    QueueItem,
    SelectionReason,
)
from feedback.round_heartbeat import RoundHeartbeat
from feedback.selection import PastSelection
from feedback.store import MODEL_EVENT_COLUMNS, FeedbackSchemaMissing, FeedbackStore, model_event_row, open_feedback_store
from streams.clickhouse import CompatLevel, StorageUnavailable, connect, open_store
from streams.clickhouse.migrations import MIGRATIONS_DIR, migrate
from streams.clickhouse.compat import to_stored_time
from streams.runtime import all_topics
from streams.settings import VigilSettings

T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=250_000)


def request(i: int, *, task: str = "sentiment", selected: datetime | None = None, **over: object) -> LabelRequest:
    fields: dict[str, object] = dict(
        item_id=LabelRequest.make_id(task, f"m-{i}", "v1"), task=task, message_id=f"m-{i}",
        text=f"ACME “guidance” cut {i} — shares fall", model_name=task, model_version="v1",
        model_label="negative", probs={"negative": 0.45, "neutral": 0.4, "positive": 0.15}, confidence=0.45,
        margin=0.05, entropy=0.99, reasons=[SelectionReason.uncertain], event_time=T0,
        selected_at=selected or T0 + timedelta(seconds=i),
    )
    fields.update(over)
    return LabelRequest(**fields)  # type: ignore[arg-type]


def stored(value: datetime, store: FeedbackStore) -> datetime:
    return to_stored_time(value, store.level)


@pytest.fixture(params=["chdb", "server"])
def settings(request: pytest.FixtureRequest) -> VigilSettings:
    return request.getfixturevalue(f"{request.param}_settings")


@pytest.fixture
def fstore(settings: VigilSettings):
    open_store(settings).close()  # migrates
    with open_feedback_store(settings) as st:
        yield st


def test_requests_round_trip_and_a_re_written_request_does_not_duplicate(fstore: FeedbackStore) -> None:
    expected_level = CompatLevel.modern if fstore.backend.name == "embedded" else CompatLevel.legacy_18
    assert fstore.level is expected_level
    reqs = [
        request(1),
        request(2, reasons=[SelectionReason.alert, SelectionReason.uncertain], alert_id="a-1", challenger_label="neutral"),
        request(3, task="triage", model_label="card_arrival", probs={"card_arrival": 0.6, "lost_or_stolen_card": 0.4}),
    ]
    assert fstore.write_requests(reqs) == 3
    assert fstore.write_requests(reqs) == 0  # a replay
    assert fstore.write_requests([request(1, selected=T0 + timedelta(hours=1))]) == 0  # selected again later
    items = fstore.fetch_items()
    assert [i.request.item_id for i in items] == [r.item_id for r in reqs]  # oldest selected first
    for got, sent in zip(items, reqs, strict=True):
        assert got.state is ItemState.open and got.leased_by is None and got.lease_expires is None
        assert got.request == sent.model_copy(update={
            "event_time": stored(sent.event_time, fstore), "selected_at": stored(sent.selected_at, fstore),
        })
        assert got.updated_at == stored(sent.selected_at, fstore)
    assert [i.request.message_id for i in fstore.fetch_items(task="triage")] == ["m-3"]
    assert len(fstore.fetch_items(limit=2)) == 2
    table = f"{fstore.database}.label_queue"
    assert fstore.backend.query(f"SELECT count() FROM {table}") == [(3,)]
    assert fstore.queue_stats() == {"open": 3, "leased": 0, "labelled": 0, "skipped": 0}
    assert fstore.fetch_item("no-such-item") is None


def test_the_latest_state_wins_and_filters_see_only_it(fstore: FeedbackStore) -> None:
    reqs = [request(i) for i in range(4)]
    fstore.write_requests(reqs)
    leased_at = T0 + timedelta(minutes=5)
    lease = QueueItem(request=reqs[0], state=ItemState.leased, leased_by="ann", lease_expires=leased_at + timedelta(minutes=10),
                      updated_at=leased_at)
    labelled = lease.model_copy(update={"state": ItemState.labelled, "lease_expires": None,
                                        "updated_at": leased_at + timedelta(seconds=30)})
    fstore.write_items([lease])
    fstore.write_items([labelled])
    fstore.write_items([QueueItem(request=reqs[1], state=ItemState.skipped, leased_by="ann", updated_at=leased_at)])
    fstore.write_items([QueueItem(request=reqs[2], state=ItemState.leased, leased_by="bob",
                                  lease_expires=leased_at + timedelta(minutes=10), updated_at=leased_at)])
    # A lease older than the label arriving late (a slow replica, a retried write) must not win.
    fstore.write_items([lease.model_copy(update={"updated_at": leased_at - timedelta(seconds=1)})])

    got = fstore.fetch_item(reqs[0].item_id)
    assert got is not None and got.state is ItemState.labelled and got.leased_by == "ann"
    assert got.updated_at == stored(labelled.updated_at, fstore)
    leased = fstore.fetch_item(reqs[2].item_id)
    assert leased is not None and leased.lease_expires == stored(leased_at + timedelta(minutes=10), fstore)
    assert [i.request.message_id for i in fstore.fetch_items(states=[ItemState.open])] == ["m-3"]
    assert [i.request.message_id for i in fstore.fetch_items(states=[ItemState.open, ItemState.leased])] == ["m-2", "m-3"]
    assert fstore.fetch_items(states=[]) == []
    assert fstore.queue_stats() == {"open": 1, "leased": 1, "labelled": 1, "skipped": 1}
    assert fstore.queue_stats("triage") == {"open": 0, "leased": 0, "labelled": 0, "skipped": 0}
    assert fstore.skipped_per_annotator() == {"ann": 1}
    # An undo puts it back to open; the re-written request still does not reopen or duplicate anything.
    fstore.write_items([labelled.model_copy(update={"state": ItemState.open, "leased_by": None,
                                                    "updated_at": leased_at + timedelta(minutes=1)})])
    assert fstore.write_requests(reqs) == 0
    assert fstore.queue_stats()["open"] == 2


def test_the_next_items_come_in_lease_order_and_the_held_ones_whatever_their_order(fstore: FeedbackStore) -> None:
    """What a queue owner's book loads: per task, the first items it would lease (best reason, then
    oldest; a lapsed lease is open again), and every live lease and still-undoable item, however
    far down the queue they are."""
    now = T0 + timedelta(minutes=30)
    reasons = {0: [SelectionReason.audit], 1: [SelectionReason.uncertain], 2: [SelectionReason.alert_review],
               3: [SelectionReason.audit, SelectionReason.disagreement], 4: [SelectionReason.uncertain],
               5: [SelectionReason.alert], 6: [SelectionReason.alert], 7: [SelectionReason.audit]}
    reqs = {i: request(i, reasons=r) for i, r in reasons.items()}
    fstore.write_requests([*reqs.values(), request(8, task="triage", reasons=[SelectionReason.alert])])

    def put(i: int, state: ItemState, at: datetime, expires: datetime | None = None) -> None:
        fstore.write_items([QueueItem(request=reqs[i], state=state, leased_by="ann", lease_expires=expires,
                                      updated_at=at)])

    put(4, ItemState.leased, now - timedelta(minutes=10), expires=now - timedelta(minutes=5))  # lapsed
    put(5, ItemState.leased, now - timedelta(minutes=1), expires=now + timedelta(minutes=4))   # live
    put(6, ItemState.labelled, now - timedelta(seconds=30))                                    # undoable
    put(7, ItemState.skipped, now - timedelta(minutes=20))                                     # long done

    def ids(items: list[QueueItem]) -> list[str]:
        return [i.request.message_id for i in items]

    assert ids(fstore.fetch_next("sentiment", now, 10)) == ["m-2", "m-3", "m-1", "m-4", "m-0"]
    assert ids(fstore.fetch_next("sentiment", now, 2)) == ["m-2", "m-3"]
    assert ids(fstore.fetch_next("triage", now, 10)) == ["m-8"]
    # Ten minutes on, the live lease has run out too.
    assert ids(fstore.fetch_next("sentiment", now + timedelta(minutes=10), 10)) == ["m-2", "m-3", "m-5", "m-1", "m-4", "m-0"]
    held = fstore.fetch_held(now, now - timedelta(minutes=2))
    assert ids(held) == ["m-5", "m-6"] and held[0].state is ItemState.leased and held[1].state is ItemState.labelled
    assert ids(fstore.fetch_held(now + timedelta(minutes=10), now + timedelta(minutes=8))) == []


def test_a_second_reason_joins_an_open_item_but_never_reopens_one(fstore: FeedbackStore) -> None:
    a, b = request(1), request(2)
    fstore.write_requests([a, b])
    later = T0 + timedelta(minutes=30)
    alert = {"reasons": [SelectionReason.alert], "alert_id": "alert-9", "selected_at": later}
    assert fstore.write_requests([a.model_copy(update=alert)]) == 1
    got = fstore.fetch_item(a.item_id)
    assert got is not None and got.state is ItemState.open
    assert got.request.reasons == [SelectionReason.uncertain, SelectionReason.alert]
    assert got.request.alert_id == "alert-9"
    assert got.request.selected_at == stored(a.selected_at, fstore)  # still queued in its first place
    assert fstore.write_requests([a.model_copy(update=alert)]) == 0  # nothing new to add

    leased = QueueItem(request=b, state=ItemState.leased, leased_by="ann", updated_at=T0 + timedelta(minutes=1))
    fstore.write_items([leased])
    assert fstore.write_requests([b.model_copy(update=alert)]) == 0
    got_b = fstore.fetch_item(b.item_id)
    assert got_b is not None and got_b.state is ItemState.leased and got_b.request.reasons == [SelectionReason.uncertain]
    assert fstore.queue_stats() == {"open": 1, "leased": 1, "labelled": 0, "skipped": 0}


def test_selections_since_are_what_a_restarted_selector_remembers(fstore: FeedbackStore) -> None:
    fstore.write_requests([
        request(1, selected=T0 - timedelta(minutes=10)),
        request(2, task="triage", model_label="lost_or_stolen_card", selected=T0 + timedelta(seconds=2)),
        request(3, selected=T0 + timedelta(seconds=1)),
        request(4, selected=T0 + timedelta(seconds=3), reasons=[SelectionReason.audit, SelectionReason.uncertain]),
    ])
    fstore.write_requests([request(3, selected=T0 + timedelta(seconds=1))])  # a replay: still one
    got = fstore.fetch_selections(T0)
    assert got == [
        PastSelection("sentiment", stored(T0, fstore), "negative", request(3).text, False, request(3).item_id),
        PastSelection("triage", stored(T0, fstore), "lost_or_stolen_card", request(2).text, False,
                      request(2, task="triage").item_id),
        PastSelection("sentiment", stored(T0, fstore), "negative", request(4).text, True, request(4).item_id),
    ]
    assert len(fstore.fetch_selections(T0 - timedelta(hours=1))) == 4


def test_corrections_latest_per_annotator_and_since(fstore: FeedbackStore) -> None:
    def corr(msg: str, annotator: str, label: str, at: datetime, task: str = "sentiment") -> Correction:
        return Correction(
            correction_id=Correction.make_id(task, msg, annotator), task=task, message_id=msg,
            item_id=LabelRequest.make_id(task, msg, "v1"), text=f"text of {msg}", annotator=annotator,
            human_label=label, model_label="neutral", model_version="v1", source=CorrectionSource.queue,
            created_at=at,
        )

    first = [corr("m-1", "ann", "positive", T0), corr("m-1", "bob", "negative", T0 + timedelta(seconds=2)),
             corr("m-2", "ann", "neutral", T0 + timedelta(seconds=4))]
    assert fstore.write_corrections(first) == 3
    fixed = corr("m-1", "ann", "negative", T0 + timedelta(seconds=10))  # ann changes her mind
    implicit = Correction(
        correction_id=Correction.make_id("triage", "s-9", "agent-7"), task="triage", message_id="s-9",
        text="my card has not arrived", annotator="agent-7", human_label="card_arrival",
        source=CorrectionSource.implicit, created_at=T0,
    )
    fstore.write_corrections([fixed, implicit])
    fstore.write_corrections([fixed])  # a retried write
    got = fstore.fetch_corrections("sentiment")
    assert [(c.message_id, c.annotator, c.human_label) for c in got] == [
        ("m-1", "bob", "negative"), ("m-2", "ann", "neutral"), ("m-1", "ann", "negative"),
    ]
    assert got[2] == fixed.model_copy(update={"created_at": stored(fixed.created_at, fstore)})
    since = fstore.fetch_corrections("sentiment", since=T0 + timedelta(seconds=3))
    assert [c.message_id for c in since] == ["m-2", "m-1"]
    back = fstore.fetch_corrections("triage")
    assert back == [implicit.model_copy(update={"created_at": stored(T0, fstore)})]
    assert back[0].item_id is None and back[0].model_label is None
    assert fstore.fetch_correction(fixed.correction_id) == got[2]  # the latest version of the one
    assert fstore.fetch_correction(Correction.make_id("sentiment", "m-3", "ann")) is None

    # ann undoes her label: the withdrawal replaces it, and no reader of labels sees it any more
    withdrawal = fixed.withdrawal(T0 + timedelta(seconds=20))
    fstore.write_corrections([withdrawal])
    assert [(c.message_id, c.annotator) for c in fstore.fetch_corrections("sentiment")] == [
        ("m-1", "bob"), ("m-2", "ann")]
    assert fstore.fetch_corrections("sentiment", since=T0 + timedelta(seconds=3)) == [got[1]]
    assert fstore.fetch_correction(fixed.correction_id) == withdrawal.model_copy(
        update={"created_at": stored(withdrawal.created_at, fstore)})



def test_agreement_and_labels_per_annotator_count_standing_labels(fstore: FeedbackStore) -> None:
    """What GET /api/stats shows, counted in ClickHouse: the latest label per message and annotator
    counts, a withdrawn one does not, and messages one person labelled are not compared."""
    def corr(task: str, msg: str, annotator: str, label: str, minutes: int = 0) -> Correction:
        return Correction(correction_id=Correction.make_id(task, msg, annotator), task=task, message_id=msg,
                          text="t", annotator=annotator, human_label=label, source=CorrectionSource.queue,
                          created_at=T0 + timedelta(minutes=minutes))

    assert fstore.agreement() == {} and fstore.labels_per_annotator() == {}
    withdrawn = corr("sentiment", "m5", "c", "neutral")
    fstore.write_corrections([
        corr("sentiment", "m1", "a", "negative"), corr("sentiment", "m1", "b", "negative"),
        corr("sentiment", "m2", "a", "positive"), corr("sentiment", "m2", "b", "neutral"),
        corr("sentiment", "m2", "c", "positive"),
        corr("sentiment", "m3", "a", "neutral"),  # one label: not compared
        corr("sentiment", "m4", "a", "neutral"), corr("sentiment", "m4", "b", "negative"),
        corr("sentiment", "m5", "a", "neutral"), withdrawn,
        corr("triage", "s1", "a", "card_arrival"), corr("triage", "s1", "c", "lost_or_stolen_card"),
    ])
    fstore.write_corrections([corr("sentiment", "m4", "b", "neutral", minutes=5),  # b changed their mind
                              withdrawn.withdrawal(T0 + timedelta(minutes=6))])
    assert fstore.agreement() == {"sentiment": Agreement(messages=3, unanimous=2, pairs=5, agreeing_pairs=3),
                                  "triage": Agreement(messages=1, unanimous=0, pairs=1, agreeing_pairs=0)}
    assert fstore.agreement()["sentiment"].pairwise == pytest.approx(3 / 5)
    assert fstore.labels_per_annotator() == {"a": 6, "b": 3, "c": 2}

def test_model_events_round_trip(fstore: FeedbackStore) -> None:
    drift = ModelEvent(kind=ModelEventKind.drift, task="sentiment", model_version="v1",
                       detail="audited error rate rose from 0.12 to 0.31", figures={"before": 0.12, "after": 0.31},
                       created_at=T0)
    promoted = ModelEvent(kind=ModelEventKind.promoted, task="triage", model_version="v2", created_at=T0 + timedelta(seconds=5))
    assert fstore.write_model_events([drift, promoted]) == 2
    fstore.write_model_events([drift])  # re-emitted
    everything = fstore.fetch_model_events()
    assert everything == [
        drift.model_copy(update={"created_at": stored(drift.created_at, fstore)}),
        promoted.model_copy(update={"created_at": stored(promoted.created_at, fstore)}),
    ]
    assert [e.kind for e in fstore.fetch_model_events("triage")] == [ModelEventKind.promoted]

    # A newer release, in a rolling upgrade, records a kind this one lacks: left out, not a ValueError.
    newer = model_event_row(promoted.model_copy(update={"event_id": "e-new"}), fstore.level)
    fstore._insert("model_events", MODEL_EVENT_COLUMNS, [(newer[0], "a_newer_kind", *newer[2:])])
    assert [e.kind for e in fstore.fetch_model_events("triage")] == [ModelEventKind.promoted]


def test_round_heartbeats_keep_the_latest_per_round(fstore: FeedbackStore) -> None:
    def beat(round_id: str, seconds: int, task: str = "sentiment") -> RoundHeartbeat:
        return RoundHeartbeat(round_id=round_id, task=task, owner="host-12", beat_at=T0 + timedelta(seconds=seconds))

    assert fstore.fetch_round_heartbeats("sentiment") == []
    fstore.write_round_heartbeats([beat("r1", 0), beat("r2", 5)])
    fstore.write_round_heartbeats([beat("r1", 30)])
    fstore.write_round_heartbeats([beat("r1", 10), beat("r3", 1, task="triage")])  # a late, older beat loses
    latest = [beat("r2", 5), beat("r1", 30)]
    assert fstore.fetch_round_heartbeats("sentiment") == [
        b.model_copy(update={"beat_at": stored(b.beat_at, fstore)}) for b in latest
    ]
    assert [b.round_id for b in fstore.fetch_round_heartbeats("triage")] == ["r3"]


def test_open_without_migrations_says_what_to_do(settings: VigilSettings) -> None:
    with pytest.raises(FeedbackSchemaMissing, match="0004_feedback, 0011_retrain_heartbeats.*vigil db migrate"):
        open_feedback_store(settings)
    open_store(settings).close()
    open_feedback_store(settings).close()  # the backend was closed on failure: it opens again


def test_a_schema_from_before_the_heartbeats_names_the_missing_migration(chdb_settings: VigilSettings, tmp_path) -> None:
    older = tmp_path / "migrations"
    older.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if path.name != "0011_retrain_heartbeats.sql":
            shutil.copy(path, older)
    backend = connect(chdb_settings)
    try:
        migrate(backend, database=chdb_settings.clickhouse_database, ttl_days=30, directory=older)
    finally:
        backend.close()
    with pytest.raises(FeedbackSchemaMissing, match=r"\(migration 0011_retrain_heartbeats\).*vigil db migrate"):
        open_feedback_store(chdb_settings)


def test_sharing_a_store_uses_its_backend(chdb_settings: VigilSettings) -> None:
    with open_store(chdb_settings) as store:
        fstore = FeedbackStore(store)
        assert fstore.backend is store.backend and fstore.level is store.level
        assert fstore.write_requests([request(1)]) == 1


def test_outage_raises_storage_unavailable_then_recovers(clickhouse_server, server_settings) -> None:
    settings = server_settings.model_copy(update={"clickhouse_retry_attempts": 2, "clickhouse_retry_max_s": 0.2})
    open_store(settings).close()
    with open_feedback_store(settings) as fstore:
        clickhouse_server.stop()
        try:
            with pytest.raises(StorageUnavailable, match="keep its Kafka offsets uncommitted"):
                fstore.write_requests([request(1)])
        finally:
            clickhouse_server.start()
        assert fstore.write_requests([request(1)]) == 1


def test_feedback_topics_are_created_with_the_others() -> None:
    s = VigilSettings()
    assert {s.topic_label_requests, s.topic_corrections, s.topic_model_events} <= set(all_topics(s))
    assert (s.topic_label_requests, s.topic_corrections, s.topic_model_events) == (
        "vigil.label.requests", "vigil.corrections", "vigil.model.events",
    )
