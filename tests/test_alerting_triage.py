"""Triage: routing with the real mapping and Banking77 texts, human triage, P1 alerts, SLA
escalation, intent spikes (and their state restored by a worker taking a partition over),
threshold calibration."""

from __future__ import annotations

import csv
import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from models.triage_mapping import load_triage_mapping
from streams.alerting.contracts import CONTRIBUTOR_TEXT_CHARS, Alert, ContributingMessage, Severity
from streams.alerting.partitions import IntentSpikePartitions
from streams.alerting.rules import IntentSpikeRule, geometry
from streams.alerting.triage import (
    HUMAN_TRIAGE,
    CalibrationError,
    IntentSpikeDetector,
    SlaTracker,
    UnroutableIntent,
    calibrate_threshold,
    calibration_summary,
    priority_alert,
    route,
)
from streams.contracts import ScoredMessage, SupportMessage
from tests.fixtures.alerting import DATA, feed_partition, scored

T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
INTENTS = json.loads((DATA / "banking77" / "categories.json").read_text())
MAPPING = load_triage_mapping(INTENTS)


def _rows() -> list[tuple[int, str, str]]:
    with (DATA / "banking77" / "train.csv").open(encoding="utf-8", newline="") as f:
        return [(i, r["text"], r["category"]) for i, r in enumerate(csv.DictReader(f))]


ROWS = _rows()
FIRST_TEXT = {cat: text for _, text, cat in reversed(ROWS)}


def _msg(mid: str, text: str, intent: str, t: datetime, confidence: float | None = None) -> ScoredMessage:
    m = SupportMessage(id=mid, channel="chat", customer_id="cust-1", text=text, created_at=t)
    s = scored(m, intent, INTENTS)
    if confidence is not None:
        s = s.model_copy(update={"confidence": confidence})
    return s


@pytest.mark.parametrize("intent", INTENTS)
def test_each_mapped_intent_routes_to_its_queue(intent):
    d = route(_msg("m1", FIRST_TEXT[intent], intent, T0, confidence=0.9), MAPPING, min_confidence=0.5)
    r = MAPPING.route(intent)
    assert (d.intent, d.queue, d.routed_queue, d.priority, d.sla_minutes) == (intent, r.queue, r.queue, r.priority, r.sla_minutes)
    assert d.due_at == T0 + timedelta(minutes=r.sla_minutes) and not d.human_triage


def test_low_confidence_goes_to_human_triage_keeping_priority_and_sla():
    d = route(_msg("m1", FIRST_TEXT["compromised_card"], "compromised_card", T0, 0.49), MAPPING, min_confidence=0.5)
    assert (d.queue, d.human_triage, d.routed_queue, d.priority, d.sla_minutes) == (HUMAN_TRIAGE, True, "fraud", "P1", 15)
    at_threshold = route(_msg("m2", "x", "compromised_card", T0, 0.5), MAPPING, min_confidence=0.5)
    assert at_threshold.queue == "fraud"
    assert HUMAN_TRIAGE not in MAPPING.queues


def test_an_intent_the_mapping_lacks_is_a_clear_error():
    m = _msg("m1", "hello", "card_arrival", T0).model_copy(update={"label": "open_account"})
    with pytest.raises(UnroutableIntent, match="open_account.*add the intent"):
        route(m, MAPPING, 0.5)


def test_p1_intents_alert_at_once_and_others_do_not():
    p1 = sorted(i for i, r in MAPPING.intents.items() if r.priority == "P1")
    assert p1  # the mapping has urgent intents
    for n, intent in enumerate(INTENTS):
        d = route(_msg(f"m{n}", FIRST_TEXT[intent], intent, T0, 0.9), MAPPING, 0.5)
        alert = priority_alert(d)
        if intent in p1:
            assert alert is not None and alert.severity == Severity.critical
            assert (alert.rule, alert.intent, alert.queue, alert.created_at) == ("priority_intent", intent, "fraud", T0)
            assert [m.id for m in alert.top_messages] == [f"m{n}"]
        else:
            assert alert is None
    guess = route(_msg("g", "x", p1[0], T0, 0.2), MAPPING, 0.5)
    assert priority_alert(guess) is None


