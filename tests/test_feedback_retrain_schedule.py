"""The background retrain job: its schedule (pure), the job loop around it, and one real training
process relaying its ClickHouse calls to the parent's chdb store."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feedback.contracts import Correction, CorrectionSource, ModelEvent, ModelEventKind
from feedback.retrain_job import RoundHistory, check_trigger, epoch_ms, round_history
from feedback.retrain_runner import rounds_path, run_job, run_round, train_in_child
from feedback.retrain_schedule import FAILED, RetrainSchedule, RoundRecord
from feedback.store import open_feedback_store
from models.registry import ModelRegistry
from streams.clickhouse import open_store
from streams.settings import VigilSettings
from tests.fixtures.models import copy_registry


def _record(task: str, outcome: str, detail: str = "") -> RoundRecord:
    return RoundRecord(task, outcome, detail or f"{task}: {outcome}", started_at=0.0, seconds=1.5)


T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
STALE = timedelta(minutes=2)


def _event(kind: ModelEventKind, minute: int, *, ends: ModelEvent | None = None) -> ModelEvent:
    ids = {} if ends is None else {"event_id": ModelEvent.round_end_id(ends.event_id)}
    return ModelEvent(kind=kind, task="sentiment", model_version="v1", created_at=T0 + timedelta(minutes=minute), **ids)


def test_newness_counts_from_the_last_finished_round_and_an_open_round_runs_until_its_timeout():
    started = ModelEventKind.retrain_started
    s1, s2, s3, s4 = (_event(started, m) for m in (0, 10, 20, 30))
    events = [s1, _event(ModelEventKind.gate_refused, 5, ends=s1),
              s2, _event(ModelEventKind.retrain_failed, 15, ends=s2),
              s3,  # its process was SIGKILLed: no end
              s4, _event(ModelEventKind.promoted, 35),  # promoted by hand: no round's end
              _event(ModelEventKind.drift, 36)]
    at = T0 + timedelta(minutes=40)
    # s1 finished (refused counts: the gate judged its corrections); s2 failed and s3 died: neither counts
    assert round_history(events, [], at, timedelta(hours=1), STALE) == RoundHistory(T0, s4.created_at,
                                                                                   read_through=epoch_ms(T0))
    assert round_history(events, [], at, timedelta(minutes=10), STALE).running_since is None  # s4 timed out: dead
    # s4 ends promoted: it is the last finished round; a failure recorded for it afterwards (its
    # verdict's topic send failed, say) does not undo the verdict
    events += [_event(ModelEventKind.promoted, 45, ends=s4), _event(ModelEventKind.retrain_failed, 46, ends=s4)]
    s4_read = epoch_ms(s4.created_at)  # recorded without what it read: counted from its start
    assert round_history(events, [], at, timedelta(minutes=15), STALE) == RoundHistory(s4.created_at, None,
                                                                                      read_through=s4_read)
    # an open round is running until its timeout, whatever started after it (a forced round may have)
    assert round_history(events, [], at, timedelta(hours=1), STALE) == RoundHistory(s4.created_at, s3.created_at,
                                                                                   read_through=s4_read)
    assert round_history([], [], at, timedelta(hours=1), STALE) == RoundHistory(None, None)


def test_first_round_comes_one_interval_after_start_then_one_interval_after_each_round_ends():
    s = RetrainSchedule(["sentiment", "triage"], 60, now=1000)
    assert s.due(1000) == [] and s.wait_s(1000) == 60
    assert s.due(1060) == ["sentiment", "triage"]
    # a round that ran long (ended at 1300) is next due an interval after it ENDED: no pile-up
    s.finished(_record("sentiment", "promoted"), now=1300)
    assert s.due(1300) == ["triage"] and s.wait_s(1300) == 0
    s.finished(_record("triage", "skipped"), now=1301)
    assert s.due(1359) == [] and s.due(1360) == ["sentiment"] and s.wait_s(1330) == pytest.approx(30)
    assert s.rounds == 2 and s.last["sentiment"].outcome == "promoted"


def test_failures_back_off_exponentially_up_to_the_cap_and_a_success_resets():
    s = RetrainSchedule(["sentiment"], 10, now=0, max_backoff=8)
    nexts = []
    for now in (10, 100, 200, 300, 400):
        s.finished(_record("sentiment", FAILED), now=now)
        nexts.append(s.next_at("sentiment") - now)
    assert nexts == [20, 40, 80, 80, 80] and s.failures["sentiment"] == 5
    s.finished(_record("sentiment", "skipped"), now=500)
    assert s.next_at("sentiment") == 510 and s.failures["sentiment"] == 0


def test_outcomes_are_logged_by_how_much_they_need_a_look():
    s = RetrainSchedule(["sentiment"], 30, now=0)
    levels = {o: s.log_level(_record("sentiment", o)) for o in ("skipped", "promoted", "refused", FAILED)}
    assert levels == {"skipped": logging.DEBUG, "promoted": logging.INFO, "refused": logging.WARNING,
                      FAILED: logging.ERROR}
    failed = _record("sentiment", FAILED, "sentiment: failed: ClickHouse away")
    s.finished(failed, now=30)
    assert s.describe(failed) == ("retrain round sentiment: failed: ClickHouse away [1.5s]; "
                                  "failure 1 in a row, next try in 60s")


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="> 0 seconds"):
        RetrainSchedule(["sentiment"], 0, now=0)
    with pytest.raises(ValueError, match="at least one task"):
        RetrainSchedule([], 5, now=0)
    with pytest.raises(ValueError, match="not on this schedule"):
        RetrainSchedule(["sentiment"], 5, now=0).finished(_record("triage", "skipped"), now=1)


def test_the_job_survives_failing_rounds_records_every_round_and_stops_when_cancelled(tmp_path, caplog):
    settings = VigilSettings(data_dir=tmp_path, retrain_check_interval_s=0.02)
    outcomes = iter([FAILED, "promoted", "skipped", None])
    done = asyncio.Event()

    async def round_(settings_, store, task):
        outcome = next(outcomes)
        if outcome is None:  # the fourth round is still running when the worker stops
            done.set()
            await asyncio.Event().wait()
        return _record(task, outcome)

    async def main():
        job = asyncio.create_task(run_job(settings, store=None, tasks=("sentiment",), round_=round_))
        await asyncio.wait_for(done.wait(), 10)
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        return job

    with caplog.at_level(logging.DEBUG, logger="feedback.retrain_runner"):
        job = asyncio.run(main())
    assert job.cancelled()
    lines = [json.loads(line) for line in rounds_path(settings).read_text().splitlines()]
    assert [r["outcome"] for r in lines] == [FAILED, "promoted", "skipped"]
    assert all(r["task"] == "sentiment" and r["started_at"].endswith("+00:00") for r in lines)
    logged = [r for r in caplog.records if hasattr(r, "retrain_round")]
    assert [r.levelno for r in logged] == [logging.ERROR, logging.INFO, logging.DEBUG]
    assert "stopped after 3 round(s)" in caplog.text


@pytest.fixture
def chdb_loop(tmp_path, tiny_registry, monkeypatch):
    """A data dir with the tiny registry and a migrated chdb; the env a training process inherits."""
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    for k, v in {"VIGIL_DATA_DIR": str(data_dir), "VIGIL_DEVICE": "cpu", "VIGIL_CLICKHOUSE_URL": "",
                 "VIGIL_KAFKA_BROKERS": "", "VIGIL_CPU_THREADS": "1"}.items():
        monkeypatch.setenv(k, v)
    settings = VigilSettings()
    open_store(settings).close()
    store = open_feedback_store(settings)
    yield settings, store
    store.close()


def test_a_training_process_runs_the_retrain_round_on_the_parents_store(chdb_loop):
    """The child opens no ClickHouse (chdb is held here): its reads and writes come through us."""
    _, store = chdb_loop
    # no corrections: the child's own trigger check says skipped, after reading through us
    msg = asyncio.run(train_in_child(store, "sentiment"))
    assert msg == {"report": {"outcome": "skipped", "champion": "v1", "challenger": None,
                              "summary": "sentiment: skipped (champion was v1): no new corrections since the last retrain"}}
    assert store.fetch_model_events("sentiment") == []


def test_a_round_without_a_champion_fails_without_starting_a_process(chdb_loop):
    settings, store = chdb_loop
    registry = ModelRegistry(settings.registry_dir)
    shutil.rmtree(registry.root / "triage")
    record = asyncio.run(run_round(settings, store, "triage"))
    assert record.failed and "has no champion" in record.detail and record.champion is None
    assert not [e for e in store.fetch_model_events("triage") if e.kind is ModelEventKind.retrain_started]


def _training_processes() -> list[int]:
    """Our children running ``python -m feedback.retrain_runner``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if ppid == os.getpid() and b"feedback.retrain_runner" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


