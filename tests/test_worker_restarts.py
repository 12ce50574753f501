"""Restart back-off of supervised workers: quick deaths wait longer and longer, up to a cap; a long
run starts the count again."""

from streams.restarts import RestartBackoff


def test_quick_deaths_double_the_wait_up_to_the_cap():
    backoff = RestartBackoff(first_s=1, max_s=30, healthy_after_s=120)
    assert [backoff.delay(ran_for_s=5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_long_run_ends_the_streak():
    backoff = RestartBackoff(first_s=1, max_s=30, healthy_after_s=120)
    assert [backoff.delay(5), backoff.delay(5), backoff.delay(600), backoff.delay(5)] == [1, 2, 1, 2]
