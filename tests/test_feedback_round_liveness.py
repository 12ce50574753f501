"""Retrain rounds' liveness: the decision from events and heartbeats (pure), the trigger check on a
real store, and a worker SIGKILLed mid-round on clickhouse-server 18.16, shared with the next check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from feedback.contracts import Correction, CorrectionSource, ModelEvent, ModelEventKind
from feedback.retrain_job import RoundHistory, check_trigger, epoch_ms, round_history
from feedback.round_heartbeat import RoundHeartbeat, heartbeating
from feedback.store import FeedbackStore, open_feedback_store
from streams.clickhouse import open_store
from streams.settings import REPO_ROOT, VigilSettings
from tests.fixtures.models import copy_registry

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
TIMEOUT, STALE = timedelta(hours=2), timedelta(minutes=2)


def started(minute: int) -> ModelEvent:
    return ModelEvent(kind=ModelEventKind.retrain_started, task="sentiment", model_version="v1",
                      created_at=T0 + timedelta(minutes=minute))


def beat(round_: ModelEvent, at: datetime, owner: str = "node-a-4242-retrain") -> RoundHeartbeat:
    return RoundHeartbeat(round_id=round_.event_id, task="sentiment", owner=owner, beat_at=at)


def test_a_fresh_heartbeat_keeps_a_round_running_even_past_the_timeout():
    s = started(0)
    at = T0 + timedelta(hours=3)  # a long round: past the timeout, yet alive
    history = round_history([s], [beat(s, at - timedelta(seconds=30))], at, TIMEOUT, STALE)
    assert history == RoundHistory(None, s.created_at, at - timedelta(seconds=30), ())


def test_a_stale_heartbeat_ends_the_round_as_failed_with_what_happened_and_frees_the_task():
    finished, s = started(0), started(10)
    refused = ModelEvent(event_id=ModelEvent.round_end_id(finished.event_id), kind=ModelEventKind.gate_refused,
                         task="sentiment", model_version="v2", created_at=T0 + timedelta(minutes=5))
    last_beat = T0 + timedelta(minutes=20)
    at = last_beat + STALE
    events = [finished, refused, s]
    history = round_history(events, [beat(finished, T0), beat(s, last_beat)], at, TIMEOUT, STALE)
    assert (history.last_finished, history.running_since, history.running_beat) == (finished.created_at, None, None)
    (failed,) = history.dead
    assert failed.kind is ModelEventKind.retrain_failed and failed.event_id == ModelEvent.round_end_id(s.event_id)
    assert failed.created_at == at and failed.model_version == "v1"
    assert failed.figures == {"round_seconds": (at - s.created_at).total_seconds()}
    assert failed.detail == (
        f"the process running round {s.event_id} (node-a-4242-retrain) stopped heartbeating at 2026-01-05 09:20:00 "
        "UTC, 120s before this check (dead after 120s, VIGIL_RETRAIN_STALE_S): it was killed (OOM killer, SIGKILL, "
        "a lost node?); see its log. Its corrections stay new: the next round trains on them.")
    # once recorded, the round has its end: nothing more to record, and it still does not count as finished
    assert round_history([*events, failed], [beat(s, last_beat)], at, TIMEOUT, STALE) == RoundHistory(
        finished.created_at, None, read_through=epoch_ms(finished.created_at))
    # a second before the stale time it was alive
    alive = round_history(events, [beat(s, last_beat)], at - timedelta(seconds=1), TIMEOUT, STALE)
    assert (alive.running_since, alive.running_beat, alive.dead) == (s.created_at, last_beat, ())


def test_without_any_heartbeat_a_round_runs_until_the_timeout_and_ends_unrecorded():
    s = started(0)
    assert round_history([s], [], T0 + TIMEOUT - timedelta(seconds=1), TIMEOUT, STALE) == RoundHistory(None, s.created_at)
    assert round_history([s], [], T0 + TIMEOUT, TIMEOUT, STALE) == RoundHistory(None, None)
    # another round's heartbeat is not this round's
    other = started(1)
    assert round_history([s], [beat(other, T0)], T0 + timedelta(minutes=30), TIMEOUT, STALE) == RoundHistory(
        None, s.created_at)


def test_the_stale_time_must_span_two_heartbeats():
    assert VigilSettings(retrain_heartbeat_s=5, retrain_stale_s=10).retrain_stale_s == 10
    with pytest.raises(ValidationError, match="at least two heartbeats"):
        VigilSettings(retrain_heartbeat_s=30, retrain_stale_s=45)


def test_heartbeats_go_on_while_the_block_runs_and_a_failed_beat_does_not_stop_them():
    beats: list[float] = []

    def flaky() -> None:
        beats.append(time.monotonic())
        if len(beats) == 2:
            raise ConnectionError("ClickHouse away for a moment")

    with heartbeating(flaky, 0.05, "sentiment"):
        deadline = time.monotonic() + 10
        while len(beats) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    n = len(beats)
    time.sleep(0.2)
    assert n >= 4 and len(beats) == n  # it went on past the failure, and stopped with the block


# --- on a real store ---------------------------------------------------------------------------


def _corrections(n: int) -> list[Correction]:
    at = datetime.now(UTC) - timedelta(minutes=5)
    return [Correction(correction_id=Correction.make_id("sentiment", f"m{i}", "ann"), task="sentiment",
                       message_id=f"m{i}", text=f"Acme shares move {i}", annotator="ann", human_label="neutral",
                       source=CorrectionSource.queue, created_at=at + timedelta(seconds=i)) for i in range(n)]


@pytest.fixture
def chdb_round(tmp_path, tiny_registry):
    # 8 corrections hold out 2: the gate's minimum is lowered to that so the round trains
    settings = VigilSettings(data_dir=tmp_path, clickhouse_url=None, kafka_brokers=None,
                             retrain_min_corrections=5, gate_min_recent=2)
    copy_registry(tiny_registry, settings.registry_dir)
    open_store(settings).close()  # migrates
    store = open_feedback_store(settings)
    store.write_corrections(_corrections(8))
    yield settings, store
    store.close()


def test_the_trigger_check_waits_for_a_live_round_and_records_the_end_of_a_dead_one(chdb_round):
    settings, store = chdb_round
    now = datetime.now(UTC)
    s = ModelEvent(kind=ModelEventKind.retrain_started, task="sentiment", model_version="v1",
                   created_at=now - timedelta(minutes=10))
    store.write_model_events([s])
    store.write_round_heartbeats([beat(s, now - timedelta(seconds=20))])
    waiting = check_trigger(settings, "sentiment", store, now=lambda: now)
    assert not waiting.trigger.retrain
    assert "its last heartbeat was 20s ago and it counts as dead once that is 120s" in waiting.trigger.reason
    assert [e.event_id for e in store.fetch_model_events("sentiment")] == [s.event_id]

    later = now + timedelta(seconds=100)  # the beat is 120 s old
    start = check_trigger(settings, "sentiment", store, now=lambda: later)
    assert start.trigger.retrain and start.new_corrections == 8, start.trigger.reason
    _, failed = store.fetch_model_events("sentiment")
    assert failed.kind is ModelEventKind.retrain_failed and failed.event_id == ModelEvent.round_end_id(s.event_id)
    assert "(node-a-4242-retrain) stopped heartbeating" in failed.detail
    check_trigger(settings, "sentiment", store, now=lambda: later)
    assert len(store.fetch_model_events("sentiment")) == 2  # recorded once


# --- a worker SIGKILLed mid-round --------------------------------------------------------------

HEARTBEAT_S, STALE_S = 0.5, 5.0
WORKER = ("import asyncio; from feedback.retrain_runner import run_round; from feedback.store import "
          "open_feedback_store; from streams.settings import VigilSettings; s = VigilSettings(); "
          "asyncio.run(run_round(s, open_feedback_store(s), 'sentiment'))")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return found


def _wait_for(what: str, check: Callable[[], object], timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _round_with_a_beat(store: FeedbackStore, round_no: int) -> tuple[ModelEvent, RoundHeartbeat] | None:
    rounds = [e for e in store.fetch_model_events("sentiment") if e.kind is ModelEventKind.retrain_started]
    beats = {b.round_id: b for b in store.fetch_round_heartbeats("sentiment")}
    if len(rounds) < round_no or rounds[round_no - 1].event_id not in beats:
        return None
    return rounds[round_no - 1], beats[rounds[round_no - 1].event_id]


@pytest.fixture
def shared_round(tmp_path, tiny_registry, server_settings, monkeypatch):
    """A data dir with the tiny registry, a migrated database on clickhouse-server 18.16 (shared by
    every process, like workers on several nodes), eight new corrections, and the env the worker
    processes inherit."""
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    for k, v in {"VIGIL_DATA_DIR": str(data_dir), "VIGIL_DEVICE": "cpu", "VIGIL_KAFKA_BROKERS": "",
                 "VIGIL_CLICKHOUSE_URL": server_settings.clickhouse_url, "VIGIL_CPU_THREADS": "1",
                 "VIGIL_CLICKHOUSE_DATABASE": server_settings.clickhouse_database,
                 "VIGIL_RETRAIN_MIN_CORRECTIONS": "5", "VIGIL_GATE_MIN_RECENT": "2",  # what 8 hold out
                 "VIGIL_RETRAIN_HEARTBEAT_S": str(HEARTBEAT_S),
                 "VIGIL_RETRAIN_STALE_S": str(STALE_S), "VIGIL_WORKER_ID": ""}.items():
        monkeypatch.setenv(k, v)
    settings = VigilSettings()
    open_store(settings).close()
    store = open_feedback_store(settings)
    store.write_corrections(_corrections(8))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"process-{len(procs)}.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        return procs[-1]

    yield settings, store, spawn
    for p in procs:  # each process group: a training process its worker left behind included
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    store.close()


def test_a_sigkilled_worker_s_round_is_ended_by_the_next_check_which_starts_a_new_round(shared_round):
    settings, store, spawn = shared_round
    worker = spawn("-c", WORKER)
    first, first_beat = _wait_for("the round's start and first heartbeat", lambda: _round_with_a_beat(store, 1))
    (trainer,) = _children(worker.pid)
    os.kill(worker.pid, signal.SIGKILL)  # as the OOM killer would: nothing of the worker runs after this
    worker.wait()
    _wait_for("the training process to exit with its worker", lambda: not _alive(trainer), timeout_s=10)
    assert f"-{trainer}-retrain" in first_beat.owner  # the round's heartbeats came from the training process

    # Just after: the round's heartbeat is fresh, so it is running and blocks the next one.
    waiting = check_trigger(settings, "sentiment", store)
    assert not waiting.trigger.retrain and "its last heartbeat was" in waiting.trigger.reason, waiting.trigger.reason
    assert [e.kind for e in store.fetch_model_events("sentiment")] == [ModelEventKind.retrain_started]

    # Nobody beats for it any more; once the last beat is STALE_S old the next check ends it.
    (last,) = store.fetch_round_heartbeats("sentiment")
    time.sleep(max(0.0, (last.beat_at + timedelta(seconds=STALE_S) - datetime.now(UTC)).total_seconds()) + 0.5)
    assert store.fetch_round_heartbeats("sentiment") == [last]
    start = check_trigger(settings, "sentiment", store)
    assert start.trigger.retrain and start.new_corrections == 8, start.trigger.reason
    _, failed = store.fetch_model_events("sentiment")
    assert failed.kind is ModelEventKind.retrain_failed and failed.event_id == ModelEvent.round_end_id(first.event_id)
    assert f"running round {first.event_id} ({last.owner}) stopped heartbeating at" in failed.detail

    # `vigil retrain` on another machine now starts a new round, heartbeating in turn.
    spawn("-m", "streams.cli", "retrain", "--task", "sentiment")
    second, second_beat = _wait_for("the new round's start and heartbeat", lambda: _round_with_a_beat(store, 2))
    assert second.event_id != first.event_id and second.created_at >= failed.created_at  # whole seconds on 18.16
    assert second_beat.owner != last.owner
