from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feedback.triggers import TriggerPolicy, decide
from streams.settings import VigilSettings

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
POLICY = TriggerPolicy(min_corrections=100, interval=timedelta(hours=24), min_after_interval=20, on_drift=True)


@pytest.mark.parametrize(
    ("n", "hours_ago", "drift", "force", "retrain", "reason_has"),
    [
        (100, 1, 0, False, True, "100 new corrections >= 100"),
        (99, 1, 0, False, False, "< 100"),
        (20, 25, 0, False, True, "25.0 h since the last retrain and 20 new"),
        (19, 25, 0, False, False, "only 19 new corrections"),
        (20, None, 0, False, True, "no retrain yet"),
        (5, 1, 1, False, True, "drift"),
        (5, 1, 0, True, True, "forced"),
        (0, 100, 3, True, False, "no new corrections"),
    ],
)
def test_decisions(n, hours_ago, drift, force, retrain, reason_has):
    last = None if hours_ago is None else NOW - timedelta(hours=hours_ago)
    d = decide(POLICY, new_corrections=n, last_retrain=last, now=NOW, drift_events=drift, force=force)
    assert d.retrain is retrain
    assert reason_has in d.reason
    assert d.new_corrections == n


def test_drift_ignored_when_disabled():
    policy = TriggerPolicy(100, timedelta(hours=24), 20, on_drift=False)
    d = decide(policy, new_corrections=5, last_retrain=NOW - timedelta(hours=1), now=NOW, drift_events=2)
    assert not d.retrain


def test_policy_from_settings():
    s = VigilSettings(retrain_min_corrections=7, retrain_interval_h=2, retrain_min_corrections_after_interval=3,
                      retrain_on_drift=False)
    assert TriggerPolicy.from_settings(s) == TriggerPolicy(7, timedelta(hours=2), 3, False)


@given(n=st.integers(0, 500), hours=st.floats(0, 100), drift=st.integers(0, 3))
def test_monotone_in_corrections(n, hours, drift):
    """More corrections never turn a retrain into no retrain."""
    last = NOW - timedelta(hours=hours)
    if decide(POLICY, new_corrections=n, last_retrain=last, now=NOW, drift_events=drift).retrain:
        assert decide(POLICY, new_corrections=n + 1, last_retrain=last, now=NOW, drift_events=drift).retrain