def test_an_alert_shows_the_start_of_a_long_text_and_stays_small():
    """An alert carried its messages' whole texts, so its size grew with the text limit: with
    VIGIL_MAX_TEXT_CHARS at 30,000, a ticker's ten contributors passed the producer's 1 MB."""
    text = "my card was stolen 🙁 " * 1500  # 30,000 characters, 4-byte emoji among them
    d = route(_msg("m1", text, "compromised_card", T0, 0.9), MAPPING, 0.5)
    alert = priority_alert(d)
    (shown,) = alert.top_messages
    assert len(shown.text) == CONTRIBUTOR_TEXT_CHARS and shown.text == text[: CONTRIBUTOR_TEXT_CHARS - 1] + "…"
    assert len(alert.model_dump_json().encode()) < 4 * CONTRIBUTOR_TEXT_CHARS + 2000
    assert ContributingMessage.model_validate_json(shown.model_dump_json()) == shown  # read back unchanged


def test_an_unacked_p1_escalates_after_its_sla_exactly_once_and_an_acked_one_does_not():
    tracker = SlaTracker()
    late = route(_msg("late", FIRST_TEXT["lost_or_stolen_card"], "lost_or_stolen_card", T0, 0.9), MAPPING, 0.5)
    acked = route(_msg("acked", FIRST_TEXT["compromised_card"], "compromised_card", T0, 0.9), MAPPING, 0.5)
    routine = route(_msg("routine", FIRST_TEXT["card_arrival"], "card_arrival", T0, 0.9), MAPPING, 0.5)
    assert tracker.open(late) and tracker.open(acked) and not tracker.open(routine)
    assert not tracker.open(late)  # a redelivered decision is not tracked twice
    assert tracker.due(T0 + timedelta(minutes=10)) == []
    assert tracker.ack("acked")
    assert tracker.due(T0 + timedelta(minutes=15)) == []  # acked by the end of the SLA is in time
    escalations = tracker.due(T0 + timedelta(minutes=15, seconds=1))
    assert [(a.rule, a.top_messages[0].id, a.queue) for a in escalations] == [("sla_breach", "late", "fraud")]
    assert escalations[0].figures["minutes_overdue"] == pytest.approx(1 / 60)
    assert tracker.due(T0 + timedelta(hours=5)) == []  # once
    assert not tracker.ack("late") and len(tracker) == 0


def test_a_ticket_reopened_due_later_escalates_at_its_own_due_time():
    """``due`` took a ticket off the open ones before comparing due times, so the entry a released
    ticket left behind dropped the same ticket reopened with a later due time: it never escalated."""
    tracker = SlaTracker()
    ticket = route(_msg("t", FIRST_TEXT["compromised_card"], "compromised_card", T0, 0.9), MAPPING, 0.5, source_partition=3)
    assert tracker.open(ticket) and tracker.release([3]) == 1
    later = ticket.model_copy(update={"due_at": ticket.due_at + 10 * MIN})
    assert tracker.open(later)
    assert tracker.due(ticket.due_at + timedelta(seconds=1)) == []
    assert [a.window_end for a in tracker.due(later.due_at + timedelta(seconds=1))] == [later.due_at]


def test_a_short_sla_from_a_custom_mapping():
    short = MAPPING.model_copy(update={"intents": {**MAPPING.intents, "card_swallowed": MAPPING.intents["card_swallowed"].model_copy(update={"priority": "P1", "sla_minutes": 1})}})
    tracker = SlaTracker()
    tracker.open(route(_msg("s", FIRST_TEXT["card_swallowed"], "card_swallowed", T0, 0.9), short, 0.5))
    assert tracker.due(T0 + timedelta(seconds=60)) == []
    assert len(tracker.due(T0 + timedelta(seconds=61))) == 1


def _normal_support(step: timedelta = timedelta(seconds=20)) -> list[ScoredMessage]:
    """Banking77 is stored sorted by intent; normal traffic mixes them, so take one of each in turn."""
    by_intent: dict[str, list[tuple[int, str]]] = {}
    for row, text, cat in ROWS:
        by_intent.setdefault(cat, []).append((row, text))
    mixed = (x for group in itertools.zip_longest(*by_intent.values()) for x in group if x is not None)
    rows_by_id = {row: cat for row, _, cat in ROWS}
    return [_msg(f"b77-{row}", text, rows_by_id[row], T0 + n * step) for n, (row, text) in enumerate(mixed)]


