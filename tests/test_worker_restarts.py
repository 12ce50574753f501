"""Restarts of supervised workers: quick deaths wait longer and longer, up to a cap, and a long run
starts the count again; the supervisor repeats the reason a worker gave for not starting."""

import json

from streams.restarts import CANNOT_START, STOPPING, RestartBackoff, last_words
from streams.worker import WorkerProcess


def test_quick_deaths_double_the_wait_up_to_the_cap():
    backoff = RestartBackoff(first_s=1, max_s=30, healthy_after_s=120)
    assert [backoff.delay(ran_for_s=5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_streak_of_days_stays_at_the_cap():
    """After 1,025 quick deaths (17 hours at the cap) the doubling overflowed and the supervisor died."""
    backoff = RestartBackoff(first_s=1.0, max_s=60.0, healthy_after_s=120.0)
    assert {backoff.delay(ran_for_s=5) for _ in range(5000)} == {1, 2, 4, 8, 16, 32, 60}
    assert backoff.delay(ran_for_s=5) == 60


def test_a_long_run_ends_the_streak():
    backoff = RestartBackoff(first_s=1, max_s=30, healthy_after_s=120)
    assert [backoff.delay(5), backoff.delay(5), backoff.delay(600), backoff.delay(5)] == [1, 2, 1, 2]


def test_last_words_are_the_reason_the_worker_gave_in_text_or_json():
    text = (
        "2026-12-04 15:02:11,001 INFO streams.worker [w0] loading models\n"
        "2026-12-04 15:02:12,002 CRITICAL streams.worker [w0] worker cannot start: the sentiment model v3 "
        "cannot score a plain control text: RuntimeError('nan'). It is pinned by VIGIL_SENTIMENT_MODEL\n"
    )
    assert last_words(text) == ("the sentiment model v3 cannot score a plain control text: RuntimeError('nan'). "
                                "It is pinned by VIGIL_SENTIMENT_MODEL")
    doc = {"level": "CRITICAL", "message": f"{CANNOT_START}cannot reach ClickHouse at clickhouse://h:9000", "worker": "w0"}
    assert last_words(f'{{"level": "INFO", "message": "starting"}}\n{json.dumps(doc)}\n') == (
        "cannot reach ClickHouse at clickhouse://h:9000")
    assert last_words("2026-12-04 INFO streams.worker [w0] stopping\nSegmentation fault\n") is None
    stopped = f"... CRITICAL streams.batching [w0] {STOPPING}a batch of vigil.raw.news failed: QueryFailed('x')\n"
    assert last_words(text + stopped) == "a batch of vigil.raw.news failed: QueryFailed('x')"


def test_a_dead_worker_is_judged_by_its_own_run_not_the_runs_before(tmp_path):
    log_path = tmp_path / "worker-0.log"
    log_path.write_text(f"... CRITICAL streams.worker [w0] {CANNOT_START}an earlier run's reason\n")
    worker = WorkerProcess("127.0.0.1:9092", log_path, {}, log_offset=log_path.stat().st_size)
    with log_path.open("a") as log:
        log.write("... INFO streams.worker [w0] consuming\nKilled\n")
    assert worker.last_words() is None
    with log_path.open("a") as log:
        log.write(f"... CRITICAL streams.worker [w0] {CANNOT_START}this run's reason\n")
    assert worker.last_words() == "this run's reason"