class StoreThatInterruptsTheRound:
    """The worker's real FeedbackStore, with one addition: right after the training process recorded
    its round's retrain_started, ``interrupt`` runs (it kills the process, or stops the worker)."""

    def __init__(self, store, interrupt) -> None:
        self._store, self._interrupt = store, interrupt

    def fetch_model_events(self, task):
        return self._store.fetch_model_events(task)

    def fetch_corrections(self, task):
        return self._store.fetch_corrections(task)

    def fetch_round_heartbeats(self, task):
        return self._store.fetch_round_heartbeats(task)

    def write_round_heartbeats(self, beats):
        return self._store.write_round_heartbeats(beats)

    def write_model_events(self, events):
        n = self._store.write_model_events(events)
        if any(e.kind is ModelEventKind.retrain_started for e in events):
            self._interrupt()
        return n


@pytest.mark.parametrize("how", ["process_killed", "worker_stopped"])
def test_a_round_whose_training_process_dies_is_recorded_failed_and_its_corrections_stay_new(
        chdb_loop, monkeypatch, how):
    monkeypatch.setenv("VIGIL_RETRAIN_MIN_CORRECTIONS", "5")
    monkeypatch.setenv("VIGIL_GATE_MIN_RECENT", "2")  # what 8 corrections hold out: the round trains
    settings, store = VigilSettings(), chdb_loop[1]
    at = datetime.now(UTC) - timedelta(minutes=5)
    store.write_corrections([
        Correction(correction_id=Correction.make_id("sentiment", f"m{i}", "ann"), task="sentiment",
                   message_id=f"m{i}", text=f"Acme shares move {i}", annotator="ann", human_label="neutral",
                   source=CorrectionSource.queue, created_at=at + timedelta(seconds=i))
        for i in range(8)
    ])

    async def main():
        loop = asyncio.get_running_loop()
        this = asyncio.current_task()

        def interrupt():
            if how == "process_killed":  # as the kernel's OOM killer would
                for pid in _training_processes():
                    os.kill(pid, signal.SIGKILL)
            else:  # the worker stops (faust cancels the job's task)
                loop.call_soon_threadsafe(this.cancel)

        return await run_round(settings, StoreThatInterruptsTheRound(store, interrupt), "sentiment")

    if how == "process_killed":
        record = asyncio.run(main())
        assert record.failed and "exited with -9 before reporting" in record.detail
    else:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(main())
    assert _training_processes() == []
    started, failed = store.fetch_model_events("sentiment")
    assert (started.kind, failed.kind) == (ModelEventKind.retrain_started, ModelEventKind.retrain_failed)
    assert failed.event_id == ModelEvent.round_end_id(started.event_id) and failed.model_version == "v1"
    assert ("exited with -9" if how == "process_killed" else "the worker stopped mid-round") in failed.detail
    # not a running round, and nothing it started with was used up: the next round trains on all eight
    start = check_trigger(settings, "sentiment", store)
    assert start.new_corrections == 8 and start.trigger.retrain, start.trigger.reason
