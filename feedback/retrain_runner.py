"""The background retrain job (`vigil up` with VIGIL_RETRAIN_CHECK_INTERVAL_S > 0): the process
adapter around feedback/retrain_schedule.py.

It runs in the worker that owns ClickHouse for the UI (`vigil up` worker 0): embedded chdb admits one
process, so no other process could read the corrections. Every interval, per task, the worker asks
the trigger policy (``check_trigger``: three ClickHouse reads, in an I/O thread); only when it says
train does it start a training process, ``python -m feedback.retrain_runner TASK``, which runs
exactly the round `vigil retrain` runs (``run_retrain``). Training never runs in the worker: its event
loop only relays the round's ClickHouse calls (read the model events, heartbeats and corrections,
write the round's events and heartbeats) over the child's stdin/stdout, one JSON object a line, to
the worker's store. The child publishes the events to Kafka itself, writes the challenger to the
registry and promotes it; the workers hot swap on the registry pointer as after `vigil retrain`.

Each round's outcome is logged (a JSON ``retrain_round`` object with VIGIL_LOG_FORMAT=json) and
appended to ``<data_dir>/logs/retrain-rounds.jsonl``. A failing round (the child crashed, ClickHouse
away) is logged and retried later (see the backoff in retrain_schedule); the job carries on. When the
worker stops, the job's task is cancelled and a running training process is terminated; the child
also exits by itself when its worker disappears.

A round that fails in the child records its own retrain_failed event (run_retrain). When the child
dies after its retrain_started and before the round's end (killed, out of memory), or the worker
stops it, the worker records the retrain_failed event for it, so the corrections stay new and the
next round need not wait for VIGIL_RETRAIN_ROUND_TIMEOUT_H. Only a SIGKILLed worker leaves a round
open: the child's heartbeats (relayed by the worker like its other calls) stop with it, and the next
trigger check, here or in another worker, ends the round once they are VIGIL_RETRAIN_STALE_S old.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from feedback.contracts import Correction, ModelEvent, ModelEventKind
from feedback.retrain_job import (
    Outcome,
    RetrainReport,
    check_trigger,
    failed_event,
    run_retrain,
)
from feedback.retrain_schedule import FAILED, RetrainSchedule, RoundRecord
from feedback.round_heartbeat import RoundHeartbeat
from streams.settings import VigilSettings

log = logging.getLogger(__name__)

TASKS = ("sentiment", "triage")
_LINE_LIMIT = 16 * 1024 * 1024  # one message of the child's (events, its report): small
_STOP_WAIT_S = 5.0


def rounds_path(settings: VigilSettings) -> Path:
    return settings.data_dir / "logs" / "retrain-rounds.jsonl"


# --- the worker's side ---------------------------------------------------------------------------


def answer(store: Any, call: str, kwargs: dict[str, Any]) -> Any:
    """Run one of the child's store calls on the worker's FeedbackStore; JSON-ready result."""
    if call == "fetch_model_events":
        return [e.model_dump(mode="json") for e in store.fetch_model_events(kwargs["task"])]
    if call == "fetch_corrections":
        return [c.model_dump(mode="json") for c in store.fetch_corrections(kwargs["task"])]
    if call == "write_model_events":
        return store.write_model_events([ModelEvent.model_validate(e) for e in kwargs["events"]])
    if call == "fetch_round_heartbeats":
        return [b.model_dump(mode="json") for b in store.fetch_round_heartbeats(kwargs["task"])]
    if call == "write_round_heartbeats":
        return store.write_round_heartbeats([RoundHeartbeat.model_validate(b) for b in kwargs["beats"]])
    if call == "fetch_predicted_mix":
        return store.fetch_predicted_mix(kwargs["task"], kwargs["model_version"],
                                         before=datetime.fromisoformat(kwargs["before"]), limit=kwargs["limit"])
    raise ValueError(f"unknown store call {call!r}")


async def _relay(proc: asyncio.subprocess.Process, store: Any, written: list[ModelEvent]) -> dict[str, Any]:
    """Answer the child's calls until it reports; its last message, or a failure when it died first.
    The model events it wrote are added to ``written``."""
    loop = asyncio.get_running_loop()
    while line := await proc.stdout.readline():
        msg = json.loads(line)
        if "call" not in msg:
            return msg
        kwargs = msg.get("kwargs", {})
        if msg["call"] == "write_model_events":
            # Counted from the moment it is asked for: the worker may stop before the write returns. A
            # round's end recorded for a start that was never stored matches no round: harmless.
            written.extend(ModelEvent.model_validate(e) for e in kwargs["events"])
        try:
            reply = {"result": await loop.run_in_executor(None, answer, store, msg["call"], kwargs)}
        except Exception as e:  # noqa: BLE001 - the child raises it in the round, which then fails
            reply = {"error": f"{type(e).__name__}: {e}"}
        try:
            proc.stdin.write(json.dumps(reply).encode() + b"\n")
            await proc.stdin.drain()
        except ConnectionError:  # it died while we answered (killed, out of memory): its exit status says so
            break
    return {"failed": f"the training process exited with {await proc.wait()} before reporting (see the log above)"}


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), _STOP_WAIT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def train_in_child(store: Any, task: str, written: list[ModelEvent] | None = None) -> dict[str, Any]:
    """One round in a training process; its report (``{"report": ...}``) or ``{"failed": why}``.
    The model events the child wrote through us are added to ``written``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "feedback.retrain_runner", task,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_LINE_LIMIT,
    )
    try:
        msg = await _relay(proc, store, [] if written is None else written)
        await proc.wait()
        return msg
    finally:  # also when the worker stops mid-round (cancelled)
        await _stop(proc)


