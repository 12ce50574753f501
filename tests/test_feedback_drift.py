"""Drift monitors on synthetic streams: a shift is found within a bounded number of samples, and a
stationary stream raises nothing."""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from feedback.agent import FeedbackProcessor
from feedback.contracts import ModelEvent, ModelEventKind
from feedback.drift import CountedLabels, DriftConfig, DriftMonitor
from feedback.selection import Selector, policy_from_settings
from feedback.store import FeedbackStore
from streams.clickhouse import open_store
from streams.metrics import Metrics
from streams.settings import VigilSettings
from streams.watchdog import Watchdogs

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SEEDS = [1, 2, 3, 4, 5]


def at(i: int) -> datetime:
    return T0 + timedelta(seconds=i)


def audited_errors(monitor: DriftMonitor, rng: random.Random, n: int, rate: float, start: int = 0) -> list[tuple[int, object]]:
    found = []
    for i in range(start, start + n):
        for e in monitor.observe_audit("sentiment", "v1", rng.random() < rate, at(i)):
            found.append((i, e))
    return found


@pytest.mark.parametrize("seed", SEEDS)
def test_a_rise_in_the_audited_error_rate_is_found_within_400_labels(seed: int) -> None:
    rng = random.Random(seed)
    found_at = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
    monitor = DriftMonitor(clock=lambda: found_at)
    assert audited_errors(monitor, rng, 2000, 0.12) == []
    found = audited_errors(monitor, rng, 400, 0.35, start=2000)
    assert found, "a jump from 12% to 35% errors went unnoticed"
    i, event = found[0]
    assert event.kind is ModelEventKind.drift and event.task == "sentiment" and event.model_version == "v1"
    assert event.figures["error_rate_after"] > event.figures["error_rate_before"]
    assert 0.05 < event.figures["error_rate_before"] < 0.2
    assert "audited error rate rose from" in event.detail and "retrain" in event.detail
    # dated when found, not at the event time of the label that completed it: the retrain trigger
    # counts drift since its last round's start, and a change found now in older traffic counts
    assert event.created_at == found_at and f"(seen at event time {at(i).isoformat()})" in event.detail


def test_audit_labels_of_the_version_before_a_promotion_do_not_reset_the_new_ones_monitor() -> None:
    """After a promotion, audit items of the old version are labelled among the new one's (audit
    items are leased last). Each switch of version replaced the monitor, so it never filled."""
    rng = random.Random(3)
    monitor = DriftMonitor()
    found = []
    for i in range(6000):
        if i % 10 == 0:
            monitor.observe_audit("sentiment", "v1", rng.random() < 0.12, at(i))
        found += monitor.observe_audit("sentiment", "v2", rng.random() < (0.12 if i < 3000 else 0.35), at(i))
    assert [e.model_version for e in found] == ["v2"]


@pytest.mark.parametrize("seed", SEEDS)
def test_stationary_streams_raise_nothing(seed: int) -> None:
    rng = random.Random(seed)
    monitor = DriftMonitor()
    assert audited_errors(monitor, rng, 5000, 0.12) == []
    labels, weights = ["negative", "neutral", "positive"], [0.3, 0.45, 0.25]
    events = []
    for i in range(50_000):
        label = rng.choices(labels, weights)[0]
        events += monitor.observe_scored("sentiment", "v1", label, min(1.0, max(0.34, rng.gauss(0.82, 0.1))), at(i))
    assert events == []


def scored_stream(monitor: DriftMonitor, rng: random.Random, n: int, start: int, *, weights: list[float],
                  conf: float, task: str = "sentiment", version: str = "v1") -> list[tuple[int, object]]:
    labels = ["negative", "neutral", "positive"]
    found = []
    for i in range(start, start + n):
        label = rng.choices(labels, weights)[0]
        c = min(1.0, max(0.34, rng.gauss(conf, 0.1)))
        found += [(i, e) for e in monitor.observe_scored(task, version, label, c, at(i))]
    return found