SPIKE_AT = T0 + timedelta(hours=20)


def _spiked_support() -> tuple[list[ScoredMessage], list[ScoredMessage]]:
    """Normal traffic with 25 compromised-card messages in five minutes at SPIKE_AT; and the spike alone."""
    spike = [
        _msg(f"spike-{i}", FIRST_TEXT["compromised_card"], "compromised_card", SPIKE_AT + i * timedelta(seconds=12))
        for i in range(25)
    ]
    return sorted(_normal_support() + spike, key=lambda m: m.event_time), spike


def test_intent_spikes_alert_once_and_normal_traffic_does_not():
    rule = IntentSpikeRule()
    quiet = IntentSpikeDetector(rule)
    assert [a for m in _normal_support() for a in quiet.feed_event(route(m, MAPPING, 0.5)).alerts] == []

    stream, spike = _spiked_support()
    detector = IntentSpikeDetector(rule)
    alerts = [a for m in stream for a in detector.feed_event(route(m, MAPPING, 0.5)).alerts]
    assert [(a.rule, a.intent) for a in alerts] == [("intent_spike", "compromised_card")]
    a = alerts[0]
    assert a.window_start <= SPIKE_AT < a.window_end <= SPIKE_AT + timedelta(minutes=rule.window.step_minutes + 5)
    assert {m.id for m in a.top_messages} <= {m.id for m in spike}
    assert a.figures["volume"] >= rule.min_volume


@pytest.mark.parametrize("stop_at", [0.5, "in the spike"])
def test_intent_spike_state_restored_mid_stream_carries_on_as_if_nothing_stopped(stop_at):
    """What a worker taking an intent-events partition over does: restore the checkpoint (JSON),
    skip the redelivered events it holds, and alert exactly as one that never stopped."""
    rule = IntentSpikeRule()
    stream, _ = _spiked_support()
    tickets = [route(m, MAPPING, 0.5, source_partition=1) for m in stream]
    uninterrupted = IntentSpikePartitions(rule)
    uninterrupted.restore(0, None)
    expected = feed_partition(uninterrupted, tickets)
    assert [json.loads(a)["intent"] for a in expected] == ["compromised_card"]

    cut = next(i for i, t in enumerate(tickets) if t.message_id == "spike-10") if stop_at == "in the spike" else len(tickets) // 2
    before = IntentSpikePartitions(rule)
    before.restore(0, None)
    alerts = feed_partition(before, tickets[:cut])
    (checkpoint,) = before.checkpoints()
    after = IntentSpikePartitions(rule)
    after.restore(0, after.resume(checkpoint))
    redelivered = cut - 30
    alerts += feed_partition(after, tickets[redelivered:], first_offset=redelivered)
    assert alerts == expected

    wider = IntentSpikeRule.model_validate({"window": {"size_minutes": 30}})
    fresh = IntentSpikePartitions(wider)
    fresh.restore(0, fresh.resume(checkpoint))  # built with other windows: refused, the partition starts fresh
    assert fresh.feed(0, 0, tickets[0], wall=0.0) is not None


def _burst(at: datetime, n: int, tag: str, every: timedelta = timedelta(seconds=12)) -> list[ScoredMessage]:
    """``n`` compromised-card messages from ``at``, one every ``every``."""
    return [_msg(f"{tag}-{i}", FIRST_TEXT["compromised_card"], "compromised_card", at + i * every) for i in range(n)]


def _around_spike_at(*bursts: list[ScoredMessage]) -> list[ScoredMessage]:
    """Normal traffic up to three hours past SPIKE_AT, with ``bursts`` in it."""
    normal = [m for m in _normal_support() if m.event_time < SPIKE_AT + timedelta(hours=3)]
    return sorted(normal + [m for b in bursts for m in b], key=lambda m: m.event_time)


def _spike_alerts(detector: IntentSpikeDetector, stream: list[ScoredMessage]) -> list[Alert]:
    return [a for m in stream for a in detector.feed_event(route(m, MAPPING, 0.5)).alerts]