def end_open_round(settings: VigilSettings, store: Any, written: list[ModelEvent], reason: str) -> ModelEvent | None:
    """Record the retrain_failed end of the round the training process started (its retrain_started
    is in ``written``, the events it wrote) and did not end; None when it left no round open."""
    ended = {e.event_id for e in written}
    open_rounds = [e for e in written if e.kind is ModelEventKind.retrain_started
                   and ModelEvent.round_end_id(e.event_id) not in ended]
    if not open_rounds:
        return None
    from feedback.events import publish_model_events

    event = failed_event(open_rounds[-1], reason)
    store.write_model_events([event])
    publish_model_events(settings, [event])
    return event


async def run_round(settings: VigilSettings, store: Any, task: str) -> RoundRecord:
    """One round of ``task``: the trigger asked here, the training (if any) in a child process."""
    started, t0 = time.time(), time.perf_counter()
    loop = asyncio.get_running_loop()

    def done(outcome: str, detail: str, champion: str | None = None, challenger: str | None = None) -> RoundRecord:
        return RoundRecord(task, outcome, detail, started, time.perf_counter() - t0, champion, challenger)

    async def end_open(reason: str) -> None:
        try:  # shielded: the worker may be stopping (cancelled) and the end must still be written
            await asyncio.shield(loop.run_in_executor(None, end_open_round, settings, store, written, reason))
        except Exception as e:  # noqa: BLE001 - the round has failed already; this only adds to the log
            log.error("%s: the failed round was not recorded as retrain_failed: %s", task, e)

    champion = None
    written: list[ModelEvent] = []
    try:
        start = await loop.run_in_executor(None, check_trigger, settings, task, store)
        champion = start.champion_version
        if not start.trigger.retrain:
            report = RetrainReport(task, Outcome.skipped, start.trigger.reason, champion)
            return done(report.outcome.value, report.summary, champion)
        msg = await train_in_child(store, task, written)
    except asyncio.CancelledError:
        await end_open("the worker stopped mid-round and terminated its training process")
        raise
    except Exception as e:  # noqa: BLE001 - a failed round is logged and retried, never fatal
        await end_open(f"{type(e).__name__}: {e}")
        return done(FAILED, f"{task}: failed: {type(e).__name__}: {e}", champion)
    if "report" not in msg:
        await end_open(str(msg.get("failed", msg)))
        return done(FAILED, f"{task}: failed: {msg.get('failed', msg)}", champion)
    r = msg["report"]
    return done(r["outcome"], r["summary"], r["champion"], r["challenger"])


def append_record(path: Path, record: RoundRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record.as_json()) + "\n")


