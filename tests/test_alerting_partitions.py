"""Sentiment state per ticker-events partition: a checkpoint restored mid-stream (after a crash or
a rebalance) carries on exactly as if nothing had stopped; redelivered and re-published events
count once; checkpoints round trip through both real ClickHouse engines. (The intent-spike kind of
AlertPartitions is tested in test_alerting_triage.py.)"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from streams.alerting.contracts import TickerEvent
from streams.alerting.partitions import Checkpoint, SentimentPartitions
from streams.alerting.rules import AlertRules, SentimentRules, ticker_events
from streams.clickhouse import open_store
from streams.clickhouse.alerting_state import AlertingStateStore
from streams.replay import BUNDLED_START
from streams.settings import VigilSettings
from tests.fixtures.alerting import feed_partition, merged, scored_bundled_news, scored_news, steady_ticker

MIN = timedelta(minutes=1)
SHOCK_AT = BUNDLED_START + timedelta(hours=24)


def _stream(rules: SentimentRules) -> list[TickerEvent]:
    """The bundled news, a steady ticker and a negative shock on it, as ticker events."""
    shock = [scored_news(f"shock-{i}", SHOCK_AT + timedelta(seconds=5 + 10 * i), "negative") for i in range(5)]
    messages = merged(list(scored_bundled_news()), steady_ticker(BUNDLED_START, hours=30), shock)
    return [e for m in messages for e in ticker_events(m, rules)]


@pytest.fixture(scope="module")
def stream() -> list[TickerEvent]:
    return _stream(SentimentRules())


def _fresh(rules: SentimentRules) -> SentimentPartitions:
    parts = SentimentPartitions(rules)
    parts.restore(0, None)
    return parts


def test_the_stream_alerts_once_on_the_shock(stream):
    alerts = [json.loads(a) for a in feed_partition(_fresh(SentimentRules()), stream)]
    assert [(a["ticker"], a["rule"]) for a in alerts] == [("VGLX", "sentiment_shock")]


@pytest.mark.parametrize("stop_at", [0.3, 0.6, "in the shock window"])
def test_a_checkpoint_restored_mid_stream_carries_on_as_if_nothing_stopped(stream, stop_at):
    rules = SentimentRules()
    expected = feed_partition(_fresh(rules), stream)
    cut = (
        next(i for i, e in enumerate(stream) if e.message_id == "shock-2")
        if stop_at == "in the shock window" else int(len(stream) * stop_at)
    )  # fmt: skip
    before = _fresh(rules)
    alerts = feed_partition(before, stream[:cut])
    (checkpoint,) = before.checkpoints()
    assert checkpoint.offset == cut - 1

    after = SentimentPartitions(rules)
    after.restore(0, Checkpoint(0, checkpoint.offset, checkpoint.state))
    # The committed offset lags the checkpoint: the last 50 events come again, and are skipped.
    redelivered = max(cut - 50, 0)
    alerts += feed_partition(after, stream[redelivered:], first_offset=redelivered)
    assert alerts == expected


def test_a_message_republished_at_a_new_offset_counts_once():
    parts = _fresh(SentimentRules())
    e = ticker_events(scored_news("m-1", SHOCK_AT, "negative"), SentimentRules())[0]
    assert parts.feed(0, 0, e, wall=0.0) is not None
    assert parts.feed(0, 0, e, wall=0.0) is None  # redelivered: the offset is held
    assert parts.feed(0, 7, e, wall=0.0) is None  # re-published upstream: same ticker and id


def test_only_changed_partitions_are_checkpointed_and_revoked_ones_are_forgotten():
    rules = SentimentRules()
    parts = SentimentPartitions(rules)
    parts.restore(0, None)
    parts.restore(1, None)
    parts.feed(1, 3, ticker_events(scored_news("m-1", SHOCK_AT, "neutral"), rules)[0], wall=0.0)
    checkpoints = parts.checkpoints()
    assert [(c.partition, c.offset) for c in checkpoints] == [(1, 3)]
    parts.saved(checkpoints)
    assert parts.checkpoints() == []
    parts.revoke([1])
    assert not parts.owned(1) and parts.owned(0)


def test_a_quiet_partition_is_saved_again_only_when_its_windows_can_close():
    rules = SentimentRules()  # windows step 1 minute, lateness 2: idle after 180 s of silence
    parts = SentimentPartitions(rules)
    parts.restore(0, None)
    parts.feed(0, 0, ticker_events(scored_news("m-1", SHOCK_AT, "neutral"), rules)[0], wall=0.0)
    parts.saved(parts.checkpoints())
    idle_at = rules.window.idle_after_s
    saved_at = []
    for wall in range(int(idle_at), int(idle_at) + 300, 5):  # the worker's 5 s timer
        parts.tick(float(wall))
        if checkpoints := parts.checkpoints():
            parts.saved(checkpoints)
            saved_at.append(wall)
    # once when the timer first moves event time, then once per step (60 s), not every 5 s
    assert len(saved_at) in (5, 6) and all(b - a == 60 for a, b in zip(saved_at[1:], saved_at[2:], strict=False))


def test_a_checkpoint_of_other_window_geometry_is_not_used(caplog):
    rules = SentimentRules()
    old = _fresh(rules)
    old.feed(0, 0, ticker_events(scored_news("m-1", SHOCK_AT, "neutral"), rules)[0], wall=0.0)
    (checkpoint,) = old.checkpoints()
    wider = AlertRules.from_mapping({"sentiment": {"window": {"size_minutes": 30}}}).sentiment
    parts = SentimentPartitions(wider)
    with caplog.at_level(logging.WARNING):
        parts.restore(0, checkpoint)
    assert "sentiment partition 0 starts with fresh windows" in caplog.text and "size_minutes" in caplog.text
    assert parts.checkpoints() == []  # nothing held: offset 0 is fed again, not skipped
    assert parts.feed(0, 0, ticker_events(scored_news("m-1", SHOCK_AT, "neutral"), wider)[0], wall=0.0) is not None


@pytest.fixture(params=["chdb", "server"])
def state_store(request: pytest.FixtureRequest):
    settings: VigilSettings = request.getfixturevalue(f"{request.param}_settings")
    with open_store(settings) as store:
        yield store


def test_checkpoints_round_trip_and_the_newest_per_partition_wins(state_store, stream):
    rules = SentimentRules()
    parts = _fresh(rules)
    feed_partition(parts, stream[:2000])
    (big,) = parts.checkpoints()
    states = AlertingStateStore(state_store, "t.by-ticker")
    assert states.load(0) is None
    states.save([Checkpoint(0, 10, '{"older": true}'), Checkpoint(3, 5, '{"other": 3}')])
    states.save([big])
    assert states.load(0) == big
    assert states.load(3) == Checkpoint(3, 5, '{"other": 3}')
    assert AlertingStateStore(state_store, "another.topic").load(0) is None

    restored = SentimentPartitions(rules)
    restored.restore(0, states.load(0))
    assert feed_partition(restored, stream[2000:], first_offset=2000) == feed_partition(parts, stream[2000:], first_offset=2000)
