from faust.types import TP

from streams.app import create_app, lag_per_topic
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.metrics import Metrics
from streams.watchdog import ProgressWatchdog, Watchdogs


def test_no_stall_while_batches_keep_coming():
    w = ProgressWatchdog(stall_after_s=10, started_at=0)
    for t in range(0, 100, 5):
        w.beat(t)
        assert w.check(t + 1, lag=500) is None


def test_idle_without_lag_is_not_a_stall():
    w = ProgressWatchdog(stall_after_s=10, started_at=0)
    assert w.check(1000, lag=0) is None


def test_stall_when_lag_waits_and_nothing_beats():
    w = ProgressWatchdog(stall_after_s=10, started_at=0)
    assert w.check(5, lag=100) is None  # not yet long enough
    stall = w.check(12, lag=120)
    assert stall is not None and stall.lag == 120 and stall.idle_s == 12
    assert "stalled" in str(stall)


def test_shrinking_lag_is_progress_even_without_beats():
    # e.g. another consumer commits for a partition we share during a rebalance
    w = ProgressWatchdog(stall_after_s=10, started_at=0)
    assert w.check(20, lag=300) is not None
    assert w.check(25, lag=200) is None
    assert w.check(30, lag=200) is not None


def test_one_agents_beats_do_not_hide_anothers_stall():
    """Support batches every second, news no longer consumed while 20 messages a second arrive: with
    one watchdog for every agent this ran 30 minutes (news lag 36,020) without a stall."""
    watchdogs = Watchdogs(stall_after_s=60, started_at=0)
    news, support = watchdogs.watch("news"), watchdogs.watch("support")
    stalls = []
    for t in range(0, 1801):
        support.beat(t)
        if t % 5 == 0 and (stalls := watchdogs.check(t, {"news": 20 * t, "support": 3})):
            break
    assert t == 60 and [s.topics for s in stalls] == [("news",)] and stalls[0].lag == 1200
    assert "no batch of news processed for 60s" in str(stalls[0])
    news.beat(61)
    assert watchdogs.check(65, {"news": 1300, "support": 3}) == []


def test_a_watchdog_counts_only_its_own_topics_lag():
    watchdogs = Watchdogs(stall_after_s=10, started_at=0)
    scoring = watchdogs.watch("news")
    watchdogs.watch("ticker-events")
    scoring.beat(20)
    assert watchdogs.check(20, {"news": 500}) == []  # news waits on a working agent; alerting has nothing waiting
    stalls = watchdogs.check(25, {"news": 500, "ticker-events": 7, "other": 99})
    assert [(s.topics, s.lag) for s in stalls] == [(("ticker-events",), 7)]


def test_readers_of_one_topic_share_its_watchdog_and_a_dependency_down_excuses_all():
    watchdogs = Watchdogs(stall_after_s=10, started_at=0)
    alerts, labels = watchdogs.watch("scored"), watchdogs.watch("scored")
    watchdogs.watch("acks")
    assert alerts is labels and watchdogs.topics == ["scored", "acks"]
    # ClickHouse down for 30 s: the agents waiting on it excuse the others, which queue behind them.
    for t in range(0, 31, 2):
        watchdogs.excuse(t)
        assert watchdogs.check(t, {"scored": 400, "acks": 3}) == []
    assert [s.topics for s in watchdogs.check(45, {"scored": 400, "acks": 3})] == [("scored",), ("acks",)]


def test_a_partition_never_committed_counts_from_its_start_not_from_0() -> None:
    """A partition the group never committed (a new group, offsets expired) whose oldest record is
    past 0 (retention) showed its whole end offset as lag, which never shrank: the watchdog took the
    idle acks topic for a stall after 60 s and restarted the worker, again after every restart."""
    lags = lag_per_topic({
        TP("acks", 0): (None, 1200, 1200),  # nothing left to read
        TP("news", 0): (None, 900, 1000),
        TP("news", 1): (40, None, 100),  # committed: its start is not asked for
        TP("scored", 0): (None, None, 50),  # never committed, its start could not be read: left out
    })  # fmt: skip
    assert lags == {"acks": 0, "news": 160}
    watchdogs = Watchdogs(stall_after_s=60, started_at=0)
    watchdogs.watch("acks")
    assert watchdogs.check(0, lags) == watchdogs.check(61, lags) == []


def test_every_topic_the_worker_reads_has_a_watchdog_of_its_own(tiny_scorers, chdb_settings) -> None:
    """The alerting agents (scored messages, ticker events, intent events, acks) had one watchdog,
    and so had the feedback agents: the scored messages' agent beating every batch hid a stopped
    ticker-events agent, its lag growing for ever."""
    s = chdb_settings
    scorers = {Kind.news: lambda: tiny_scorers["sentiment"], Kind.support: lambda: tiny_scorers["triage"]}
    watchdogs = Watchdogs(60, started_at=0)
    with open_store(s) as store:
        app = create_app(s, "127.0.0.1:9", scorers, store, Metrics(), watchdogs=watchdogs)
    read = {agent.channel.get_topic_name() for agent in app.agents.values()}
    assert sorted(watchdogs.topics) == sorted(read)
    ticker_events = watchdogs.watch(s.ticker_events_topic)
    watchdogs.watch(s.topic_scored).beat(100)
    stalls = watchdogs.check(100, {s.ticker_events_topic: 50, s.topic_scored: 10})
    assert [st.topics for st in stalls] == [ticker_events.topics]
