"""Sentiment state per ticker-events partition: a checkpoint restored mid-stream (after a crash or
a rebalance) carries on exactly as if nothing had stopped; redelivered and re-published events
count once; checkpoints round trip through both real ClickHouse engines; the faust adapter saves a
partition's state when it hands the partition over (a revoke, a stop), so the next owner fires no
alert again. (The intent-spike kind of
AlertPartitions is tested in test_alerting_triage.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta

import faust
import pytest
from faust.types import TP
from faust.types.tuples import Message

from streams.alerting.contracts import TickerEvent
from streams.alerting.keyed_stage import KeyedStage
from streams.alerting.partitions import Checkpoint, SentimentPartitions
from streams.alerting.rules import AlertRules, SentimentAlerter, SentimentRules, geometry, ticker_events
from streams.clickhouse import open_store
from streams.clickhouse.alerting_state import SEEN_COLUMNS, AlertingStateStore
from streams.metrics import Metrics
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


def test_the_stream_alerts_on_the_shock(stream):
    alerts = [json.loads(a) for a in feed_partition(_fresh(SentimentRules()), stream)]
    # once, and once more when the windows sliding over it turn it critical
    assert [(a["ticker"], a["rule"], a["severity"]) for a in alerts] == [
        ("VGLX", "sentiment_shock", "warning"), ("VGLX", "sentiment_shock", "critical")
    ]


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
    after.restore(0, after.resume(Checkpoint(0, checkpoint.offset, checkpoint.state)), checkpoint.new_seen)
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


def test_a_checkpoint_carries_only_the_ids_counted_since_the_last_saved_one(stream):
    parts = _fresh(SentimentRules())
    feed_partition(parts, stream[:2000])
    (first,) = parts.checkpoints()
    assert "seen" not in json.loads(first.state)  # the state no longer grows with the traffic
    assert len(first.new_seen) == len({(e.ticker, e.message_id) for e in stream[:2000]})
    parts.saved([first])
    feed_partition(parts, stream[2000:2100], first_offset=2000)
    (second,) = parts.checkpoints()
    assert [(s.key, s.message_id) for s in second.new_seen] == [(e.ticker, e.message_id) for e in stream[2000:2100]]


def test_a_save_confirmed_late_keeps_the_ids_counted_after_it(stream):
    parts = _fresh(SentimentRules())
    feed_partition(parts, stream[:100])
    (older,) = parts.checkpoints()
    feed_partition(parts, stream[100:150], first_offset=100)
    (newer,) = parts.checkpoints()
    feed_partition(parts, stream[150:160], first_offset=150)
    parts.saved([older])  # the ids of 100-159 are still to be saved
    assert [s.message_id for s in parts.checkpoints()[0].new_seen] == [e.message_id for e in stream[100:160]]
    parts.saved([newer])
    parts.saved([older])  # confirmed once more, after the newer one: nothing more goes
    assert [s.message_id for s in parts.checkpoints()[0].new_seen] == [e.message_id for e in stream[150:160]]
    parts.revoke([0])
    parts.restore(0, None)
    feed_partition(parts, stream[:5])
    parts.saved([newer])  # the old owner's save must not take the new owner's ids
    assert [s.message_id for s in parts.checkpoints()[0].new_seen] == [e.message_id for e in stream[:5]]


def _restored(rules: SentimentRules, saves: list[Checkpoint]) -> SentimentPartitions:
    """A partition restored from the last of ``saves`` with every id they stored, as a worker reads them."""
    parts = SentimentPartitions(rules)
    last = saves[-1]
    parts.restore(0, parts.resume(Checkpoint(0, last.offset, last.state)), [s for c in saves for s in c.new_seen])
    return parts


def test_a_message_republished_after_a_restore_counts_once_whichever_checkpoint_counted_it():
    rules = SentimentRules()
    events = [ticker_events(scored_news(f"m-{i}", SHOCK_AT + i * MIN / 10, "negative"), rules)[0] for i in range(6)]
    parts = _fresh(rules)
    saves = []
    for offset, e in enumerate(events):
        parts.feed(0, offset, e, wall=0.0)
        if offset in (1, 4, 5):
            saves += parts.checkpoints()
            parts.saved(saves[-1:])
    assert [len(c.new_seen) for c in saves] == [2, 3, 1]
    restored = _restored(rules, saves)
    assert all(restored.feed(0, 10 + i, e, wall=0.0) is None for i, e in enumerate(events))
    # Without the ids of the earlier checkpoints, the first messages would count twice.
    partial = _restored(rules, saves[-1:])
    assert partial.feed(0, 10, events[0], wall=0.0) is not None


def test_a_checkpoint_from_before_the_ids_were_stored_apart_still_restores_them():
    rules = SentimentRules()
    parts = _fresh(rules)
    e = ticker_events(scored_news("m-1", SHOCK_AT, "negative"), rules)[0]
    parts.feed(0, 0, e, wall=0.0)
    (checkpoint,) = parts.checkpoints()
    state = json.loads(checkpoint.state) | {"seen": [[e.ticker, e.message_id, e.event_time.isoformat()]]}
    restored = SentimentPartitions(rules)
    restored.restore(0, restored.resume(Checkpoint(0, checkpoint.offset, json.dumps(state))))
    assert restored.feed(0, 7, e, wall=0.0) is None


def test_ids_out_of_the_windows_reach_are_forgotten_and_not_asked_for():
    rules = SentimentRules()  # reach: 15-minute windows + 2 minutes of lateness
    parts = _fresh(rules)
    old, new = (ticker_events(scored_news(f"m-{i}", SHOCK_AT + i * 20 * MIN, "neutral"), rules)[0] for i in range(2))
    parts.feed(0, 0, old, wall=0.0)
    parts.feed(0, 1, new, wall=0.0)
    (checkpoint,) = parts.checkpoints()
    assert parts.seen_since(parts.resume(checkpoint)) == new.event_time - 17 * MIN
    restored = SentimentPartitions(rules)
    restored.restore(0, restored.resume(Checkpoint(0, 1, checkpoint.state)), checkpoint.new_seen)
    assert restored.feed(0, 2, new, wall=0.0) is None  # still within reach: a copy is caught
    fed = restored.feed(0, 3, old, wall=0.0)  # out of reach: refused as late, not remembered
    assert fed is not None and fed.too_late


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


def test_a_partition_restored_after_it_went_quiet_still_closes_its_windows():
    """Restarted right after the last checkpoint of a partition that then stayed quiet, the new
    owner's clock started empty: the shock's window never closed and its alert never came."""
    rules = SentimentRules()
    shock_at = BUNDLED_START + timedelta(hours=24)
    shock = [scored_news(f"shock-{i}", shock_at + timedelta(seconds=5 + 10 * i), "negative") for i in range(5)]
    events = [e for m in steady_ticker(BUNDLED_START, hours=24) + shock for e in ticker_events(m, rules)]
    before = SentimentPartitions(rules)
    before.restore(0, None)
    assert not [a for off, e in enumerate(events) if (fed := before.feed(0, off, e, wall=0.0)) for a in fed.alerts]
    (checkpoint,) = before.checkpoints()
    idle = rules.window.idle_after_s

    after = SentimentPartitions(rules)
    after.restore(0, after.resume(checkpoint), restored_at=100.0)
    assert after.tick(100.0 + idle - 1) == []  # not quiet for long enough yet
    assert [(a.rule, a.ticker) for a in after.tick(100.0 + idle + 20 * 60)] == [("sentiment_shock", events[-1].ticker)]


def test_a_checkpoint_of_other_window_geometry_is_not_used(caplog):
    rules = SentimentRules()
    old = _fresh(rules)
    old.feed(0, 0, ticker_events(scored_news("m-1", SHOCK_AT, "neutral"), rules)[0], wall=0.0)
    (checkpoint,) = old.checkpoints()
    wider = AlertRules.from_mapping({"sentiment": {"window": {"size_minutes": 30}}}).sentiment
    parts = SentimentPartitions(wider)
    with caplog.at_level(logging.WARNING):
        parts.restore(0, parts.resume(checkpoint))
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
    parts.saved([big])
    feed_partition(parts, stream[2000:2300], first_offset=2000)
    (later,) = parts.checkpoints()
    states = AlertingStateStore(state_store, "t.by-ticker")
    assert states.load(0) is None
    states.save([Checkpoint(0, 10, '{"older": true}'), Checkpoint(3, 5, '{"other": 3}')])
    states.save([big])
    assert states.load(0) == Checkpoint(0, big.offset, big.state)
    assert states.load(3) == Checkpoint(3, 5, '{"other": 3}')
    assert AlertingStateStore(state_store, "another.topic").load(0) is None
    assert set(states.load_seen(0, big.offset, None)) == set(big.new_seen)

    # The later checkpoint's ids are written, and the worker dies before the checkpoint is: they
    # belong to no checkpoint a restore can read yet.
    ids_only = AlertingStateStore(state_store, "t.by-ticker")
    ids_only._store.backend.insert(  # what save() writes first
        f"{state_store.database}.alerting_seen", SEEN_COLUMNS,
        [("t.by-ticker", 0, later.offset, s.key, s.message_id, s.event_time, s.event_time) for s in later.new_seen],
    )
    assert set(states.load_seen(0, big.offset, None)) == set(big.new_seen)
    states.save([later])
    assert set(states.load_seen(0, later.offset, None)) == {*big.new_seen, *later.new_seen}
    since = parts.seen_since(parts.resume(later))
    assert since is not None
    assert set(states.load_seen(0, later.offset, since)) == {
        s for s in (*big.new_seen, *later.new_seen) if s.event_time >= since.replace(microsecond=0)
    } != {*big.new_seen, *later.new_seen}

    def restored() -> SentimentPartitions:
        loaded = states.load(0)
        assert loaded is not None
        out = SentimentPartitions(rules)
        resume = out.resume(loaded)
        out.restore(0, resume, states.load_seen(0, loaded.offset, out.seen_since(resume)))
        return out

    expected = feed_partition(parts, stream[2300:], first_offset=2300)
    assert feed_partition(restored(), stream[2300:], first_offset=2300) == expected
    # A message the restored state counted that comes again at a new offset is caught by its id,
    # or refused as late once out of the windows' reach: it never counts twice.
    again = restored()
    outcomes = [again.feed(0, 10**6 + i, e, wall=0.0) for i, e in enumerate(stream[:2300])]
    assert all(f is None or f.too_late for f in outcomes)
    assert sum(f is None for f in outcomes) == sum(e.event_time >= since for e in stream[:2300]) > 20


# What the code that learned every hopping window checkpointed after two positive messages about
# VGLX, at 08:00:10 and 09:05:10 (15 windows learned for each, the last one ending 09:20).
_OVERLAPPING = {
    "windows": {"watermark": 1736155800000000, "next_close": 28935929, "panes": []},
    "sentiment": {"baselines": {"VGLX": [30, 0.3711606244596849, 0.00010037319373142083]},
                  "last_end": {"VGLX": "2025-01-06T09:20:00+00:00"}},
    "volume": {"baselines": {"VGLX": [80, 0.5303953711872019, 0.2490761214103921]},
               "last_end": {"VGLX": "2025-01-06T09:20:00+00:00"}},
    "last_fired": [],
}  # fmt: skip


def test_a_checkpoint_that_learned_every_hopping_window_restores_the_history_it_held():
    """That code counted the two messages as 30 windows of history, so its next five neutral ones
    were a sentiment shock. Restored, they are two windows, ending on the window size's grid."""
    rules = SentimentRules()
    alerter = SentimentAlerter.from_state(rules, _OVERLAPPING | {"geometry": geometry(rules)})
    sentiment, volume = alerter.baselines("VGLX")
    assert sentiment is not None and volume is not None
    assert (sentiment.n, volume.n, sentiment.expected) == (2, 5, 0.3711606244596849)
    assert alerter.to_state()["sentiment"]["last_end"] == {"VGLX": "2025-01-06T09:15:00+00:00"}
    neutral = [scored_news(f"n{i}", BUNDLED_START + timedelta(hours=2, seconds=10 + 5 * i), "neutral") for i in range(5)]
    assert [a for m in neutral for a in alerter.feed(m).alerts] + alerter.advance(BUNDLED_START + timedelta(hours=3)) == []
    assert alerter.baselines("VGLX")[0].n == 3


