"""When to retrain: enough new corrections, or enough time with some, or drift. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from streams.settings import VigilSettings


@dataclass(frozen=True, slots=True)
class TriggerPolicy:
    min_corrections: int  # N: this many new corrections is enough on its own
    interval: timedelta  # T: after this long since the last retrain...
    min_after_interval: int  # M: ...this many new corrections are enough
    on_drift: bool

    @classmethod
    def from_settings(cls, s: VigilSettings) -> TriggerPolicy:
        return cls(s.retrain_min_corrections, timedelta(hours=s.retrain_interval_h),
                   s.retrain_min_corrections_after_interval, s.retrain_on_drift)


@dataclass(frozen=True, slots=True)
class TriggerDecision:
    retrain: bool
    reason: str
    new_corrections: int


def decide(
    policy: TriggerPolicy,
    *,
    new_corrections: int,
    last_retrain: datetime | None,
    now: datetime,
    drift_events: int = 0,
    force: bool = False,
) -> TriggerDecision:
    """Whether to retrain now. ``last_retrain`` None means never: the interval counts as elapsed.

    A retrain needs at least one new correction whatever the trigger: with none there is nothing
    to learn, and drift alone would only retrain on the old data.
    """
    n = new_corrections
    if n == 0:
        return TriggerDecision(False, "no new corrections since the last retrain", n)
    if force:
        return TriggerDecision(True, f"forced, with {n} new corrections", n)
    if n >= policy.min_corrections:
        return TriggerDecision(True, f"{n} new corrections >= {policy.min_corrections}", n)
    if policy.on_drift and drift_events:
        return TriggerDecision(True, f"{drift_events} drift event(s) since the last retrain, {n} new corrections", n)
    elapsed = None if last_retrain is None else now - last_retrain
    if elapsed is None or elapsed >= policy.interval:
        since = "no retrain yet" if elapsed is None else f"{elapsed.total_seconds() / 3600:.1f} h since the last retrain"
        if n >= policy.min_after_interval:
            return TriggerDecision(True, f"{since} and {n} new corrections >= {policy.min_after_interval}", n)
        return TriggerDecision(False, f"{since} but only {n} new corrections (< {policy.min_after_interval})", n)
    return TriggerDecision(
        False,
        f"{n} new corrections (< {policy.min_corrections}), "
        f"{elapsed.total_seconds() / 3600:.1f} h since the last retrain (< {policy.interval.total_seconds() / 3600:g} h), no drift",
        n,
    )
