"""Event time for timers: a quiet stream's clock moves on with the wall clock."""

from __future__ import annotations

from datetime import datetime, timedelta


class IdleClock:
    """Event time as the stream last showed it. Once the stream has been silent for ``idle_s`` of
    wall-clock time, event time is taken to move on with the wall clock, so a quiet stream still
    closes its windows and escalates its SLAs; during traffic only messages move it."""

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._latest: datetime | None = None
        self._seen_at = 0.0

    def observe(self, event_time: datetime, wall: float) -> None:
        if self._latest is None or event_time > self._latest:
            self._latest = event_time
        self._seen_at = wall

    def recall(self, event_time: datetime, seen_at: float) -> None:
        """Where a previous owner of the stream left the clock (``seen_at`` on this process's wall
        clock, possibly in the past); ignored once this clock has seen a message itself."""
        if self._latest is None:
            self._latest, self._seen_at = event_time, seen_at

    @property
    def latest(self) -> datetime | None:
        return self._latest

    def idle_now(self, wall: float) -> datetime | None:
        """The extrapolated event time, or None while the stream is not idle (or never spoke)."""
        idle = wall - self._seen_at
        if self._latest is None or idle < self._idle_s:
            return None
        return self._latest + timedelta(seconds=idle)