# --- the faust adapter (KeyedStage) ----------------------------------------------------------------

TOPIC = "t.by-ticker"
TP0 = TP(TOPIC, 0)


def _records(app: faust.App, events: list[TickerEvent], first_offset: int = 0) -> list[faust.Event]:
    """The ticker-events topic's records of partition 0, as faust hands them to the stage."""
    return [
        faust.Event(app, None, None, None,
                    Message(TOPIC, 0, offset, 0.0, 0, None, e.ticker.encode(), e.model_dump_json().encode(), None))
        for offset, e in enumerate(events, start=first_offset)
    ]


async def _at_once(what: str, fn, *args):  # the worker's durably, minus its retries
    return fn(*args)


def _stage(store, emitted: list, *, emit=None, durably=_at_once, handover_save_s: float = 5.0) -> KeyedStage:
    async def collect(alerts) -> None:
        emitted.extend(a.model_dump_json() for a in alerts)

    # The interval is never reached: only a hand-over saves a checkpoint here.
    return KeyedStage(SentimentPartitions(SentimentRules()), AlertingStateStore(store, TOPIC), topic=TOPIC,
                      event_type=TickerEvent, emit=emit or collect, durably=durably, checkpoint_interval_s=3600,
                      handover_save_s=handover_save_s, metrics=Metrics())


