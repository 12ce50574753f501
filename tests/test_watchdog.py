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
    watchdogs.watch("scored", "ticker-events")
    scoring.beat(20)
    assert watchdogs.check(20, {"news": 500}) == []  # news waits on a working agent; alerting has nothing waiting
    stalls = watchdogs.check(25, {"news": 500, "ticker-events": 7, "other": 99})
    assert [(s.topics, s.lag) for s in stalls] == [(("scored", "ticker-events"), 7)]