def _learned(detector: IntentSpikeDetector, intent: str = "compromised_card") -> int:
    """How many windows of the intent its volume baseline has learned."""
    return detector.to_state()["volume"]["baselines"][intent][0]


def test_a_spike_does_not_hide_the_same_spike_after_the_cooldown():
    """Each of the three windows holding a spike was learned, so the same spike 65 minutes later,
    past the cooldown, scored z 3.4 against the normal it had widened (24 alone), and was missed."""
    rule = IntentSpikeRule()
    second = _burst(SPIKE_AT + 65 * MIN, 25, "second")
    first_alert, again = _spike_alerts(IntentSpikeDetector(rule), _around_spike_at(_burst(SPIKE_AT, 25, "first"), second))
    (alone,) = _spike_alerts(IntentSpikeDetector(rule), _around_spike_at(second))
    assert (first_alert.severity, first_alert.window_end) == ("critical", SPIKE_AT + 5 * MIN)
    assert (again.severity, again.window_end) == (alone.severity, alone.window_end) == ("critical", SPIKE_AT + 70 * MIN)
    assert again.figures["z_volume"] == pytest.approx(alone.figures["z_volume"], abs=0.5)


def _two_tickets_an_hour_apart() -> list[ScoredMessage]:
    return _burst(T0 + timedelta(seconds=10), 2, "early", every=timedelta(hours=1, minutes=5))


def test_an_intent_with_two_tickets_of_history_is_not_warm():
    """Every hopping window was learned, and each 5-minute step without one as a 0: two tickets an
    hour apart made 16 windows of "history" (warm at 12), and ten tickets an hour later a spike."""
    detector = IntentSpikeDetector(IntentSpikeRule())
    ten = _burst(T0 + timedelta(hours=2, seconds=10), 10, "ten", every=timedelta(seconds=20))
    alerts = _spike_alerts(detector, _two_tickets_an_hour_apart() + ten) + detector.advance(T0 + timedelta(hours=3))
    assert alerts == []
    assert _learned(detector) == 9  # each 15 minutes from 08:00 to 10:15, once


# What the code that learned every hopping window checkpointed after _two_tickets_an_hour_apart,
# at 08:00:10 and 09:05:10 (16 windows learned, the last one ending 09:20), at 09:30.
_OVERLAPPING = {
    "windows": {"watermark": 1736155800000000, "next_close": 5787186, "panes": []},
    "volume": {"baselines": {"compromised_card": [16, 0.655967083279505, 0.22567426893328385]},
               "last_end": {"compromised_card": "2025-01-06T09:20:00+00:00"}},
    "last_fired": {},
}  # fmt: skip


def test_an_intent_checkpoint_that_learned_every_hopping_window_restores_the_history_it_held():
    """That code took the two tickets for 16 windows of history, so ten tickets later were a
    spike. Restored, they are the windows a detector learns now: five, ending on the grid."""
    rule = IntentSpikeRule()
    restored = IntentSpikeDetector.from_state(rule, _OVERLAPPING | {"geometry": geometry(rule)})
    now = IntentSpikeDetector(rule)
    _spike_alerts(now, _two_tickets_an_hour_apart())
    now.advance(T0 + timedelta(minutes=90))
    assert _learned(restored) == _learned(now) == 5
    assert restored.to_state()["volume"]["last_end"] == now.to_state()["volume"]["last_end"] == {
        "compromised_card": "2025-01-06T09:15:00+00:00"
    }
    ten = _burst(T0 + timedelta(hours=2, seconds=10), 10, "ten", every=timedelta(seconds=20))
    assert _spike_alerts(restored, ten) + restored.advance(T0 + timedelta(hours=3)) == []
    assert _learned(restored) == 9


# Levels with room between them: ten messages in a window are a warning, 25 critical.
SPREAD = IntentSpikeRule.model_validate({"levels": {"info": 4, "warning": 8, "critical": 20}})