@pytest.mark.parametrize("seed", SEEDS)
def test_a_drop_in_confidence_is_found_within_3000_messages(seed: int) -> None:
    rng = random.Random(seed)
    monitor = DriftMonitor()
    assert scored_stream(monitor, rng, 20_000, 0, weights=[0.3, 0.45, 0.25], conf=0.82) == []
    found = scored_stream(monitor, rng, 3000, 20_000, weights=[0.3, 0.45, 0.25], conf=0.72)
    confidence = [e for _, e in found if "confidence_after" in e.figures]
    assert confidence, "mean confidence falling from 0.82 to 0.72 went unnoticed"
    event = confidence[0]
    assert event.figures["confidence_after"] < event.figures["confidence_before"]
    assert "mean confidence fell from 0.8" in event.detail
    assert all("share_after" not in e.figures for _, e in found)  # the mix did not move


@pytest.mark.parametrize("seed", SEEDS)
def test_a_change_in_the_label_mix_is_found_without_labels(seed: int) -> None:
    rng = random.Random(seed)
    monitor = DriftMonitor()
    assert scored_stream(monitor, rng, 20_000, 0, weights=[0.3, 0.45, 0.25], conf=0.82) == []
    found = scored_stream(monitor, rng, 3000, 20_000, weights=[0.6, 0.25, 0.15], conf=0.82)
    negative = [e for _, e in found if "share_after" in e.figures and "'negative'" in e.detail]
    assert negative, "negative share rising from 30% to 60% went unnoticed"
    assert "share of messages labelled 'negative' rose from" in negative[0].detail
    assert negative[0].figures["share_after"] > negative[0].figures["share_before"]
    # One shift, one event per label that moved: the cooldown holds back repeats.
    assert len(negative) == 1


def test_a_new_model_version_starts_fresh_instead_of_looking_like_drift() -> None:
    rng = random.Random(7)
    monitor = DriftMonitor()
    assert scored_stream(monitor, rng, 20_000, 0, weights=[0.3, 0.45, 0.25], conf=0.82) == []
    # The challenger promoted: a more confident model with another label mix, from its first message.
    assert scored_stream(monitor, rng, 20_000, 20_000, weights=[0.5, 0.3, 0.2], conf=0.92, version="v2") == []


def test_block_size_bounds_how_often_the_detectors_run() -> None:
    monitor = DriftMonitor(DriftConfig(block=10))
    rng = random.Random(3)
    scored_stream(monitor, rng, 95, 0, weights=[1, 0, 0], conf=0.9)
    assert monitor._scored[("sentiment", "v1")].blocks == 9  # label-mix observations; confidence sees each message


def test_only_corrections_of_audit_items_say_whether_the_model_erred() -> None:
    from feedback.contracts import Correction, CorrectionSource, ItemState, LabelRequest, QueueItem, SelectionReason
    from feedback.drift import audit_error

    def item(reasons: list[SelectionReason]) -> QueueItem:
        req = LabelRequest(
            item_id="i-1", task="sentiment", message_id="m-1", text="x", model_name="m", model_version="v1",
            model_label="negative", probs={"negative": 0.6, "neutral": 0.4}, confidence=0.6, margin=0.2,
            entropy=0.67, reasons=reasons, event_time=T0, selected_at=T0,
        )
        return QueueItem(request=req, state=ItemState.labelled, updated_at=T0)

    def correction(label: str) -> Correction:
        return Correction(correction_id="c", task="sentiment", message_id="m-1", item_id="i-1", text="x",
                          annotator="ann", human_label=label, source=CorrectionSource.queue, created_at=T0)

    audited = item([SelectionReason.uncertain, SelectionReason.audit])
    assert audit_error(correction("positive"), audited) is True
    assert audit_error(correction("negative"), audited) is False
    assert audit_error(correction("positive"), item([SelectionReason.uncertain])) is None
    assert audit_error(correction("positive"), None) is None


