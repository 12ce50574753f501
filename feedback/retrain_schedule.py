"""The background retrain job's clock and bookkeeping: when each task's next round is due, and what a
round's outcome means (how loudly to log it, when to try again). Pure: no processes, no ClickHouse;
feedback/retrain_runner.py runs the rounds.

Each task has its own next-due time. A round is due ``interval_s`` after the previous one ENDED, so
a round that takes longer than the interval (a real fine-tune can) never overlaps or piles up with
the next. A failing round is retried after ``interval_s * 2**k`` (k consecutive failures, at most
``max_backoff`` times the interval): a broken task (no champion, ClickHouse away) keeps being tried,
without flooding the log, and one success brings it back to the plain interval.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

FAILED = "failed"  # beside feedback.retrain_job.Outcome's skipped / refused / promoted


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One finished round of one task."""

    task: str
    outcome: str  # skipped | refused | promoted (feedback.retrain_job.Outcome) or failed
    detail: str  # the report's summary, or what went wrong
    started_at: float  # epoch seconds
    seconds: float
    champion: str | None = None  # the champion when the round started
    challenger: str | None = None

    @property
    def failed(self) -> bool:
        return self.outcome == FAILED

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat()}


# skipped is the usual answer (nothing new): quiet. A refusal is worth a look, a failure needs one.
_LEVELS = {"skipped": logging.DEBUG, "promoted": logging.INFO, "refused": logging.WARNING, FAILED: logging.ERROR}


class RetrainSchedule:
    def __init__(self, tasks: Iterable[str], interval_s: float, now: float, *, max_backoff: int = 8) -> None:
        if interval_s <= 0:
            raise ValueError(f"the retrain check interval must be > 0 seconds, not {interval_s}")
        if max_backoff < 1:
            raise ValueError(f"max_backoff must be >= 1, not {max_backoff}")
        self.tasks = tuple(tasks)
        if not self.tasks:
            raise ValueError("the retrain schedule needs at least one task")
        self.interval_s, self.max_backoff = interval_s, max_backoff
        # The first check comes one interval after start: a worker that restarts in a loop must not
        # start a training round on every start.
        self._next = dict.fromkeys(self.tasks, now + interval_s)
        self.failures = dict.fromkeys(self.tasks, 0)  # consecutive, per task
        self.last: dict[str, RoundRecord] = {}
        self.rounds = 0

    def due(self, now: float) -> list[str]:
        """Tasks whose round is due, in the order they were given."""
        return [t for t in self.tasks if self._next[t] <= now]

    def wait_s(self, now: float) -> float:
        """Seconds until the next task is due (0 when one is due now)."""
        return max(0.0, min(self._next.values()) - now)

    def finished(self, record: RoundRecord, now: float) -> None:
        """Book ``record`` (its round ended at ``now``) and set its task's next round."""
        task = record.task
        if task not in self._next:
            raise ValueError(f"{task!r} is not on this schedule ({', '.join(self.tasks)})")
        self.failures[task] = self.failures[task] + 1 if record.failed else 0
        self._next[task] = now + self.interval_s * self.backoff(task)
        self.last[task] = record
        self.rounds += 1

    def backoff(self, task: str) -> int:
        """The multiple of the interval until ``task``'s next round."""
        return min(2 ** self.failures[task], self.max_backoff)

    def next_at(self, task: str) -> float:
        return self._next[task]

    def log_level(self, record: RoundRecord) -> int:
        return _LEVELS.get(record.outcome, logging.ERROR)

    def describe(self, record: RoundRecord) -> str:
        """The log line for a finished round (after ``finished``: it says when the task is tried next)."""
        line = f"retrain round {record.detail} [{record.seconds:.1f}s]"
        if record.failed:
            line += (f"; failure {self.failures[record.task]} in a row, next try in "
                     f"{self.interval_s * self.backoff(record.task):g}s")
        return line
