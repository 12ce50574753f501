"""The history a restarted worker's drift monitors read back, on real engines: embedded chdb
('modern') and Debian's clickhouse-server 18.16 ('legacy-18')."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from feedback.contracts import Correction, CorrectionSource, LabelRequest, SelectionReason
from feedback.store import FeedbackStore
from streams.clickhouse import ClickHouseStore, open_store
from streams.clickhouse.compat import to_stored_time
from streams.contracts import Kind, ScoredMessage
from streams.settings import VigilSettings

# Recent (the modern TTL counts from written_time); odd milliseconds, so whole-second bounds show.
T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=123_000)
LABELS = ["negative", "neutral", "positive"]


def scored(i: int, *, kind: Kind = Kind.news, version: str = "v1", scored_s: float | None = None) -> ScoredMessage:
    return ScoredMessage(
        id=f"{kind.value[0]}-{i}", kind=kind, text=f"text {i}", model_name="m", model_version=version,
        label=LABELS[i % 3], probs={LABELS[i % 3]: 0.5 + i / 100, "other": 0.5 - i / 100},
        confidence=0.5 + i / 100, margin=0.1, entropy=0.7, tickers=[], source="wire", content_hash=i,
        # Event times run backwards: the history is in the order messages were scored.
        event_time=T0 - timedelta(minutes=i), ingest_time=T0,
        scored_time=T0 + timedelta(seconds=i if scored_s is None else scored_s), src_partition=i % 2, src_offset=i,
    )


@pytest.fixture(params=["chdb", "server"])
def settings(request: pytest.FixtureRequest) -> VigilSettings:
    return request.getfixturevalue(f"{request.param}_settings")


@pytest.fixture
def store(settings: VigilSettings):
    with open_store(settings) as st:
        yield st


def test_recent_scored_are_the_versions_last_before_the_bound_oldest_first(store: ClickHouseStore) -> None:
    v1 = [scored(i) for i in range(8)]
    store.write_scored([*v1, scored(8, version="v2", scored_s=1), scored(0, kind=Kind.support, scored_s=2)])
    # n-3 scored again (a replay) after the bound: its row is replaced, so it is not history.
    store.write_scored([scored(3, scored_s=9)])
    before = T0 + timedelta(seconds=5, milliseconds=500)  # whole seconds: n-5 (T0 + 5.123 s) is not before it

    def expected(*ids: int) -> list[tuple[str, float, datetime]]:
        return [(v1[i].label, v1[i].confidence, to_stored_time(v1[i].event_time, store.level)) for i in ids]

    got = store.fetch_recent_scored(Kind.news, "v1", before=before, limit=3)
    assert [(r.label, r.event_time) for r in got] == [(lbl, t) for lbl, _, t in expected(1, 2, 4)]
    assert [r.confidence for r in got] == pytest.approx([c for _, c, _ in expected(1, 2, 4)])
    everything = store.fetch_recent_scored(Kind.news, "v1", before=before, limit=100)
    assert [(r.label, r.event_time) for r in everything] == [(lbl, t) for lbl, _, t in expected(0, 1, 2, 4)]
    assert [r.label for r in store.fetch_recent_scored(Kind.news, "v2", before=before, limit=100)] == [LABELS[8 % 3]]
    assert store.fetch_recent_scored(Kind.news, "v1", before=T0, limit=100) == []


def test_audit_corrections_are_the_versions_audit_labels_before_the_bound_oldest_first(store: ClickHouseStore) -> None:
    fstore = FeedbackStore(store)

    def request(msg: str, *, task: str = "sentiment", version: str = "v1",
                reasons: tuple[SelectionReason, ...] = (SelectionReason.audit,)) -> LabelRequest:
        return LabelRequest(
            item_id=LabelRequest.make_id(task, msg, version), task=task, message_id=msg, text=f"text of {msg}",
            model_name=task, model_version=version, model_label="negative", probs={"negative": 0.6, "neutral": 0.4},
            confidence=0.6, margin=0.2, entropy=0.67, reasons=list(reasons), event_time=T0, selected_at=T0,
        )

    def corr(req: LabelRequest, annotator: str, label: str, seconds: float) -> Correction:
        return Correction(
            correction_id=Correction.make_id(req.task, req.message_id, annotator), task=req.task,
            message_id=req.message_id, item_id=req.item_id, text=req.text, annotator=annotator,
            human_label=label, model_label=req.model_label, model_version=req.model_version,
            source=CorrectionSource.queue, created_at=T0 + timedelta(seconds=seconds),
        )

    audit = [request(f"m-{i}") for i in range(4)]
    older = request("m-9", version="v0")
    hard = request("m-8", reasons=(SelectionReason.uncertain,))
    triage = request("s-1", task="triage")
    # m-7 was selected as uncertain, then drawn for the audit too: the merged row carries both reasons.
    merged = request("m-7", reasons=(SelectionReason.uncertain,))
    fstore.write_requests([*audit, older, hard, triage, merged])
    fstore.write_requests([request("m-7", reasons=(SelectionReason.audit,))])
    labels = [
        corr(audit[0], "ann", "negative", 0), corr(audit[1], "ann", "positive", 1), corr(audit[1], "bob", "neutral", 2),
        corr(merged, "ann", "positive", 3), corr(audit[2], "ann", "negative", 4), corr(audit[3], "ann", "positive", 5),
        corr(older, "ann", "positive", 1), corr(hard, "ann", "positive", 1), corr(triage, "ann", "card_arrival", 1),
    ]
    fstore.write_corrections(labels)
    fstore.write_corrections([corr(audit[2], "ann", "positive", 9)])  # ann changes her mind after the bound
    before = T0 + timedelta(seconds=5, milliseconds=500)  # whole seconds: the label at T0 + 5.123 s is not before

    got = fstore.fetch_audit_corrections("sentiment", "v1", before=before, limit=3)
    assert [(c.message_id, c.annotator, c.human_label) for c, _ in got] == [
        ("m-1", "ann", "positive"), ("m-1", "bob", "neutral"), ("m-7", "ann", "positive")]
    assert [item.request.item_id for _, item in got] == [audit[1].item_id, audit[1].item_id, merged.item_id]
    assert all(SelectionReason.audit in item.request.reasons for _, item in got)
    assert got[0][0] == labels[1].model_copy(update={"created_at": to_stored_time(labels[1].created_at, store.level)})
    def messages(task: str, version: str, until: datetime = before) -> list[str]:
        return [c.message_id for c, _ in fstore.fetch_audit_corrections(task, version, before=until, limit=100)]

    assert messages("sentiment", "v1") == ["m-0", "m-1", "m-1", "m-7"]
    assert messages("sentiment", "v0") == ["m-9"]
    assert messages("triage", "v1") == ["s-1"]
    assert messages("sentiment", "v1", T0) == []
    # bob takes his label back (undo): it leaves the history
    fstore.write_corrections([labels[2].withdrawal(T0 + timedelta(seconds=2))])
    assert messages("sentiment", "v1") == ["m-0", "m-1", "m-7"]


def test_predicted_mix_counts_the_versions_last_labels_of_the_task(store: ClickHouseStore) -> None:
    store.write_scored([*(scored(i) for i in range(7)), scored(7, version="v2"), scored(8, kind=Kind.support)])
    fstore = FeedbackStore(store)
    before = T0 + timedelta(seconds=30)
    assert fstore.fetch_predicted_mix("sentiment", "v1", before=before, limit=100) == {
        "negative": 3, "neutral": 2, "positive": 2}
    # the last three scored: n-4, n-5, n-6
    assert fstore.fetch_predicted_mix("sentiment", "v1", before=before, limit=3) == {
        "neutral": 1, "positive": 1, "negative": 1}
    assert fstore.fetch_predicted_mix("triage", "v1", before=before, limit=100) == {"positive": 1}
    assert fstore.fetch_predicted_mix("sentiment", "v3", before=before, limit=100) == {}
