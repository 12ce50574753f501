"""SentimentAlerter on the bundled news replay (labels from the data, no model): quiet on normal
traffic, exactly one alert for an injected shock, cooldown, lateness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.alerting.baselines import KeyedBaselines
from streams.alerting.rules import AlertRules, RulesError, SentimentAlerter, SentimentRules, ticker_events
from streams.contracts import ScoredMessage
from streams.replay import BUNDLED_START
from tests.fixtures.alerting import TICKER, merged, scored, scored_bundled_news, scored_news, steady_ticker

MIN = timedelta(minutes=1)


@pytest.fixture(scope="module")
def normal() -> list[ScoredMessage]:
    return list(scored_bundled_news())


def test_normal_bundled_replay_raises_no_alert(normal):
    # The bundled tickers are sparse (the busiest has news in 17 windows over 4.5 days): under the
    # default warm-up (30 windows) none is ever judged, so here the rules judge them after 5.
    rules = AlertRules.from_mapping({"sentiment": {"baseline": {"warmup_windows": 5}}}).sentiment
    alerter = SentimentAlerter(rules)
    alerts, late, judged = [], 0, 0
    for m in normal:
        fed = alerter.feed(m)
        alerts += fed.alerts
        late += fed.too_late
        # windows the shock rule actually scored: past warm-up and over its volume floor
        judged += sum(
            1 for f in fed.windows
            if f.volume >= rules.sentiment_shock.min_volume
            and (base := alerter.baselines(f.key)[0]) is not None and base.n > rules.baseline.warmup_windows
        )  # fmt: skip
    assert alerts == []
    assert late == 0
    assert judged > 20  # the quiet is the rules judging real windows, not nothing reaching them


def test_a_negative_shock_raises_one_alert_within_one_step_and_one_when_it_turns_critical(normal):
    rules = SentimentRules()
    shock_at = BUNDLED_START + timedelta(hours=24)  # on a minute boundary, long past warm-up
    shock = [scored_news(f"shock-{i}", shock_at + timedelta(seconds=5 + 10 * i), "negative") for i in range(5)]
    stream = merged(normal, steady_ticker(BUNDLED_START, hours=60), shock)

    alerter = SentimentAlerter(rules)
    fired = []
    for m in stream:
        for a in alerter.feed(m).alerts:
            fired.append((a, m.event_time))

    # As windows slide over the shock, the positive news before it drops out and it turns critical.
    assert [(a.ticker, a.rule, a.severity, a.window_end - shock_at) for a, _ in fired] == [
        (TICKER, "sentiment_shock", "warning", MIN), (TICKER, "sentiment_shock", "critical", 4 * MIN)
    ]
    alert, emitted_at = fired[0]
    assert (alert.ticker, alert.rule, alert.kind) == (TICKER, "sentiment_shock", "sentiment")
    step, lateness = MIN, timedelta(minutes=rules.window.lateness_minutes)
    assert alert.window_end == shock_at + step  # the first window holding the shock
    assert alert.window_start == alert.window_end - timedelta(minutes=rules.window.size_minutes)
    # out as soon as the window may close: on the first message at or past end + lateness
    assert alert.window_end + lateness <= emitted_at < alert.window_end + lateness + step
    assert alert.created_at == emitted_at
    assert [m.id for m in alert.top_messages] == [m.id for m in sorted(shock, key=lambda m: m.probs["positive"] - m.probs["negative"])]
    assert {m.label for m in alert.top_messages} == {"negative"}
    assert alert.figures["z_sentiment"] <= -rules.sentiment_shock.levels.info
    assert alert.figures["volume"] == 10  # five background messages and the five shock ones
    assert alert.model_version == "test-1"


def test_the_same_input_gives_the_same_alerts():
    def run() -> list[str]:
        alerter = SentimentAlerter(_flood_rules())
        return [a.model_dump_json() for m in _flood(hours=3) for a in alerter.feed(m).alerts]

    first = run()
    assert first and first == run()


def _flood_rules(cooldown: float = 60) -> SentimentRules:
    return AlertRules.from_mapping(
        {"sentiment": {"cooldown_minutes": cooldown, "negative_share": {"min_volume": 3}}}
    ).sentiment


def _flood(hours: float) -> list[ScoredMessage]:
    """A ticker that is bad news for hours: every window breaks the negative-share rule."""
    start = BUNDLED_START
    return [scored_news(f"neg-{i}", start + i * MIN, "negative") for i in range(int(hours * 60))]


@pytest.mark.parametrize("cooldown", [30, 60, 0])
def test_cooldown_holds_per_ticker_and_rule(cooldown):
    alerter = SentimentAlerter(_flood_rules(cooldown))
    alerts = [a for m in _flood(hours=3) for a in alerter.feed(m).alerts]
    share = [a for a in alerts if a.rule == "negative_share"]
    assert {a.rule for a in alerts} == {"negative_share"}  # nothing else is unusual here
    ends = [a.window_end for a in share]
    gaps = {b - a for a, b in zip(ends, ends[1:], strict=False)}
    assert gaps == {max(timedelta(minutes=cooldown), MIN)}
    assert len({a.id for a in share}) == len(share)


def test_a_normally_negative_ticker_stops_alerting_once_its_usual_share_is_known():
    """The negative-share rule took an absolute share only: a ticker that is 75% negative every day
    raised an alert every hour, all day, whatever its baseline said."""
    rules = AlertRules.from_mapping({"sentiment": {
        "negative_share": {"min_volume": 3}, "baseline": {"warmup_windows": 4}}}).sentiment
    alerter = SentimentAlerter(rules)
    gloomy = [scored_news(f"g-{i}", BUNDLED_START + i * MIN, "neutral" if i % 4 == 0 else "negative")
              for i in range(24 * 60)]
    share = [a for m in gloomy for a in alerter.feed(m).alerts if a.rule == "negative_share"]
    assert share and max(a.window_end for a in share) <= BUNDLED_START + timedelta(hours=2)
    # the same ticker going from its usual 75% to all negative is news again
    worse = [scored_news(f"w-{i}", BUNDLED_START + timedelta(hours=24) + i * MIN, "negative") for i in range(20)]
    late = [a for m in worse for a in alerter.feed(m).alerts if a.rule == "negative_share"]
    assert late and late[0].figures["negative_share"] - late[0].figures["usual_negative_share"] >= 0.2


def test_late_news_inside_lateness_counts_and_older_is_reported():
    rules = SentimentRules()  # 2 minutes of allowed lateness
    alerter = SentimentAlerter(rules)
    t = BUNDLED_START + timedelta(minutes=10)
    assert not alerter.feed(scored_news("now", t, "neutral")).too_late
    assert not alerter.feed(scored_news("late-ok", t - timedelta(minutes=2), "negative")).too_late
    late = alerter.feed(scored_news("too-late", t - timedelta(minutes=2, seconds=1), "negative"))
    assert late.too_late and late.alerts == []
    closed = alerter.feed(scored_news("later", t + timedelta(hours=1), "neutral", ticker="OTHER")).windows
    volumes = {f.end: f.volume for f in closed if f.key == TICKER}
    ids = {m.id for f in closed if f.key == TICKER for m in f.top["lowest"]}
    assert "late-ok" in ids and "too-late" not in ids
    assert max(volumes.values()) == 2


def test_swapping_thresholds_is_allowed_but_not_window_geometry():
    alerter = SentimentAlerter(SentimentRules())
    stricter = AlertRules.from_mapping({"sentiment": {"sentiment_shock": {"levels": {"info": 5}}}}).sentiment
    alerter.swap_rules(stricter)
    assert alerter.rules.sentiment_shock.levels.info == 5
    wider = AlertRules.from_mapping({"sentiment": {"window": {"size_minutes": 30}}}).sentiment
    with pytest.raises(RulesError, match="sentiment.window"):
        alerter.swap_rules(wider)
    assert alerter.rules is stricter


def test_support_messages_are_refused():
    from streams.contracts import SupportMessage

    msg = SupportMessage(id="s1", channel="chat", customer_id="c", text="card lost", created_at=datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="route it to triage"):
        SentimentAlerter(SentimentRules()).feed(scored(msg, "lost_or_stolen_card", ["lost_or_stolen_card", "other"]))


def test_a_ticker_silent_past_forget_after_days_leaves_the_state_and_warms_up_again(monkeypatch):
    """Baselines of tickers that stopped appearing are dropped, so the state (and each checkpoint
    of it) holds only the tickers of the last ``forget_after_days``. When that runs changes no
    alert: a ticker that comes back after that long starts afresh either way."""
    rules = SentimentRules(forget_after_days=2)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    early = [scored_news(f"x-{i}", start + i * 3 * MIN, "positive", ticker="XOLD") for i in range(200)]
    steady = [scored_news(f"y-{i}", start + i * 20 * MIN, "neutral", ticker="YNOW") for i in range(5 * 72)]
    back = [scored_news(f"xb-{i}", start + timedelta(days=4, seconds=30 * i), "negative", ticker="XOLD") for i in range(120)]
    stream = merged(early, steady, back)
    cut = next(i for i, m in enumerate(stream) if m.event_time >= start + timedelta(days=3))

    def alerts(alerter: SentimentAlerter, messages: list[ScoredMessage]) -> list[str]:
        return [a.model_dump_json() for m in messages for a in alerter.feed(m).alerts]

    pruned = SentimentAlerter(rules)
    got = alerts(pruned, stream[:cut])
    assert pruned.baselines("XOLD") == (None, None)  # silent 2.5 days: gone from the state
    assert "XOLD" not in str(pruned.to_state()) and pruned.baselines("YNOW")[0] is not None
    got += alerts(pruned, stream[cut:])
    returned, _ = pruned.baselines("XOLD")
    assert returned is not None and returned.n <= 60 + 15  # the windows of its return only: it started afresh
    assert any('"ticker":"XOLD"' in a for a in got)  # its return was judged

    monkeypatch.setattr(KeyedBaselines, "forget_silent", lambda *_: None)
    kept = SentimentAlerter(rules)
    assert alerts(kept, stream) == got
    assert kept.baselines("XOLD")[0] is not None and "XOLD" in str(kept.to_state())  # memory was all it saved

    stale = SentimentAlerter(SentimentRules(forget_after_days=365))
    alerts(stale, stream)
    assert stale.baselines("XOLD")[0].n > returned.n  # without forgetting it is judged on last week's normal


def test_a_ticker_given_twice_or_in_another_case_counts_once():
    """A scored message's tickers come as stored (a backtest reads them back): "VGLX" twice counted
    the message twice, and "vglx" got windows of its own."""
    rules = SentimentRules()
    given = ["VGLX", "VGLX", "vglx", "$vglx", "ab cd"]
    msg = scored_news("m-1", BUNDLED_START, "negative").model_copy(update={"tickers": given})
    assert [e.ticker for e in ticker_events(msg, rules)] == [TICKER]
    alerter = SentimentAlerter(rules)
    alerter.feed(msg)
    later = scored_news("later", BUNDLED_START + timedelta(hours=1), "neutral", ticker="OTHER")
    assert {(f.key, f.volume) for f in alerter.feed(later).windows} == {(TICKER, 1)}


def _mostly_negative(start: datetime, tag: str, every_fourth: str) -> list[ScoredMessage]:
    """25 messages over 15 minutes, negative but for every fourth one."""
    return [
        scored_news(f"{tag}-{i}", start + timedelta(seconds=36 * i + 1), every_fourth if i % 4 == 0 else "negative")
        for i in range(25)
    ]


def test_a_higher_severity_goes_through_the_cooldown_and_restarts_it():
    """An info negative-share alert held back the same ticker going critical 30 minutes later."""
    rules = AlertRules.from_mapping({"sentiment": {"sentiment_shock": {"enabled": False}}}).sentiment
    start = BUNDLED_START
    info = _mostly_negative(start, "a", "neutral")  # 72% negative
    critical = _mostly_negative(start + 30 * MIN, "b", "negative")
    # then a warning, inside the critical alert's cooldown: not worth a page of its own
    warning = [scored_news(f"c-{i}", start + 50 * MIN + timedelta(seconds=30 * i + 1), "neutral" if i % 6 == 0 else "negative")
               for i in range(30)]  # fmt: skip
    end = scored_news("end", start + timedelta(hours=3), "neutral", ticker="OTHER")
    alerter = SentimentAlerter(rules)
    alerts = [a for m in merged(info, critical, warning, [end]) for a in alerter.feed(m).alerts]
    assert [a.severity for a in alerts] == ["info", "critical"], [(a.window_end, a.severity) for a in alerts]
    fresh = SentimentAlerter(rules)
    alone = [a for m in merged(critical, [end]) for a in fresh.feed(m).alerts]
    assert alerts[1].window_end == alone[0].window_end  # as soon as it would have come without the info one


def test_a_restored_cooldown_keeps_its_severity_and_an_old_one_holds_everything():
    rules = AlertRules.from_mapping({"sentiment": {"sentiment_shock": {"enabled": False}}}).sentiment
    info = _mostly_negative(BUNDLED_START, "a", "neutral")
    critical = _mostly_negative(BUNDLED_START + 30 * MIN, "b", "negative")
    before = SentimentAlerter(rules)
    assert [a.severity for m in info for a in before.feed(m).alerts] == ["info"]
    state = before.to_state()

    def severities(restored: SentimentAlerter) -> list[str]:
        return [a.severity for m in critical for a in restored.feed(m).alerts]

    assert severities(SentimentAlerter.from_state(rules, state)) == ["critical"]
    # A checkpoint from before cooldowns kept their severity: the cooldown holds until it ends.
    old = state | {"last_fired": [entry[:3] for entry in state["last_fired"]]}
    assert severities(SentimentAlerter.from_state(rules, old)) == []


def _shock(at: datetime, tag: str) -> list[ScoredMessage]:
    return [scored_news(f"{tag}-{i}", at + timedelta(seconds=5 + 10 * i), "negative") for i in range(5)]


def test_a_ticker_with_two_messages_of_history_is_not_warm():
    """Each message was learned once per hopping window holding it (15 at 15m/1m), so two earlier
    messages made 30 windows of "history" and five neutral ones were a critical shock against them."""
    early = [scored_news("p1", BUNDLED_START + timedelta(seconds=10), "positive"),
             scored_news("p2", BUNDLED_START + timedelta(hours=1, seconds=10), "positive")]  # fmt: skip
    later = [scored_news(f"n{i}", BUNDLED_START + timedelta(hours=2, seconds=10 + 5 * i), "neutral") for i in range(5)]
    end = scored_news("end", BUNDLED_START + timedelta(hours=3), "neutral", ticker="OTHER")
    alerter = SentimentAlerter(SentimentRules())
    assert [a.rule for m in merged(early, later, [end]) for a in alerter.feed(m).alerts] == []
    sentiment, _ = alerter.baselines(TICKER)
    assert sentiment is not None and sentiment.n == 3 and not sentiment.ready  # three windows of news


def test_a_shock_does_not_hide_the_same_shock_after_the_cooldown():
    """A shock was learned once per window holding it, 15 times: the same shock 65 minutes later
    (past the cooldown) scored well short of what it scores alone."""
    rules = SentimentRules()
    first_at = BUNDLED_START + timedelta(hours=24)
    second_at = first_at + 65 * MIN

    def second(*shocks: list[ScoredMessage]) -> list[tuple[str, float]]:
        alerter = SentimentAlerter(rules)
        alerts = [a for m in merged(steady_ticker(BUNDLED_START, hours=30), *shocks) for a in alerter.feed(m).alerts]
        return [(a.severity, a.figures["z_sentiment"]) for a in alerts if a.window_end == second_at + MIN]

    ((sev_after, z_after),) = second(_shock(first_at, "first"), _shock(second_at, "second"))
    ((sev_alone, z_alone),) = second(_shock(second_at, "second"))
    assert sev_after == sev_alone and z_after == pytest.approx(z_alone, abs=0.1)


@pytest.mark.parametrize("direction", ["positive", "both"])
def test_a_positive_shock_lists_the_positive_messages_behind_it(direction):
    """Contributors were always the window's most negative messages, whatever the shock's sign."""
    rules = AlertRules.from_mapping({"sentiment": {"sentiment_shock": {"direction": direction}}}).sentiment
    shock_at = BUNDLED_START + timedelta(hours=24)
    calm = [scored_news(f"bg-{i}", BUNDLED_START + i * 3 * MIN + timedelta(seconds=7), ("neutral", "negative")[i % 2])
            for i in range(30 * 20)]  # fmt: skip
    shock = [scored_news(f"pos-{i}", shock_at + timedelta(seconds=5 + 10 * i), "positive") for i in range(5)]
    alerter = SentimentAlerter(rules)
    (alert,) = [a for m in merged(calm, shock) for a in alerter.feed(m).alerts]
    assert alert.rule == "sentiment_shock" and alert.figures["z_sentiment"] > 0
    best_first = sorted(shock, key=lambda m: m.probs["negative"] - m.probs["positive"])
    assert [m.id for m in alert.top_messages] == [m.id for m in best_first]
