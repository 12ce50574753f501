"""The background retrain job: its schedule (pure), the job loop around it, and one real training
process relaying its ClickHouse calls to the parent's chdb store."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil

import pytest

from feedback.contracts import ModelEventKind
from feedback.retrain_runner import rounds_path, run_job, run_round, train_in_child
from feedback.retrain_schedule import FAILED, RetrainSchedule, RoundRecord
from feedback.store import open_feedback_store
from models.registry import ModelRegistry
from streams.clickhouse import open_store
from streams.settings import VigilSettings


def _record(task: str, outcome: str, detail: str = "") -> RoundRecord:
    return RoundRecord(task, outcome, detail or f"{task}: {outcome}", started_at=0.0, seconds=1.5)


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
    shutil.copytree(tiny_registry, data_dir / "models")
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