def _moments(found: list[tuple[int, object]]) -> list[tuple[int, str, dict[str, float]]]:
    return [(i, e.detail, e.figures) for i, e in found]  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_a_warmed_monitor_finds_a_change_where_one_that_saw_the_history_live_does(seed: int) -> None:
    mix = [0.3, 0.45, 0.25]
    live, warmed, cold = DriftMonitor(), DriftMonitor(), DriftMonitor()
    rng = random.Random(seed)
    history = [(rng.choices(["negative", "neutral", "positive"], mix)[0],
                min(1.0, max(0.34, rng.gauss(0.82, 0.1))), at(i)) for i in range(5000)]
    for label, conf, when in history:
        assert live.observe_scored("sentiment", "v1", label, conf, when) == []
    assert warmed.warm_scored("sentiment", "v1", history) == len(history)
    # After the restart: confidence falls and the mix moves.
    after = {
        name: scored_stream(m, random.Random(seed + 100), 3000, 5000, weights=[0.6, 0.25, 0.15], conf=0.72)
        for name, m in (("live", live), ("warmed", warmed), ("cold", cold))
    }
    assert any("confidence_after" in e.figures for _, e in after["live"]), "the fall in confidence went unnoticed"
    assert _moments(after["warmed"]) == _moments(after["live"])
    # Without the history there is no "before" to compare with: the same stream shows no fall in confidence.
    assert not any("confidence_after" in e.figures for _, e in after["cold"])


def test_a_change_in_the_history_was_reported_before_the_restart_and_its_cooldown_carries_over() -> None:
    rng = random.Random(11)
    live, warmed = DriftMonitor(), DriftMonitor()
    # Confidence falls at 5000; the live monitor reports it within the history and keeps quiet after.
    history = [(rng.choices(["negative", "neutral", "positive"], [0.3, 0.45, 0.25])[0],
                min(1.0, max(0.34, rng.gauss(0.82 if i < 5000 else 0.70, 0.1))), at(i)) for i in range(5300)]
    reported = [e for label, conf, when in history for e in live.observe_scored("sentiment", "v1", label, conf, when)]
    assert [e for e in reported if "confidence_after" in e.figures], "the history was meant to hold a change"
    assert warmed.warm_scored("sentiment", "v1", history) == len(history)  # no events: a count
    # A second fall soon after the first is within the cooldown: neither monitor reports it.
    after = {name: scored_stream(m, random.Random(12), 1000, 5300, weights=[0.3, 0.45, 0.25], conf=0.55)
             for name, m in (("live", live), ("warmed", warmed))}
    assert after["live"] == [] and after["warmed"] == []


def test_a_warm_up_with_another_model_versions_history_does_not_count() -> None:
    rng = random.Random(13)
    history = [("neutral", min(1.0, max(0.34, rng.gauss(0.82, 0.1))), at(i)) for i in range(5000)]
    warmed, cold = DriftMonitor(), DriftMonitor()
    warmed.warm_scored("sentiment", "v1", history)
    after = {name: scored_stream(m, random.Random(14), 3000, 5000, weights=[0.6, 0.25, 0.15], conf=0.72, version="v2")
             for name, m in (("warmed", warmed), ("cold", cold))}
    assert _moments(after["warmed"]) == _moments(after["cold"])
    assert warmed._scored[("sentiment", "v2")].confidence.detector.width == 3000


def _audit_pair(i: int, *, wrong: bool, version: str = "v1", audit: bool = True):
    from feedback.contracts import Correction, CorrectionSource, ItemState, LabelRequest, QueueItem, SelectionReason

    reasons = [SelectionReason.audit] if audit else [SelectionReason.uncertain]
    req = LabelRequest(
        item_id=f"i-{i}", task="sentiment", message_id=f"m-{i}", text="x", model_name="m", model_version=version,
        model_label="negative", probs={"negative": 0.6, "neutral": 0.4}, confidence=0.6, margin=0.2,
        entropy=0.67, reasons=reasons, event_time=at(i), selected_at=at(i),
    )
    correction = Correction(
        correction_id=f"c-{i}", task="sentiment", message_id=f"m-{i}", item_id=f"i-{i}", text="x",
        annotator="ann", human_label="positive" if wrong else "negative", source=CorrectionSource.queue,
        created_at=at(i),
    )
    return correction, QueueItem(request=req, state=ItemState.labelled, updated_at=at(i))


