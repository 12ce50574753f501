"""Per-key baselines learned online: exponentially weighted mean and variance.

A z-score is always taken against the baseline as it was BEFORE the current window is learned,
so a shock is measured against normal, not against itself. Until a key has learned ``warmup``
windows its z-scores are None: a new ticker has no normal yet. Which windows are learned is the
caller's choice; learning each of a run of overlapping windows counts the same history again, so
the alerting judges every hopping window but learns only those that tile history (``tiles_history``).

The statistic is river's ``EWMean``/``EWVar`` (Finch's incremental form, checked against river in
tests/test_alerting_baselines.py), kept as plain floats here: river's are Rust objects whose state
can be neither read nor set, and a checkpointed baseline must come back bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class BaselineSpec:
    fading_factor: float = 0.05  # weight of the newest window; ~1/fading_factor windows of memory
    warmup: int = 30  # windows seen before z-scores count
    min_std: float = 0.1  # floor on the std, so a perfectly steady key does not give infinite z

    def __post_init__(self) -> None:
        if not 0 < self.fading_factor <= 1:
            raise ValueError(f"fading_factor {self.fading_factor} must be in (0, 1]")
        if self.warmup < 1:
            raise ValueError(f"warmup {self.warmup} must be >= 1")
        if self.min_std <= 0:
            raise ValueError(f"min_std {self.min_std} must be > 0")


@dataclass(slots=True)
class Baseline:
    """One metric's exponentially weighted mean and variance."""

    spec: BaselineSpec
    n: int = 0
    _mean: float = field(default=0.0, repr=False)
    _var: float = field(default=0.0, repr=False)

    @property
    def ready(self) -> bool:
        return self.n >= self.spec.warmup

    @property
    def expected(self) -> float:
        return self._mean

    @property
    def variance(self) -> float:
        return self._var

    @property
    def std(self) -> float:
        return max(math.sqrt(max(self._var, 0.0)), self.spec.min_std)

    def z(self, x: float) -> float | None:
        """How many baseline standard deviations ``x`` is from normal; None during warm-up."""
        if not self.ready:
            return None
        return (x - self.expected) / self.std

    def update(self, x: float) -> None:
        self._learn(x, first=self.n == 0)
        self.n += 1

    def _learn(self, x: float, *, first: bool) -> None:
        if first:
            self._mean = x  # the first value is the mean, as in river
            return
        f = self.spec.fading_factor
        diff = x - self._mean
        incr = f * diff
        self._mean += incr
        self._var = (1 - f) * (self._var + diff * incr)

    def to_state(self) -> list[float]:
        return [self.n, self._mean, self._var]

    @classmethod
    def from_state(cls, spec: BaselineSpec, state: list[float]) -> Baseline:
        n, mean, var = state
        return cls(spec, int(n), mean, var)

    def update_many(self, x: float, times: int) -> None:
        """Learn ``x`` ``times`` times: the windows in which a key was silent (volume 0).
        Past ~ln(1e-6)/ln(1-f) repetitions the older history no longer counts, so that is the cap."""
        cap = math.ceil(math.log(1e-6) / math.log1p(-self.spec.fading_factor)) if self.spec.fading_factor < 1 else 1
        for i in range(min(times, cap)):
            self._learn(x, first=self.n == 0 and i == 0)
        self.n += times


@dataclass(frozen=True, slots=True)
class Scored:
    """A value against its key's baseline as it was before the value was learned."""

    z: float | None
    expected: float
    std: float
    n: int