def test_a_higher_severity_spike_goes_through_the_cooldown_and_restarts_it():
    """A warning spike held back the same intent going critical 20 minutes later."""
    warning = _burst(SPIKE_AT, 10, "w", every=timedelta(seconds=20))
    critical = _burst(SPIKE_AT + 20 * MIN, 25, "c")
    # then critical again (z 31), inside the cooldown the critical alert started, but not the warning's:
    # not worth a page of its own
    again = _burst(SPIKE_AT + 40 * MIN, 40, "again", every=timedelta(seconds=6))
    alerts = _spike_alerts(IntentSpikeDetector(SPREAD), _around_spike_at(warning, critical, again))
    assert [(a.severity, a.window_end - SPIKE_AT) for a in alerts] == [("warning", 5 * MIN), ("critical", 25 * MIN)]
    (alone,) = _spike_alerts(IntentSpikeDetector(SPREAD), _around_spike_at(critical))
    assert alerts[1].window_end == alone.window_end  # as soon as it would have come without the warning


def test_a_restored_intent_cooldown_keeps_its_severity_and_an_old_one_holds_everything():
    stream = _around_spike_at(_burst(SPIKE_AT, 10, "w", every=timedelta(seconds=20)), _burst(SPIKE_AT + 20 * MIN, 25, "c"))
    cut = next(i for i, m in enumerate(stream) if m.event_time >= SPIKE_AT + 15 * MIN)
    before = IntentSpikeDetector(SPREAD)
    assert [a.severity for a in _spike_alerts(before, stream[:cut])] == ["warning"]
    state = json.loads(json.dumps(before.to_state()))

    def severities(restored: IntentSpikeDetector) -> list[str]:
        return [a.severity for a in _spike_alerts(restored, stream[cut:])]

    assert severities(IntentSpikeDetector.from_state(SPREAD, state)) == ["critical"]
    # A checkpoint from before cooldowns kept their severity: the cooldown holds until it ends.
    old = state | {"last_fired": {intent: t for intent, (t, _) in state["last_fired"].items()}}
    assert severities(IntentSpikeDetector.from_state(SPREAD, old)) == []


# (confidence, correct): precision at or above each threshold is
# 0.95: 1/1, 0.9: 2/2, 0.85: 2/3, 0.8: 3/4, 0.7: 4/5, 0.6: 4/6, 0.5: 4/7
HAND_MADE = [(0.7, True), (0.95, True), (0.5, False), (0.85, False), (0.6, False), (0.9, True), (0.8, True)]


@pytest.mark.parametrize(
    "target, threshold, support", [(0.8, 0.7, 5), (0.75, 0.7, 5), (0.81, 0.9, 2), (1.0, 0.9, 2), (0.5, 0.5, 7)]
)
def test_calibration_picks_the_lowest_threshold_reaching_the_target(target, threshold, support):
    c = calibrate_threshold(HAND_MADE, target)
    assert (c.threshold, c.support) == (threshold, support)
    assert c.precision >= target and c.coverage == pytest.approx(support / 7)


def test_calibration_takes_equal_confidences_together_and_honours_min_support():
    pairs = [(0.9, True), (0.8, True), (0.8, False), (0.7, True)]
    assert calibrate_threshold(pairs, 0.7).threshold == 0.7  # 3/4
    assert calibrate_threshold(pairs, 0.9).threshold == 0.9  # 0.8 gives 2/3 as a pair
    with pytest.raises(CalibrationError, match="at least 2"):
        calibrate_threshold(pairs, 1.0, min_support=2)
    with pytest.raises(CalibrationError, match="no validation predictions"):
        calibrate_threshold([], 0.9)


def test_a_confidence_that_is_not_a_probability_gives_no_threshold():
    """A NaN sorted anywhere and became the threshold; no confidence is below NaN, so with it
    nothing went to people."""
    pairs = [(0.9, True), (0.8, False), (float("nan"), True)]
    with pytest.raises(CalibrationError, match="not probabilities"):
        calibrate_threshold(pairs, 0.6)
    with pytest.raises(CalibrationError, match="not probabilities"):
        calibrate_threshold([(1.5, True), (0.9, True)], 0.6)
    summary = calibration_summary(pairs, 0.6, min_support=1)
    assert "threshold" not in summary and "broken" in str(summary["error"])  # the worker uses the rules' threshold