def test_a_warmed_audit_monitor_finds_a_rise_in_errors_where_the_live_one_does() -> None:
    rng = random.Random(15)
    history = [_audit_pair(i, wrong=rng.random() < 0.12) for i in range(1500)]
    live, warmed, cold = DriftMonitor(), DriftMonitor(), DriftMonitor()
    for c, item in history:
        assert live.observe_audit("sentiment", "v1", c.human_label != item.request.model_label, c.created_at) == []
    # Another version's audit labels and labels of items outside the audit sample are not replayed.
    noise = [_audit_pair(2000 + i, wrong=True, version="v0") for i in range(50)]
    noise += [_audit_pair(3000 + i, wrong=True, audit=False) for i in range(50)]
    assert warmed.warm_audit("sentiment", "v1", [*noise, *history]) == len(history)
    after = {name: audited_errors(m, random.Random(16), 400, 0.35, start=1500)
             for name, m in (("live", live), ("warmed", warmed), ("cold", cold))}
    assert after["live"], "a jump from 12% to 35% errors went unnoticed"
    assert _moments(after["warmed"]) == _moments(after["live"])
    assert not after["cold"]


def test_a_correction_that_arrives_twice_counts_once() -> None:
    """Every audit label published twice (a retried call, a producer retry) finds the same change
    at the same label as labels published once; a changed label counts again."""
    rng = random.Random(21)
    pairs = [_audit_pair(i, wrong=rng.random() < (0.12 if i < 1500 else 0.35)) for i in range(1900)]
    once, twice = DriftMonitor(), DriftMonitor()
    found_once = [(i, e) for i, (c, item) in enumerate(pairs) for e in once.observe_correction(c, item)]
    found_twice = [(i, e) for i, (c, item) in enumerate(pairs) for _ in range(2)
                   for e in twice.observe_correction(c, item)]
    assert found_once, "a jump from 12% to 35% errors went unnoticed"
    assert _moments(found_twice) == _moments(found_once)
    c, item = pairs[0]
    relabelled = c.model_copy(update={"human_label": "neutral"})
    counted = CountedLabels(capacity=2)
    assert [counted.first_time(x) for x in (c, c, relabelled, relabelled)] == [True, False, True, False]
    assert counted.first_time(pairs[1][0]) and counted.first_time(pairs[2][0])
    assert counted.first_time(relabelled), "the oldest label is forgotten past the capacity"


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_withdrawn_labels_leave_the_error_monitor_and_take_back_the_rise_they_alone_raised(seed: int) -> None:
    """An annotator marks 40 audit items wrong in a row, then undoes every one: the rise those labels
    raised is taken back (drift_withdrawn, tied to it by id), and the monitor goes on as one that never
    saw them."""
    rng = random.Random(seed)
    pairs = [_audit_pair(i, wrong=rng.random() < 0.1) for i in range(1000)]
    burst = [_audit_pair(1000 + i, wrong=True) for i in range(40)]
    undone, never = DriftMonitor(), DriftMonitor()
    raised = [e for c, item in pairs + burst for e in undone.observe_correction(c, item)]
    assert [e.kind for e in raised] == [ModelEventKind.drift] and "rose" in raised[0].detail
    for c, item in pairs:
        assert never.observe_correction(c, item) == []

    taken_back = [e for c, item in reversed(burst)  # undo goes from the newest label back
                  for e in undone.observe_correction(c.withdrawal(c.created_at + timedelta(seconds=5)), item)]
    assert [(e.kind, e.event_id, e.model_version) for e in taken_back] == [
        (ModelEventKind.drift_withdrawn, ModelEvent.withdrawal_id(raised[0].event_id), "v1")]
    after = {name: audited_errors(m, random.Random(seed + 50), 1500, 0.1 if name else 0.35, start=2000)
             for name, m in (("undone", undone), ("never", never))}
    assert _moments(after["undone"]) == _moments(after["never"])
    # the same stream on both, now with a real rise: found at the same label by both
    rise = {name: audited_errors(m, random.Random(seed + 60), 400, 0.35, start=4000)
            for name, m in (("undone", undone), ("never", never))}
    assert rise["never"], "a jump from 10% to 35% errors went unnoticed"
    assert _moments(rise["undone"]) == _moments(rise["never"])


