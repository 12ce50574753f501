"""Stall detection for a consumer (pure; the worker feeds it clock readings and lag per topic).

faust can stop delivering messages without an error (faust-streaming issues #175, #523). The
agents beat on every batch and while they wait on storage, so "no beat for a while, yet messages
waiting" means the consumer itself stopped, and restarting the worker is the cure.

A stall can hit one agent's partitions while the others go on, so each agent (or group of agents)
has its own watchdog, judged by the lag of its own topics: with one shared by all, support batches
beating every second hid a news agent that had stopped, its lag growing for ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stall:
    idle_s: float
    lag: int
    topics: tuple[str, ...] = ()

    def __str__(self) -> str:
        of = f" of {', '.join(self.topics)}" if self.topics else ""
        return (
            f"no batch{of} processed for {self.idle_s:.0f}s while {self.lag} messages wait on the "
            "assigned partitions; the consumer has stalled"
        )


class ProgressWatchdog:
    """The beats of the agents reading ``topics``, judged against those topics' lag."""

    def __init__(self, stall_after_s: float, started_at: float, topics: tuple[str, ...] = ()) -> None:
        self.topics = topics
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
            return Stall(idle_s=idle, lag=lag, topics=self.topics)
        return None


class Watchdogs:
    """A worker's watchdogs, one per agent or group of agents that share their beats."""

    def __init__(self, stall_after_s: float, started_at: float) -> None:
        self._stall_after_s, self._started_at = stall_after_s, started_at
        self._watching: list[ProgressWatchdog] = []

    def watch(self, *topics: str) -> ProgressWatchdog:
        """The watchdog for agents that read ``topics``: they beat it, and only its topics' lag counts against it."""
        watchdog = ProgressWatchdog(self._stall_after_s, self._started_at, topics)
        self._watching.append(watchdog)
        return watchdog

    def check(self, now: float, lags: Mapping[str, int]) -> list[Stall]:
        """The stalls among the watchdogs, given each topic's lag (a topic not in ``lags`` has none here)."""
        checked = [w.check(now, sum(lags.get(t, 0) for t in w.topics)) for w in self._watching]
        return [stall for stall in checked if stall is not None]