class KeyedBaselines:
    """One ``Baseline`` per key (ticker, intent). With ``silent_value`` set, the window steps in
    which a key had no window at all are learned as that value (volume 0) before the next one."""

    def __init__(self, spec: BaselineSpec, step: timedelta | None = None, silent_value: float | None = None) -> None:
        if (step is None) != (silent_value is None):
            raise ValueError("give both step and silent_value, or neither")
        self.spec = spec
        self._step = step
        self._silent = silent_value
        self._by_key: dict[str, Baseline] = {}
        self._last_end: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> Baseline | None:
        return self._by_key.get(key)

    def to_state(self) -> dict:
        return {
            "baselines": {k: b.to_state() for k, b in self._by_key.items()},
            "last_end": {k: t.isoformat() for k, t in self._last_end.items()},
        }

    def restore(self, state: dict) -> None:
        """Take the baselines ``to_state`` described (same spec, step and silent value)."""
        self._by_key = {k: Baseline.from_state(self.spec, v) for k, v in state["baselines"].items()}
        self._last_end = {k: datetime.fromisoformat(t) for k, t in state["last_end"].items()}

    def score(self, key: str, value: float, end: datetime, forget_after: timedelta | None = None) -> Scored:
        """Score ``value`` (the window ending at ``end``) against the key's baseline as learned so
        far. A key with no window learned for longer than ``forget_after`` starts again from nothing."""
        base = self._catch_up(key, end, forget_after)
        if base is None:
            return Scored(None, 0.0, self.spec.min_std, 0)
        return Scored(base.z(value), base.expected, base.std, base.n)

    def learn(self, key: str, value: float, end: datetime, forget_after: timedelta | None = None) -> None:
        """Learn ``value`` as the key's window ending at ``end``."""
        base = self._catch_up(key, end, forget_after)
        if base is None:
            base = self._by_key[key] = Baseline(self.spec)
        base.update(value)
        self._last_end[key] = end

    def _catch_up(self, key: str, end: datetime, forget_after: timedelta | None) -> Baseline | None:
        """The key's baseline once the windows it had none in before ``end`` are learned as silent;
        None when it has none, or had none for longer than ``forget_after`` (then it is dropped)."""
        last = self._last_end.get(key)
        if last is None:
            return None
        if forget_after is not None and end - last > forget_after:
            self._drop(key)
            return None
        base = self._by_key[key]
        if self._step is not None and self._silent is not None:
            # the window ends last + k*step strictly before end: the key had no window there
            if (silent := -((last - end) // self._step) - 1) > 0:
                base.update_many(self._silent, silent)
                self._last_end[key] = last + silent * self._step
        return base

    def forget_silent(self, now: datetime, forget_after: timedelta) -> None:
        """Drop the keys ``score`` would start again from nothing at any window ending
        from ``now`` on. Bounds the state by the keys seen within ``forget_after``."""
        cut = now - forget_after
        for key in [k for k, last in self._last_end.items() if last < cut]:
            self._drop(key)

    def _drop(self, key: str) -> None:
        self._by_key.pop(key, None)
        self._last_end.pop(key, None)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_overlapping(state: dict, overlap: int, grid: timedelta) -> dict:
    """``KeyedBaselines`` state that learned every one of ``overlap`` overlapping windows, as if it
    had learned each span of history once, on window ends aligned to ``grid``: its count of windows
    is divided by the overlap (else two messages made a key warm), and its last window moves back to
    the grid. The mean and variance stay: they describe the same windows' values."""
    return {
        "baselines": {k: [int(n) // overlap, mean, var] for k, (n, mean, var) in state["baselines"].items()},
        "last_end": {
            k: (_EPOCH + (datetime.fromisoformat(t) - _EPOCH) // grid * grid).isoformat()
            for k, t in state["last_end"].items()
        },
    }


def tiles_history(end: datetime, size: timedelta) -> bool:
    """Whether the window of ``size`` ending at ``end`` is one of those that tile history (ending on
    a multiple of the size; windows are aligned to the epoch). A baseline that learns only these
    learns each message once; one that learned every hopping window learned a message once per
    window holding it, so sparse history looked warm and one shock widened normal several times."""
    return (end - _EPOCH) % size == timedelta(0)


def winsorized(x: float, scored: Scored, limit: float) -> float:
    """``x`` as a baseline learns it: at most ``limit`` (the rule's alert level) baseline stds from
    normal. A shock that fired must not widen normal so far that the same shock an hour later is
    missed, while a lasting change still moves the baseline, a step at a time."""
    if scored.z is None:
        return x
    return min(max(x, scored.expected - limit * scored.std), scored.expected + limit * scored.std)
