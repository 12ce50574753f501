"""Keyed event-time hopping windows with allowed lateness, built from step-sized panes.

A window of ``size`` ends on every multiple of ``step`` (aligned to the Unix epoch) and covers
``[end - size, end)``. Events are added to the pane ``[k*step, (k+1)*step)`` they fall in; a window's
figures are the sum of its ``size/step`` panes, so each event is stored once however many windows
it belongs to.

Time is event time only. The watermark is the largest event time seen; a window closes (its figures
are emitted, once) when ``watermark - lateness >= end``; an event older than ``watermark - lateness``
is refused as too late. Those two rules together mean an accepted event always counts in every
window it belongs to, and a closed window never changes. Panes older than every open window are
evicted, so memory is bounded by the keys active within ``size + lateness``.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from streams.alerting.contracts import ContributingMessage, as_aware

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

Side = Literal["lowest", "highest"]  # of the scores: a window's most negative or most positive messages
_SIGN: dict[Side, float] = {"lowest": 1.0, "highest": -1.0}


def _us(t: datetime) -> int:
    return (as_aware(t) - _EPOCH) // _US


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class WindowSpecError(ValueError):
    """Window geometry that cannot work (e.g. a size that is not a whole number of steps)."""


@dataclass(frozen=True, slots=True)
class WindowSpec:
    size: timedelta
    step: timedelta
    lateness: timedelta = timedelta(0)
    top_k: int = 5  # contributors kept per window on each side (lowest and highest scores)

    def __post_init__(self) -> None:
        if self.step <= timedelta(0) or self.size <= timedelta(0):
            raise WindowSpecError(f"window size ({self.size}) and step ({self.step}) must be positive")
        if self.size % self.step:
            raise WindowSpecError(f"window size {self.size} must be a whole number of steps of {self.step}")
        if self.step % _US:
            raise WindowSpecError(f"window step {self.step} must be a whole number of microseconds")
        if self.lateness < timedelta(0):
            raise WindowSpecError(f"allowed lateness {self.lateness} must be >= 0")
        if self.top_k < 0:
            raise WindowSpecError(f"top_k {self.top_k} must be >= 0")

    @property
    def panes_per_window(self) -> int:
        return self.size // self.step


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """One key's figures over one closed window."""

    key: str
    start: datetime
    end: datetime
    volume: int
    counts: dict[str, int]
    mean_score: float
    top: dict[Side, tuple[ContributingMessage, ...]]  # the top_k lowest and highest scores, best first
    model_versions: tuple[str, ...]

    def share(self, label: str) -> float:
        return self.counts.get(label, 0) / self.volume if self.volume else 0.0


@dataclass(slots=True)
class _Pane:
    counts: dict[str, int] = field(default_factory=dict)
    volume: int = 0
    score_sum: float = 0.0
    top: dict[Side, list[tuple[float, str, str, str, float]]] = field(default_factory=lambda: {s: [] for s in _SIGN})
    versions: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Added:
    accepted: bool  # False: older than watermark - lateness; the caller records and drops it
    closed: list[WindowFigures]