async def run_job(settings: VigilSettings, store: Any, *, tasks: tuple[str, ...] = TASKS, round_=run_round) -> None:
    """Rounds for ``tasks`` on the schedule, until cancelled."""
    schedule = RetrainSchedule(tasks, settings.retrain_check_interval_s, time.monotonic())
    loop = asyncio.get_running_loop()
    log.info("background retrain job: a round per task (%s) every %gs; rounds go to %s",
             ", ".join(tasks), settings.retrain_check_interval_s, rounds_path(settings))
    try:
        while True:
            await asyncio.sleep(schedule.wait_s(time.monotonic()))
            for task in schedule.due(time.monotonic()):
                record = await round_(settings, store, task)
                schedule.finished(record, time.monotonic())
                log.log(schedule.log_level(record), "%s", schedule.describe(record),
                        extra={"retrain_round": record.as_json()})
                try:
                    await loop.run_in_executor(None, append_record, rounds_path(settings), record)
                except OSError as e:
                    log.error("retrain round not recorded in %s: %s", rounds_path(settings), e)
    finally:
        log.info("background retrain job stopped after %d round(s)", schedule.rounds)


def attach_to_worker(app: Any, settings: VigilSettings, store: Any) -> None:
    """Run the job in a faust worker on its store (a ClickHouseStore); cancelled when it stops."""
    from feedback.store import FeedbackStore

    feedback = FeedbackStore(store)

    async def retrain_job() -> None:
        await run_job(settings, feedback)

    app.task(retrain_job)


# --- the training process's side -----------------------------------------------------------------


class RemoteFeedbackStore:
    """The FeedbackStore calls a round makes, answered by the worker over stdin/stdout."""

    def __init__(self, rx: IO[str], tx: IO[str]) -> None:
        self._rx, self._tx = rx, tx
        self._lock = threading.Lock()  # the heartbeat thread calls too: one call and its reply at a time

    def _call(self, call: str, **kwargs: Any) -> Any:
        with self._lock:
            self._tx.write(json.dumps({"call": call, "kwargs": kwargs}) + "\n")
            self._tx.flush()
            line = self._rx.readline()
        if not line:
            raise ConnectionError("the worker that owns ClickHouse went away mid-round")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the worker's ClickHouse {call} failed: {reply['error']}")
        return reply["result"]

    def fetch_model_events(self, task: str) -> list[ModelEvent]:
        return [ModelEvent.model_validate(e) for e in self._call("fetch_model_events", task=task)]

    def fetch_corrections(self, task: str) -> list[Correction]:
        return [Correction.model_validate(c) for c in self._call("fetch_corrections", task=task)]

    def write_model_events(self, events: list[ModelEvent]) -> int:
        return self._call("write_model_events", events=[e.model_dump(mode="json") for e in events])

    def fetch_round_heartbeats(self, task: str) -> list[RoundHeartbeat]:
        return [RoundHeartbeat.model_validate(b) for b in self._call("fetch_round_heartbeats", task=task)]

    def write_round_heartbeats(self, beats: list[RoundHeartbeat]) -> int:
        return self._call("write_round_heartbeats", beats=[b.model_dump(mode="json") for b in beats])

    def fetch_predicted_mix(self, task: str, model_version: str, *, before: datetime, limit: int) -> dict[str, int]:
        return self._call("fetch_predicted_mix", task=task, model_version=model_version, before=before.isoformat(),
                          limit=limit)


def _exit_with_parent() -> None:
    """An orphan must not train on (and promote) after its worker was killed."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    from streams.logs import configure_logging, default_worker_id, make_handler

    (task,) = argv if argv is not None else sys.argv[1:]
    # stdout is the channel to the worker: keep it for that, and send anything printed to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _exit_with_parent()
    settings = VigilSettings()
    wid = f"{settings.worker_id or default_worker_id()}-retrain"
    configure_logging(make_handler(settings, worker_id=wid, stream=sys.stderr), logging.INFO)
    try:
        report = run_retrain(settings, task, RemoteFeedbackStore(sys.stdin, channel), owner=wid)
    except Exception as e:  # reported to the worker, which logs the round as failed
        log.exception("retrain round for %s failed", task)
        msg: dict[str, Any] = {"failed": f"{type(e).__name__}: {e}"}
    else:
        msg = {"report": {"outcome": report.outcome.value, "summary": report.summary,
                          "champion": report.champion, "challenger": report.challenger}}
    channel.write(json.dumps(msg) + "\n")
    channel.flush()
    return 0 if "report" in msg else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.exit(main())