@pytest.fixture
def faust_app(tmp_path):
    return faust.App("t-stage", broker="kafka://127.0.0.1:1", web_enabled=False, datadir=str(tmp_path / "faust"))


@pytest.mark.parametrize("handover", ["revoked", "stopping"])
def test_a_stage_handing_its_partition_over_saves_it_so_the_next_owner_fires_no_alert_again(
    stream, faust_app, tmp_path, handover
):
    """The partition was revoked (or the worker stopped) after an alert fired and before the next
    checkpoint: the state was dropped, and the next owner, from the last checkpoint (here none),
    judged the events again and fired the same alert again (same id: counted, sent to the webhook)."""
    probe = _fresh(SentimentRules())
    cut = 1 + next(i for i, e in enumerate(stream) if (f := probe.feed(0, i, e, wall=0.0)) and f.alerts)
    expected = feed_partition(_fresh(SentimentRules()), stream)
    records = faust_app.topic(TOPIC).stream()
    first, then = _records(faust_app, stream[:cut]), _records(faust_app, stream[cut:], cut)

    async def go() -> tuple[list[str], list[str]]:
        with open_store(VigilSettings(data_dir=tmp_path, clickhouse_url=None)) as store:
            old_alerts, new_alerts = [], []
            old = _stage(store, old_alerts)
            await old.handle(records, first, {TP0}, wall=0.0)
            await old.hand_over(1.0, {TP0} if handover == "revoked" else ())
            # A revoked partition's events are not the old owner's to commit; a stopping worker's are.
            assert all(e.message.acked is (handover == "stopping") for e in first)
            new = _stage(store, new_alerts)
            await new.handle(records, [e for e in first if not e.message.acked] + then, {TP0}, wall=2.0)
            return old_alerts, new_alerts

    old_alerts, new_alerts = asyncio.run(go())
    assert old_alerts and new_alerts
    assert old_alerts + new_alerts == expected