class HoppingWindows:
    """Per-key hopping windows. Feed events in roughly event-time order; figures come out as
    windows close, ordered by window end, then key."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._step = spec.step // _US
        self._lateness = spec.lateness // _US
        self._n = spec.panes_per_window
        self._panes: dict[int, dict[str, _Pane]] = {}
        self._pane_ids: list[int] = []  # sorted keys of _panes
        self._watermark: int | None = None
        self._next_close: int | None = None  # index of the next window end to close

    @property
    def watermark(self) -> datetime | None:
        return None if self._watermark is None else _dt(self._watermark)

    @property
    def live_panes(self) -> int:
        return sum(len(keys) for keys in self._panes.values())

    def add(
        self,
        key: str,
        event_time: datetime,
        *,
        label: str,
        score: float,
        message_id: str,
        text: str,
        model_version: str = "",
    ) -> Added:
        t = _us(event_time)
        if self._watermark is not None and t < self._watermark - self._lateness:
            return Added(False, [])
        idx = t // self._step
        keys = self._panes.get(idx)
        if keys is None:
            keys = self._panes[idx] = {}
            bisect.insort(self._pane_ids, idx)
        pane = keys.get(key)
        if pane is None:
            pane = keys[key] = _Pane()
        pane.counts[label] = pane.counts.get(label, 0) + 1
        pane.volume += 1
        pane.score_sum += score
        pane.versions.add(model_version)
        for side, heap in pane.top.items():
            self._keep(heap, (-_SIGN[side] * score, message_id, label, text, score))
        return Added(True, self.advance(event_time))

    def _keep(self, heap: list[tuple[float, str, str, str, float]], entry: tuple[float, str, str, str, float]) -> None:
        # Min-heap on (rank, id): heap[0] is the kept message that goes first when a better one
        # arrives; equal scores are ordered by id so the result does not depend on timing.
        if len(heap) < self.spec.top_k:
            heapq.heappush(heap, entry)
        elif heap and entry > heap[0]:
            heapq.heapreplace(heap, entry)

    def advance(self, to: datetime) -> list[WindowFigures]:
        """Move the watermark to ``to`` (never backwards) and emit the windows that close.
        The worker calls this from a timer so windows close while a key's stream is quiet."""
        t = _us(to)
        if self._watermark is None or t > self._watermark:
            self._watermark = t
        return self._close()

    def _close(self) -> list[WindowFigures]:
        assert self._watermark is not None
        limit = (self._watermark - self._lateness) // self._step  # last window end that may close
        if self._next_close is None:
            if not self._pane_ids or self._pane_ids[0] + 1 > limit:
                return []
            self._next_close = self._pane_ids[0] + 1
        out: list[WindowFigures] = []
        e = self._next_close
        while e <= limit and self._pane_ids:
            lo = bisect.bisect_left(self._pane_ids, e - self._n)
            hi = bisect.bisect_left(self._pane_ids, e)
            if lo == hi:
                # Nothing in this window: skip to the first window holding a pane, but no further
                # than the closable ones (a late event may still land just after the watermark).
                nxt = self._pane_ids[lo] + 1 if lo < len(self._pane_ids) else limit + 1
                e = min(max(e + 1, nxt), limit + 1)
                continue
            out.extend(self._figures(e, self._pane_ids[lo:hi]))
            e += 1
            self._evict_before(e - self._n)
        self._next_close = max(e, limit + 1) if not self._pane_ids else e
        return out

    def _figures(self, end_idx: int, pane_ids: list[int]) -> list[WindowFigures]:
        per_key: dict[str, list[_Pane]] = {}
        for idx in pane_ids:
            for key, pane in self._panes[idx].items():
                per_key.setdefault(key, []).append(pane)
        end = _dt(end_idx * self._step)
        start = _dt((end_idx - self._n) * self._step)
        figures = []
        for key in sorted(per_key):
            panes = per_key[key]
            counts: dict[str, int] = {}
            volume = 0
            score_sum = 0.0
            versions: set[str] = set()
            for p in panes:
                for label, c in p.counts.items():
                    counts[label] = counts.get(label, 0) + c
                volume += p.volume
                score_sum += p.score_sum
                versions |= p.versions
            top = {
                side: tuple(
                    ContributingMessage(id=mid, text=text, label=label, score=score)
                    for _, mid, label, text, score in heapq.nlargest(self.spec.top_k, (e for p in panes for e in p.top[side]))
                )
                for side in _SIGN
            }
            figures.append(
                WindowFigures(
                    key=key,
                    start=start,
                    end=end,
                    volume=volume,
                    counts=dict(sorted(counts.items())),
                    mean_score=score_sum / volume,
                    top=top,
                    model_versions=tuple(sorted(v for v in versions if v)),
                )
            )
        return figures

    def to_state(self) -> dict:
        """Everything the windows hold, as JSON-able data (for checkpoints)."""
        return {
            "watermark": self._watermark,
            "next_close": self._next_close,
            "panes": [
                [idx, key, p.volume, p.score_sum, p.counts, {s: [list(e) for e in h] for s, h in p.top.items()}, sorted(p.versions)]
                for idx in self._pane_ids
                for key, p in self._panes[idx].items()
            ],
        }

    @classmethod
    def from_state(cls, spec: WindowSpec, state: dict, kept: Side) -> HoppingWindows:
        """The windows ``to_state`` described, under the same spec (the caller checks that).
        ``kept``: the one side that checkpoints from before both were kept hold."""
        windows = cls(spec)
        windows._watermark = state["watermark"]
        windows._next_close = state["next_close"]
        for idx, key, volume, score_sum, counts, top, versions in state["panes"]:
            keys = windows._panes.get(idx)
            if keys is None:
                keys = windows._panes[idx] = {}
                windows._pane_ids.append(idx)
            keys[key] = _Pane(dict(counts), volume, score_sum, _top_from_state(top, kept), set(versions))
        windows._pane_ids.sort()
        return windows

    def _evict_before(self, idx: int) -> None:
        cut = bisect.bisect_left(self._pane_ids, idx)
        for old in self._pane_ids[:cut]:
            del self._panes[old]
        del self._pane_ids[:cut]


def _top_from_state(saved: dict[Side, list] | list, kept: Side) -> dict[Side, list[tuple[float, str, str, str, float]]]:
    # A saved list keeps its order, so each heap stays a heap.
    if isinstance(saved, dict):
        return {side: [tuple(e) for e in saved[side]] for side in _SIGN}
    # An older checkpoint kept one side only. Its messages stand in for the other side's too (they
    # are the pane's, if not its best there) until the pane leaves the windows, minutes later.
    other: Side = "highest" if kept == "lowest" else "lowest"
    flipped = [(-rank, *rest) for rank, *rest in saved]
    heapq.heapify(flipped)
    return {kept: [tuple(e) for e in saved], other: flipped}
