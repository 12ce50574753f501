"""What one message dated ahead does to a partition's sentiment alerts, had it not been refused.

The shock scenario of tests/test_alerting_sentiment.py (the bundled news, a steady ticker, five
negative headlines a day in) through ``SentimentAlerter``, with and without one headline for
another ticker dated ``--ahead-hours`` ahead, arriving an hour before the shock. The worker now
sends such a message to the dead-letter topic (VIGIL_MAX_EVENT_AHEAD_S).

    python -m benchmarks.dated_ahead [--ahead-hours 24]
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from streams.alerting.rules import SentimentAlerter, SentimentRules
from streams.contracts import ScoredMessage
from streams.replay import BUNDLED_START
from tests.fixtures.alerting import merged, scored_bundled_news, scored_news, steady_ticker


def replay(stream: list[ScoredMessage]) -> tuple[int, int]:
    """(alerts raised, messages refused as too late)."""
    alerter = SentimentAlerter(SentimentRules())
    alerts = late = 0
    for m in stream:
        out = alerter.feed(m)
        alerts += len(out.alerts)
        late += out.too_late
    return alerts, late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ahead-hours", type=float, default=24.0)
    args = parser.parse_args()
    shock_at = BUNDLED_START + timedelta(hours=24)
    shock = [scored_news(f"shock-{i}", shock_at + timedelta(seconds=5 + 10 * i), "negative") for i in range(5)]
    stream = merged(list(scored_bundled_news()), steady_ticker(BUNDLED_START, hours=60), shock)
    at = next(i for i, m in enumerate(stream) if m.event_time >= shock_at - timedelta(hours=1))
    dated = scored_news("dated-ahead", stream[at].event_time + timedelta(hours=args.ahead_hours), "neutral",
                        ticker="OTHER")
    for name, run in (("without", stream), ("with", [*stream[:at], dated, *stream[at:]])):
        alerts, late = replay(run)
        print(f"{name} the dated message: {len(run):,} messages, {alerts} alert(s), {late:,} refused as too late")


if __name__ == "__main__":
    main()