def test_a_hand_over_saves_nothing_while_a_batch_s_alerts_are_being_emitted(stream, faust_app, tmp_path, caplog):
    """A checkpoint saved then holds events whose alerts are not stored yet: were the worker to die
    before they are, the next owner would skip those events and the alerts would be lost."""
    emitting, release = asyncio.Event(), asyncio.Event()

    async def slow_emit(alerts) -> None:
        emitting.set()
        await release.wait()

    async def go() -> tuple[object, bool]:
        with open_store(VigilSettings(data_dir=tmp_path, clickhouse_url=None)) as store:
            stage = _stage(store, [], emit=slow_emit, handover_save_s=0.2)
            batch = asyncio.create_task(
                stage.handle(faust_app.topic(TOPIC).stream(), _records(faust_app, stream[:500]), {TP0}, wall=0.0)
            )
            await emitting.wait()
            await stage.hand_over(1.0, {TP0})
            release.set()
            await batch
            return AlertingStateStore(store, TOPIC).load(0), stage._parts.owned(0)

    with caplog.at_level(logging.WARNING):
        saved, still_owned = asyncio.run(go())
    assert saved is None and not still_owned
    assert "sentiment state not saved within 0.2s" in caplog.text


def test_a_batch_whose_alerts_were_not_emitted_is_neither_saved_nor_acked(stream, faust_app, tmp_path):
    """The alerts' publish or write failed for good: the worker stops, and its hand-over saved the
    state holding their events and acked them, so the next owner skipped them and the alerts were
    lost. (Before the worker stopped, the next tick's checkpoint did the same.)"""
    probe = _fresh(SentimentRules())
    cut = 1 + next(i for i, e in enumerate(stream) if (f := probe.feed(0, i, e, wall=0.0)) and f.alerts)

    refusals = [RuntimeError("ClickHouse refused the alerts")]

    async def refuse(alerts) -> None:  # once: the tick's emit goes through
        if alerts and refusals:
            raise refusals.pop()

    async def go() -> tuple[object, list[bool]]:
        with open_store(VigilSettings(data_dir=tmp_path, clickhouse_url=None)) as store:
            stage = _stage(store, [], emit=refuse)
            events = _records(faust_app, stream[:cut])
            with pytest.raises(RuntimeError, match="refused the alerts"):
                await stage.handle(faust_app.topic(TOPIC).stream(), events, {TP0}, wall=0.0)
            await stage.tick(7200.0)  # past the checkpoint interval
            await stage.hand_over(7201.0)  # the worker stops
            return AlertingStateStore(store, TOPIC).load(0), [e.message.acked for e in events]

    saved, acked = asyncio.run(go())
    assert saved is None and not any(acked)


