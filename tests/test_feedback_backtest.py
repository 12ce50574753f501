"""Backtesting a challenger: the pure core on crafted traffic, and `vigil models backtest` on the
real tiny model over news stored in chdb."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from feedback.backtest import BacktestError, backtest
from models.engine import load_scorer
from models.scoring import Prediction
from streams.alerting.rules import SentimentAlerter, SentimentRules
from streams.cli import app
from streams.clickhouse import open_store
from streams.contracts import Kind, ScoredMessage
from streams.settings import VigilSettings
from tests.fixtures.models import copy_registry

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NEUTRAL = {"negative": 0.1, "neutral": 0.8, "positive": 0.1}


def _news(i: int, at: datetime, text: str, label: str = "neutral", probs: dict[str, float] = NEUTRAL,
          version: str = "v1") -> ScoredMessage:
    return ScoredMessage(
        id=f"n-{i}", kind=Kind.news, text=text, model_name="sentiment", model_version=version, label=label,
        probs=probs, confidence=max(probs.values()), margin=0.5, entropy=0.6, tickers=["AAA"], source="wire",
        content_hash=i, event_time=at, ingest_time=at, scored_time=at, src_partition=0, src_offset=i,
    )


def _calm_traffic(hours: int = 3, per_5min: int = 20) -> list[ScoredMessage]:
    return [
        _news(step * per_5min + k, T0 + timedelta(minutes=5 * step, seconds=10 * k), f"AAA update {step}-{k}")
        for step in range(hours * 12) for k in range(per_5min)
    ]


def _all_negative(texts: list[str]) -> list[Prediction]:
    probs = {"negative": 0.9, "neutral": 0.05, "positive": 0.05}
    return [Prediction("negative", probs, 0.9, 0.85, 0.39, False) for _ in texts]


def test_a_challenger_that_calls_everything_negative_forecasts_negative_share_alerts() -> None:
    news = _calm_traffic()
    report = backtest(news, _all_negative, SentimentRules(), "v2", start=T0, end=T0 + timedelta(hours=3))
    assert report.messages == len(news) and report.label_flips == len(news) and report.flip_rate == 1.0
    assert report.champion_alerts["negative_share"] == 0 and report.challenger_alerts["negative_share"] >= 1
    assert report.only_champion == () and all(k.startswith(("negative_share AAA", "sentiment_shock AAA"))
                                              or k.split()[0] in report.challenger_alerts
                                              for k in report.only_challenger)
    assert report.volume_change() is None  # the champion raised nothing to compare with


def _as_stored(news: list[ScoredMessage]):
    """A scoring function that gives each text the label it was stored with."""
    stored = {m.text: Prediction(m.label, m.probs, m.confidence, m.margin, m.entropy, False) for m in news}
    return lambda texts: [stored[t] for t in texts]


def test_the_champion_against_itself_changes_nothing() -> None:
    news = _calm_traffic()
    report = backtest(news, _as_stored(news), SentimentRules(), "v1", start=T0, end=T0 + timedelta(hours=3))
    assert report.label_flips == 0 and report.champion_alerts == report.challenger_alerts
    assert report.only_champion == report.only_challenger == ()


def test_no_news_is_a_clear_error() -> None:
    with pytest.raises(BacktestError, match="no scored news"):
        backtest([], _all_negative, SentimentRules(), "v2", start=T0, end=T0 + timedelta(hours=1))


MOSTLY_NEGATIVE = {"negative": 0.8, "neutral": 0.1, "positive": 0.1}


def _usual_traffic(hours: int, spike_at: datetime) -> list[ScoredMessage]:
    """AAA news is usually 3 in 4 negative; DDD is quiet but for a 15-minute burst at ``spike_at``."""
    out: list[ScoredMessage] = []
    for step in range(hours * 12):
        at = T0 + timedelta(minutes=5 * step)
        for k in range(20):
            negative = k % 4 != 0
            out.append(_news(len(out), at + timedelta(seconds=10 * k), f"AAA update {len(out)}",
                             *(("negative", MOSTLY_NEGATIVE) if negative else ("neutral", NEUTRAL))))
        burst = spike_at <= at < spike_at + timedelta(minutes=15)
        for k in range(60 if burst else 2):
            m = _news(len(out), at + timedelta(seconds=5 * k), f"DDD update {len(out)}")
            out.append(m.model_copy(update={"tickers": ["DDD"]}))
    return sorted(out, key=lambda m: (m.event_time, m.id))


def test_the_replay_warms_up_on_the_history_before_the_range_and_matches_the_live_alerter() -> None:
    """A cold alerter has no baselines for the warm-up's 7.5 hours: replaying the last 3 hours, it
    raised negative-share alerts on a ticker that is always that negative (12 on three such
    tickers in a review), where the live alerter raised one volume spike."""
    rules = SentimentRules()
    start, end = T0 + timedelta(hours=8), T0 + timedelta(hours=11)
    news = _usual_traffic(11, spike_at=T0 + timedelta(hours=9))
    live = SentimentAlerter(rules)
    raised = [a for m in news for a in live.feed(m).alerts] + live.advance(end + timedelta(minutes=2))
    live_in_range = Counter(a.rule for a in raised if start < a.window_end <= end)
    assert live_in_range == Counter({"volume_spike": 1})

    history = iter([m for m in news if m.event_time < start])  # read once, as the CLI streams it
    in_range = [m for m in news if m.event_time >= start]
    report = backtest(in_range, _as_stored(news), rules, "v1", start=start, end=end, history=history)
    assert report.champion_alerts == report.challenger_alerts == live_in_range
    assert report.warmup == timedelta(hours=8) >= report.warmup_needed == timedelta(hours=7.5) and report.warm

    cold = backtest(in_range, _as_stored(news), rules, "v1", start=start, end=end)
    assert cold.warmup == timedelta(0) and not cold.warm and cold.champion_alerts["negative_share"] > 0


def _run(args: list[str], data_dir, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env={"VIGIL_DATA_DIR": str(data_dir), "VIGIL_DEVICE": "cpu",
                                                "VIGIL_MAX_LENGTH": "32", **env})
    return result.exit_code, result.output


def test_vigil_models_backtest_replays_stored_news_through_the_real_model(tiny_registry, tmp_path) -> None:
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    settings = VigilSettings(data_dir=data_dir, device="cpu", max_length=32)
    scorer = load_scorer(settings, "sentiment", "v1")
    texts = [f"$AAA shares {'plunge after fraud probe' if i % 3 else 'rise on strong results'} {i}" for i in range(60)]
    preds = scorer.score(texts)
    stored = [
        _news(i, T0 + timedelta(minutes=i), t, p.label, p.probs)
        for i, (t, p) in enumerate(zip(texts, preds, strict=True))
    ]
    with open_store(settings) as store:
        store.write_scored(stored)

    until = (T0 + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
    code, out = _run(["models", "backtest", "v1", "--hours", "3", "--until", until], data_dir)
    assert code == 0, out
    assert "60 stored news scored by v1, replayed through v1" in out and "label flips 0 (0.0%)" in out
    assert "only the" not in out
    said = " ".join(out.split())
    assert "warm-up: 0.0 h of stored news before the range (the alert baselines need 7.5 h)" in said
    assert "warning: the alerters had 0.0 h of history where their baselines need 7.5 h" in said

    code, out = _run(["models", "backtest", "v1", "--hours", "1", "--until", "2020-01-01T00:00:00"], data_dir)
    assert code == 1 and "no scored news" in out

    # a window holding more news than a backtest replays is refused, not cut to its oldest part
    code, out = _run(["models", "backtest", "v1", "--hours", "3", "--until", until], data_dir,
                     VIGIL_BACKTEST_MAX_MESSAGES="50")
    said = " ".join(out.split())
    assert code == 1 and "more than 50 scored news rows between 2026-03-02 08:00:00" in said, out
    assert "backtest fewer --hours" in said and "replayed through" not in said


def test_vigil_models_backtest_warms_the_alerters_up_on_the_news_stored_before_the_range(tiny_registry, tmp_path):
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    with open_store(VigilSettings(data_dir=data_dir)) as store:
        store.write_scored(_usual_traffic(11, spike_at=T0 + timedelta(hours=9)))
    until = (T0 + timedelta(hours=11)).strftime("%Y-%m-%dT%H:%M:%S")
    code, out = _run(["models", "backtest", "v1", "--hours", "3", "--until", until], data_dir)
    assert code == 0, out
    said = " ".join(out.split())
    # The warm-up and one window more are read.
    assert "warm-up: 7.8 h of stored news before the range (the alert baselines need 7.5 h)" in said
    assert "warning" not in said
    rows = [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in out.splitlines()
            if line.count("│") == 4]
    champion = {rule: int(n) for rule, n, _ in rows if n.isdigit()}
    # The live alerter's: the burst, and nothing on news that is always this negative.
    assert champion.get("volume_spike") == 1 and champion.get("negative_share", 0) == 0, out
