"""Stall detection for a consumer (pure; the worker feeds it clock readings and lag per topic).

faust can stop delivering messages without an error (faust-streaming issues #175, #523). The
agents beat on every batch and while they wait on storage, so "no beat for a while, yet messages
waiting" means the consumer itself stopped, and restarting the worker is the cure.

A stall can hit one agent's partitions while the others go on, so each topic has its own watchdog,
beaten by the agents that read it and judged by its lag alone: with one shared by all, support
batches beating every second hid a news agent that had stopped, its lag growing for ever (and with
one per group of agents, the group's other agents hid it the same way). Agents reading one topic
share its watchdog: the topic's lag is all there is to judge them by, and they starve together
(faust's delivery waits for the slowest reader's buffer).

While a dependency is down (ClickHouse), the agents waiting on it beat every watchdog: the others
queue behind them in faust's delivery, which is no stall either.
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
        self._by_topic: dict[str, ProgressWatchdog] = {}

    def watch(self, topic: str) -> ProgressWatchdog:
        """The watchdog of ``topic``'s readers: each beats it, and only the topic's lag counts against it."""
        if topic not in self._by_topic:
            self._by_topic[topic] = ProgressWatchdog(self._stall_after_s, self._started_at, (topic,))
        return self._by_topic[topic]

    @property
    def topics(self) -> list[str]:
        return list(self._by_topic)

    def excuse(self, now: float) -> None:
        """An agent waits on a dependency that is down: beat every watchdog."""
        for watchdog in self._by_topic.values():
            watchdog.beat(now)

    def check(self, now: float, lags: Mapping[str, int]) -> list[Stall]:
        """The stalls among the watchdogs, given each topic's lag (a topic not in ``lags`` has none here)."""
        checked = [w.check(now, lags.get(topic, 0)) for topic, w in self._by_topic.items()]
        return [stall for stall in checked if stall is not None]
