"""Stall detection for a consumer (pure; the worker feeds it clock readings and lag).

faust can stop delivering messages without an error (faust-streaming issues #175, #523). The
agents beat on every batch and while they wait on storage, so "no beat for a while, yet messages
waiting" means the consumer itself stopped, and restarting the worker is the cure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stall:
    idle_s: float
    lag: int

    def __str__(self) -> str:
        return (
            f"no batch processed for {self.idle_s:.0f}s while {self.lag} messages wait on the "
            "assigned partitions; the consumer has stalled"
        )


class ProgressWatchdog:
    def __init__(self, stall_after_s: float, started_at: float) -> None:
        self._stall_after_s = stall_after_s
        self._last_beat = started_at
        self._last_lag = 0

    def beat(self, now: float) -> None:
        self._last_beat = now

    def check(self, now: float, lag: int) -> Stall | None:
        """A stall: lag is not shrinking and nothing has beaten for `stall_after_s`."""
        shrinking = lag < self._last_lag
        self._last_lag = lag
        idle = now - self._last_beat
        if lag > 0 and not shrinking and idle >= self._stall_after_s:
            return Stall(idle_s=idle, lag=lag)
        return None
