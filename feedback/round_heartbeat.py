"""Liveness of retrain rounds: while a round runs, the process that owns it stores a heartbeat every
VIGIL_RETRAIN_HEARTBEAT_S in ClickHouse (``retrain_heartbeats``, migration 0011), which every worker
and `vigil retrain` read. A round whose last heartbeat is older than VIGIL_RETRAIN_STALE_S died with
its process (SIGKILL, the OOM killer, a lost node): the next trigger check records its end
(``retrain_job.round_history`` decides, from the events and heartbeats alone).

In the background job the round runs in a training process whose store calls the worker relays, so
its heartbeats stop when either of the two dies. The heartbeats are a table of their own, not model
events: a beat every few seconds of every round would flood the model-events topic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pydantic import AwareDatetime, BaseModel, ConfigDict

from feedback.contracts import Task

log = logging.getLogger(__name__)


class RoundHeartbeat(BaseModel):
    """The latest sign of life of one round."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round_id: str  # the round's retrain_started event id
    task: Task
    owner: str  # the process that runs it, as its log lines name it
    beat_at: AwareDatetime


@contextmanager
def heartbeating(beat: Callable[[], object], interval_s: float, task: str) -> Iterator[None]:
    """Call ``beat`` every ``interval_s`` in a thread while the block runs. A beat that fails
    (ClickHouse away for a moment) is logged and the next one tries again: the stale setting spans
    at least two beats."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                beat()
            except Exception as e:  # noqa: BLE001 - a missed beat only brings the stale time closer
                log.warning("%s: the round's heartbeat was not stored (%s); next try in %gs", task, e, interval_s)

    thread = threading.Thread(target=loop, name=f"retrain-heartbeat-{task}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        # Joined: in a training process a beat in flight shares the worker channel with the report.
        thread.join()