def test_a_batch_that_fails_before_its_alerts_are_emitted_is_neither_saved_nor_acked(stream, faust_app, tmp_path):
    """Partition 0's events were fed, then partition 1's checkpoint could not be read: the batch
    failed before its emit, and the hand-over as the worker stopped saved and acked partition 0's
    events, whose alerts nobody had published."""
    probe = _fresh(SentimentRules())
    cut = 1 + next(i for i, e in enumerate(stream) if (f := probe.feed(0, i, e, wall=0.0)) and f.alerts)

    async def durably(what: str, fn, partition, *args):
        if partition == 1:
            raise RuntimeError("ClickHouse refused the read")
        return fn(partition, *args)

    async def go() -> tuple[object, list[bool]]:
        with open_store(VigilSettings(data_dir=tmp_path, clickhouse_url=None)) as store:
            emitted: list[str] = []
            stage = _stage(store, emitted, durably=durably)
            events = _records(faust_app, stream[:cut])
            other = faust.Event(faust_app, None, None, None, Message(
                TOPIC, 1, 0, 0.0, 0, None, b"X", stream[0].model_dump_json().encode(), None))
            with pytest.raises(RuntimeError, match="refused the read"):
                await stage.handle(faust_app.topic(TOPIC).stream(), [*events, other], {TP0, TP(TOPIC, 1)}, wall=0.0)
            await stage.hand_over(1.0)  # the worker stops
            assert emitted == []
            return AlertingStateStore(store, TOPIC).load(0), [e.message.acked for e in events]

    saved, acked = asyncio.run(go())
    assert saved is None and not any(acked)


def test_a_hand_over_whose_save_fails_still_lets_the_partition_go(stream, faust_app, tmp_path, caplog):
    """An error escaping the revoke handler crashes the worker mid-rebalance."""
    store = open_store(VigilSettings(data_dir=tmp_path, clickhouse_url=None))
    stage = _stage(store, [])

    async def go() -> None:
        await stage.handle(faust_app.topic(TOPIC).stream(), _records(faust_app, stream[:50]), {TP0}, wall=0.0)
        store.close()  # ClickHouse refuses the save
        await stage.hand_over(1.0, {TP0})

    with caplog.at_level(logging.WARNING):
        asyncio.run(go())
    assert not stage._parts.owned(0)
    assert "sentiment state not saved before handing it over" in caplog.text
