"""Verdicts -> per-rule precision and label suggestions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.alerting.contracts import Alert, AlertVerdict, ContributingMessage, Severity
from streams.alerting.precision import label_suggestions, latest_verdicts, rule_precision

T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)


def _alert(n: int, rule: str) -> Alert:
    return Alert(
        id=Alert.make_id("sentiment", rule, "ACME", n),
        kind="sentiment",
        rule=rule,
        severity=Severity.warning,
        ticker="ACME",
        top_messages=[ContributingMessage(id=f"m{n}-{i}", text=f"text {i}", label="negative", score=-0.8) for i in range(2)],
        created_at=T0,
    )


def _verdict(alert: Alert, useful: bool, minutes: int = 0) -> AlertVerdict:
    return AlertVerdict(alert_id=alert.id, useful=useful, by="ana", at=T0 + timedelta(minutes=minutes))


def test_precision_per_rule_uses_the_latest_verdict():
    shock = [_alert(i, "sentiment_shock") for i in range(4)]
    spike = [_alert(i, "volume_spike") for i in range(2)]
    verdicts = [
        _verdict(shock[0], True),
        _verdict(shock[1], True, 1),
        _verdict(shock[1], False, 5),  # changed their mind: false
        _verdict(shock[2], False),
        _verdict(_alert(99, "sentiment_shock"), True),  # not in the period reported
    ]
    p = rule_precision(shock + spike, verdicts)
    assert (p["sentiment_shock"].alerts, p["sentiment_shock"].useful, p["sentiment_shock"].false, p["sentiment_shock"].unrated) == (4, 1, 2, 1)
    assert p["sentiment_shock"].precision == pytest.approx(1 / 3)
    assert p["volume_spike"].precision is None and p["volume_spike"].unrated == 2


def test_latest_verdict_on_equal_times_is_the_last_given():
    a = _alert(1, "sentiment_shock")
    assert latest_verdicts([_verdict(a, True), _verdict(a, False)])[a.id].useful is False


@pytest.mark.parametrize("useful, action", [(True, "confirm"), (False, "review")])
def test_a_verdict_becomes_labels_for_the_messages_behind_the_alert(useful, action):
    a = _alert(1, "sentiment_shock")
    out = label_suggestions(a, _verdict(a, useful))
    assert [(s.message_id, s.label, s.action, s.alert_id, s.by) for s in out] == [
        ("m1-0", "negative", action, a.id, "ana"),
        ("m1-1", "negative", action, a.id, "ana"),
    ]


def test_volume_verdicts_say_nothing_about_labels_and_mismatches_are_refused():
    a = _alert(1, "volume_spike")
    assert label_suggestions(a, _verdict(a, True)) == []
    with pytest.raises(ValueError, match="not"):
        label_suggestions(a, _verdict(_alert(2, "volume_spike"), True))
