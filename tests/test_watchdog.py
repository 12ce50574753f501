from streams.watchdog import ProgressWatchdog


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
