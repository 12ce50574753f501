"""Backtest a challenger before anyone promotes it: replay stored news through the challenger and
the alert rules, and compare the alerts it would have raised with the champion's, both alerters
warmed up on the news stored before the range.

Pure: the caller passes the stored messages and a scoring function, so this runs the same on a
ClickHouse export, in a test, or from `vigil models backtest`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from models.scoring import Prediction
from streams.alerting.contracts import Alert
from streams.alerting.rules import SentimentAlerter, SentimentRules
from streams.contracts import Kind, ScoredMessage


# Challenger copies made at once: the range's news is held once, not twice.
_SCORE_CHUNK = 4096


class BacktestError(ValueError):
    """The backtest cannot run on this input."""


@dataclass(frozen=True, slots=True)
class BacktestReport:
    messages: int
    label_flips: int  # messages whose label the challenger changes
    champion_alerts: Counter[str]  # per rule
    challenger_alerts: Counter[str]
    only_champion: tuple[str, ...]  # "rule ticker window_start" keys fired by one model only
    only_challenger: tuple[str, ...]
    warmup: timedelta  # stored news before the range the alerters learned from
    warmup_needed: timedelta

    @property
    def warm(self) -> bool:
        """Whether the alerters had the history their baselines need before the range."""
        return self.warmup >= self.warmup_needed

    @property
    def flip_rate(self) -> float:
        return self.label_flips / self.messages if self.messages else 0.0

    def volume_change(self) -> float | None:
        """Relative change in alert volume (challenger vs champion); None when the champion raised none."""
        before, after = sum(self.champion_alerts.values()), sum(self.challenger_alerts.values())
        return (after - before) / before if before else None


def rescored(messages: Sequence[ScoredMessage], predictions: Sequence[Prediction], version: str) -> list[ScoredMessage]:
    """The messages as the challenger would have scored them."""
    if len(messages) != len(predictions):
        raise BacktestError(f"{len(messages)} messages but {len(predictions)} predictions")
    return [
        m.model_copy(update={
            "label": p.label, "probs": p.probs, "confidence": p.confidence, "margin": p.margin,
            "entropy": p.entropy, "model_version": version,
        })
        for m, p in zip(messages, predictions, strict=True)
    ]


def _key(a: Alert) -> str:
    return f"{a.rule} {a.ticker} {a.window_start.isoformat() if a.window_start else '-'}"


def warmup_needed(rules: SentimentRules) -> timedelta:
    """How much stored news before a range warms the alerters up: a ticker's baselines count only
    after ``warmup_windows`` windows that tile history (one per window size)."""
    return rules.window.spec().size * rules.baseline.warmup_windows


def warmup_span(rules: SentimentRules) -> timedelta:
    """How much news before a range to read: the warm-up and one window more, as a range seldom
    starts where a tiling window does."""
    return warmup_needed(rules) + rules.window.spec().size


def backtest(
    messages: Sequence[ScoredMessage],
    score: Callable[[list[str]], list[Prediction]],
    rules: SentimentRules,
    challenger_version: str,
    *,
    start: datetime,
    end: datetime,
    history: Iterable[ScoredMessage] = (),
) -> BacktestReport:
    """Alerts the champion raised on ``messages`` (as stored, ``start <= event_time < end``) against
    those the challenger would, counting those of the windows that end in the range.

    Both alerters first learn ``history``, the stored news before ``start`` (oldest first, e.g.
    ``warmup_span`` of it; it may be a generator: it is read once, one message at a time). A cold
    alerter has no baselines, so over the warm-up's hours it raised what the live one never would.
    The challenger learns the history as stored too: an alerter keeps its baselines through a
    promotion, so that is what it would have started from."""
    news = sorted((m for m in messages if m.kind is Kind.news), key=lambda m: (m.event_time, m.id))
    if not news:
        raise BacktestError("no scored news in the chosen range: widen it (e.g. --hours) or stream some first")
    champion, challenger = SentimentAlerter(rules), SentimentAlerter(rules)
    first: datetime | None = None
    for m in history:
        if m.kind is Kind.news:
            first = first or m.event_time
            champion.feed(m)  # their alerts are of windows that ended before the range
            challenger.feed(m)

    def in_range(alerts: list[Alert]) -> list[Alert]:
        return [a for a in alerts if a.window_end is not None and start < a.window_end <= end]

    before: list[Alert] = []
    after: list[Alert] = []
    flips = 0
    for at in range(0, len(news), _SCORE_CHUNK):  # the challenger's copies, a chunk at a time
        chunk = news[at:at + _SCORE_CHUNK]
        for old, new in zip(chunk, rescored(chunk, score([m.text for m in chunk]), challenger_version), strict=True):
            flips += old.label != new.label
            before += in_range(champion.feed(old).alerts)
            after += in_range(challenger.feed(new).alerts)
    # Close every window that ends in the range; later ones would hold part of their news only.
    closed = end + rules.window.spec().lateness
    before += in_range(champion.advance(closed))
    after += in_range(challenger.advance(closed))
    keys_before, keys_after = {_key(a) for a in before}, {_key(a) for a in after}
    return BacktestReport(
        messages=len(news),
        label_flips=flips,
        champion_alerts=Counter(a.rule for a in before),
        challenger_alerts=Counter(a.rule for a in after),
        only_champion=tuple(sorted(keys_before - keys_after)),
        only_challenger=tuple(sorted(keys_after - keys_before)),
        warmup=timedelta(0) if first is None else start - first,
        warmup_needed=warmup_needed(rules),
    )