def test_a_rise_that_stands_without_the_withdrawn_label_is_not_taken_back() -> None:
    rng = random.Random(5)
    pairs = [_audit_pair(i, wrong=rng.random() < (0.12 if i < 1500 else 0.35)) for i in range(1900)]
    monitor = DriftMonitor()
    raised = [i for i, (c, item) in enumerate(pairs) for _ in monitor.observe_correction(c, item)]
    assert raised, "a jump from 12% to 35% errors went unnoticed"
    # the label that completed the change, and one between the shift and it: the labels after still show it
    for c, item in (pairs[raised[0] - 40], pairs[raised[0]]):
        assert monitor.observe_correction(c.withdrawal(c.created_at + timedelta(seconds=5)), item) == []


def test_a_label_undone_and_given_again_decides_the_change_it_completed_again() -> None:
    """The newest label completed a rise: undone, the rise is taken back (nothing after it shows it
    yet); the same label given again counts anew and raises it again, as it did the first time."""
    rng = random.Random(5)
    pairs = [_audit_pair(i, wrong=rng.random() < (0.12 if i < 1500 else 0.35)) for i in range(1900)]
    monitor = DriftMonitor()
    raised = []
    for c, item in pairs:
        if raised := monitor.observe_correction(c, item):
            break
    taken_back = monitor.observe_correction(c.withdrawal(c.created_at + timedelta(seconds=5)), item)
    assert [e.event_id for e in taken_back] == [ModelEvent.withdrawal_id(raised[0].event_id)]
    again = monitor.observe_correction(c, item)
    assert _moments([(0, e) for e in again]) == _moments([(0, e) for e in raised])


def test_the_corrections_agent_takes_a_withdrawn_audit_label_out_of_the_monitor(tmp_path) -> None:
    """Undo publishes the label's withdrawal on the corrections topic; the worker (real chdb for
    the queue item) hands it to the monitor that counted the label."""
    settings = VigilSettings(data_dir=tmp_path, clickhouse_url=None)
    with open_store(settings) as store, ThreadPoolExecutor(1) as executor:
        feedback = FeedbackStore(store)
        label, item = _audit_pair(0, wrong=True)
        feedback.write_requests([item.request])
        drift = DriftMonitor()
        proc = FeedbackProcessor(
            selector=Selector(policy_from_settings(settings)), drift=drift, candidates_topic=None,
            requests_topic=None, model_events_topic=None, store=store, feedback=feedback, metrics=Metrics(),
            io_executor=executor, retry_max_s=1.0, watchdogs=Watchdogs(60, started_at=time.monotonic()),
            warm_start=0,
        )
        assert asyncio.run(proc.on_corrections([label.model_dump_json().encode()])) == []
        detector = drift._audited[("sentiment", "v1")].error.detector
        assert (detector.width, detector.estimation) == (1, 1.0)
        withdrawal = label.withdrawal(label.created_at + timedelta(seconds=5))
        assert asyncio.run(proc.on_corrections([withdrawal.model_dump_json().encode()])) == []
        assert drift._audited[("sentiment", "v1")].error.detector.width == 0
