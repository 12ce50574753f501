"""Alert verdicts in ClickHouse (migration 0006) on chdb and clickhouse-server 18.16, and the
precision they give through streams.alerting.precision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.alerting.contracts import (
    Alert,
    AlertVerdict,
    ContributingMessage,
    Severity,
)
from streams.alerting.precision import rule_precision
from streams.clickhouse import open_store
from streams.settings import VigilSettings

T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


@pytest.fixture(params=["chdb", "server"])
def settings(request: pytest.FixtureRequest) -> VigilSettings:
    return request.getfixturevalue(f"{request.param}_settings")


def alert(n: int, rule: str) -> Alert:
    return Alert(
        id=Alert.make_id("t", n), kind="sentiment", rule=rule, severity=Severity.warning, ticker="ACME",
        top_messages=[ContributingMessage(id=f"m{n}", text="down bad", label="negative", score=-0.8)],
        created_at=T0 + timedelta(minutes=n),
    )


def test_verdicts_round_trip_keep_history_and_give_precision(settings: VigilSettings) -> None:
    with open_store(settings) as store:
        a1, a2, a3 = alert(1, "negative_share"), alert(2, "negative_share"), alert(3, "volume_spike")
        store.write_alerts([a1, a2, a3])
        first = AlertVerdict(alert_id=a1.id, useful=False, by="ann", at=T0 + timedelta(minutes=5), note="meh")
        changed = AlertVerdict(alert_id=a1.id, useful=True, by="ann", at=T0 + timedelta(minutes=6))
        other = AlertVerdict(alert_id=a2.id, useful=False, by="bob", at=T0 + timedelta(minutes=7))
        assert store.write_verdicts([first, changed, other]) == 3
        store.write_verdicts([other])  # a retried request collapses
        assert store.fetch_verdicts() == [first, changed, other]
        assert store.fetch_verdicts([a2.id]) == [other]
        assert store.fetch_verdicts([]) == []
        assert store.fetch_alert(a3.id) == a3
        assert store.fetch_alert("nope") is None
        precision = rule_precision(store.fetch_alerts(), store.fetch_verdicts())
        assert (precision["negative_share"].useful, precision["negative_share"].false) == (1, 1)
        assert precision["negative_share"].precision == 0.5
        assert precision["volume_spike"].precision is None


def test_the_alerts_behind_a_message_are_found_by_its_id_not_by_its_text(settings: VigilSettings) -> None:
    odd = 'm"7\\ü'  # a quote, a backslash and a non-ASCII letter: stored escaped in the JSON
    shared = alert(1, "negative_share").model_copy(update={"top_messages": [
        ContributingMessage(id="m1", text="down bad", label="negative", score=-0.8),
        ContributingMessage(id=odd, text='see {"id": "m2"}', label="negative", score=-0.7)]})
    other = alert(2, "negative_share")  # m2 only
    triage = Alert(id=Alert.make_id("t", 3), kind="triage", rule="priority_intent", severity=Severity.critical,
                   intent="lost_or_stolen_card", created_at=T0, top_messages=[  # m3, another kind
                       ContributingMessage(id="m3", text="card gone", label="lost_or_stolen_card", score=0.9)])
    with open_store(settings) as store:
        store.write_alerts([shared, other, triage])
        assert [a.id for a in store.alerts_behind("sentiment", ["m1"])] == [shared.id]
        assert [a.id for a in store.alerts_behind("sentiment", [odd, "m2"])] == [shared.id, other.id]
        assert [a.id for a in store.alerts_behind("sentiment", ["m"])] == []  # whole ids only
        assert store.alerts_behind("sentiment", ["m3"]) == [] and store.alerts_behind("sentiment", []) == []
        assert store.alerts_behind("triage", ["m3"]) == [triage]
