"""Backtesting a challenger: the pure core on crafted traffic, and `vigil models backtest` on the
real tiny model over news stored in chdb."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from feedback.backtest import BacktestError, backtest
from models.engine import load_scorer
from models.scoring import Prediction
from streams.alerting.rules import SentimentRules
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
    report = backtest(news, _all_negative, SentimentRules(), "v2")
    assert report.messages == len(news) and report.label_flips == len(news) and report.flip_rate == 1.0
    assert report.champion_alerts["negative_share"] == 0 and report.challenger_alerts["negative_share"] >= 1
    assert report.only_champion == () and all(k.startswith(("negative_share AAA", "sentiment_shock AAA"))
                                              or k.split()[0] in report.challenger_alerts
                                              for k in report.only_challenger)
    assert report.volume_change() is None  # the champion raised nothing to compare with


def test_the_champion_against_itself_changes_nothing() -> None:
    news = _calm_traffic()
    same = [Prediction(m.label, m.probs, m.confidence, m.margin, m.entropy, False) for m in news]
    report = backtest(news, lambda texts: same[: len(texts)], SentimentRules(), "v1")
    assert report.label_flips == 0 and report.champion_alerts == report.challenger_alerts
    assert report.only_champion == report.only_challenger == ()


def test_no_news_is_a_clear_error() -> None:
    with pytest.raises(BacktestError, match="no scored news"):
        backtest([], _all_negative, SentimentRules(), "v2")


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

    code, out = _run(["models", "backtest", "v1", "--hours", "1", "--until", "2020-01-01T00:00:00"], data_dir)
    assert code == 1 and "no scored news" in out

    # a window holding more news than a backtest replays is refused, not cut to its oldest part
    code, out = _run(["models", "backtest", "v1", "--hours", "3", "--until", until], data_dir,
                     VIGIL_BACKTEST_MAX_MESSAGES="50")
    said = " ".join(out.split())
    assert code == 1 and "more than 50 scored news rows between 2026-03-02 08:00:00" in said, out
    assert "backtest fewer --hours" in said and "replayed through" not in said
