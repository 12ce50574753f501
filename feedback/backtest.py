"""Backtest a challenger before anyone promotes it: replay stored news through the challenger and
the alert rules, and compare the alerts it would have raised with the champion's.

Pure: the caller passes the stored messages and a scoring function, so this runs the same on a
ClickHouse export, in a test, or from `vigil models backtest`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from models.scoring import Prediction
from streams.alerting.contracts import Alert
from streams.alerting.rules import SentimentAlerter, SentimentRules
from streams.contracts import Kind, ScoredMessage


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


def _alerts(messages: Sequence[ScoredMessage], rules: SentimentRules) -> list[Alert]:
    alerter = SentimentAlerter(rules)
    alerts: list[Alert] = []
    for m in messages:
        alerts += alerter.feed(m).alerts
    # Close every window still open: the end of history is the end of the replay.
    flush = rules.window.spec().size + rules.window.spec().step + rules.window.spec().lateness
    return alerts + alerter.advance(messages[-1].event_time + flush)


def _key(a: Alert) -> str:
    return f"{a.rule} {a.ticker} {a.window_start.isoformat() if a.window_start else '-'}"


def backtest(
    messages: Sequence[ScoredMessage],
    score: Callable[[list[str]], list[Prediction]],
    rules: SentimentRules,
    challenger_version: str,
) -> BacktestReport:
    """Alerts the champion raised on ``messages`` (as stored) against those the challenger would."""
    news = sorted((m for m in messages if m.kind is Kind.news), key=lambda m: (m.event_time, m.id))
    if not news:
        raise BacktestError("no scored news in the chosen range: widen it (e.g. --hours) or stream some first")
    challenger = rescored(news, score([m.text for m in news]), challenger_version)
    before, after = _alerts(news, rules), _alerts(challenger, rules)
    keys_before, keys_after = {_key(a) for a in before}, {_key(a) for a in after}
    return BacktestReport(
        messages=len(news),
        label_flips=sum(a.label != b.label for a, b in zip(news, challenger, strict=True)),
        champion_alerts=Counter(a.rule for a in before),
        challenger_alerts=Counter(a.rule for a in after),
        only_champion=tuple(sorted(keys_before - keys_after)),
        only_challenger=tuple(sorted(keys_after - keys_before)),
    )
