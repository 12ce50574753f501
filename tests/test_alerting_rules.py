"""Alert rules files: defaults, JSON and YAML, errors that name the field, reload."""

from __future__ import annotations

import json

import pytest

from streams.alerting.contracts import Severity
from streams.alerting.rules import AlertRules, IntentSpikeRule, Levels, RulesError, RulesFile, geometry


def test_an_empty_file_means_the_defaults(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("")
    assert RulesFile(path).reload() == AlertRules()


def test_yaml_and_json_say_the_same(tmp_path):
    data = {"sentiment": {"cooldown_minutes": 10, "sentiment_shock": {"direction": "both", "levels": {"info": 2.5}}}}
    (tmp_path / "r.json").write_text(json.dumps(data))
    (tmp_path / "r.yml").write_text(
        "sentiment:\n  cooldown_minutes: 10\n  sentiment_shock:\n    direction: both\n    levels: {info: 2.5}\n"
    )
    a, b = AlertRules.from_file(tmp_path / "r.json"), AlertRules.from_file(tmp_path / "r.yml")
    assert a == b and a.sentiment.cooldown_minutes == 10 and a.sentiment.sentiment_shock.levels.info == 2.5


@pytest.mark.parametrize(
    "data, field",
    [
        ({"sentiment": {"negative_share": {"min_volume": 0}}}, "sentiment.negative_share.min_volume"),
        ({"sentiment": {"negative_share": {"levels": {"info": 1.5}}}}, "sentiment.negative_share"),
        ({"sentiment": {"sentiment_shock": {"levels": {"info": 4, "warning": 3}}}}, "sentiment.sentiment_shock.levels"),
        ({"sentiment": {"sentiment_shock": {"direction": "down"}}}, "sentiment.sentiment_shock.direction"),
        ({"sentiment": {"window": {"size_minutes": 10, "step_minutes": 3}}}, "sentiment.window"),
        ({"sentiment": {"cooldown_minuets": 5}}, "sentiment.cooldown_minuets"),
        ({"triage": {"min_confidence": 1.2}}, "triage.min_confidence"),
        ({"triage": {"escalate_priorities": ["P9"]}}, "triage.escalate_priorities.0"),
        # accepted before, and then crashed the stream at its first window (a reload too)
        ({"sentiment": {"cooldown_minutes": float("inf")}}, "sentiment.cooldown_minutes"),
        ({"sentiment": {"cooldown_minutes": 1e10}}, "sentiment.cooldown_minutes"),
        ({"sentiment": {"forget_after_days": float("inf")}}, "sentiment.forget_after_days"),
        ({"sentiment": {"window": {"lateness_minutes": float("inf")}}}, "sentiment.window.lateness_minutes"),
        ({"sentiment": {"window": {"size_minutes": 1e-9, "step_minutes": 1e-9}}}, "sentiment.window"),
        ({"triage": {"intent_spike": {"cooldown_minutes": float("inf")}}}, "triage.intent_spike.cooldown_minutes"),
        # NaN switched the rule off: no value compares >= NaN
        ({"sentiment": {"sentiment_shock": {"levels": {"info": float("nan")}}}}, "sentiment.sentiment_shock.levels.info"),
    ],
)
def test_invalid_rules_name_the_field_and_the_file(tmp_path, data, field):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RulesError) as err:
        RulesFile(path).reload()
    assert f"{field}:" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "name, text, says",
    [("r.json", "{not json", "not valid JSON"), ("r.yaml", "a: [1, 2", "not valid YAML"), ("r.toml", "", "expected a .json")],
)
def test_unreadable_files(tmp_path, name, text, says):
    (tmp_path / name).write_text(text)
    with pytest.raises(RulesError, match=says):
        AlertRules.from_file(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(RulesError, match="cannot read"):
        AlertRules.from_file(tmp_path / "absent.json")


def test_reload_returns_a_new_immutable_config_and_a_bad_edit_leaves_the_old_one(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"sentiment": {"cooldown_minutes": 5}}))
    source = RulesFile(path)
    live = source.reload()
    path.write_text(json.dumps({"sentiment": {"cooldown_minutes": 20}}))
    new = source.reload()
    assert (live.sentiment.cooldown_minutes, new.sentiment.cooldown_minutes) == (5, 20)
    with pytest.raises(Exception, match="frozen"):
        new.sentiment.cooldown_minutes = 1
    path.write_text(json.dumps({"sentiment": {"cooldown_minutes": -1}}))
    with pytest.raises(RulesError):
        live = source.reload()
    assert live.sentiment.cooldown_minutes == 5


@pytest.mark.parametrize(
    "value, expected",
    [(2.9, None), (3.0, Severity.info), (4.5, Severity.warning), (6.0, Severity.critical), (100, Severity.critical)],
)
def test_severity_from_levels(value, expected):
    assert Levels(info=3, warning=4, critical=6).severity(value) == expected


def test_levels_without_upper_steps():
    assert Levels(info=3).severity(50) == Severity.info


def test_one_intent_spike_window_or_baseline_field_set_keeps_the_intent_spike_defaults_of_the_rest():
    """Those defaults were instances: a file that set only the lateness got the sentiment windows'
    1-minute step, and one that set only the warm-up their fading factor."""
    default = geometry(IntentSpikeRule())
    rules = AlertRules.from_mapping(
        {"triage": {"intent_spike": {"window": {"lateness_minutes": 5}, "baseline": {"warmup_windows": 24}}}}
    ).triage.intent_spike
    assert geometry(rules) == {
        "window": default["window"] | {"lateness_minutes": 5},
        "baseline": default["baseline"] | {"warmup_windows": 24},
    }
    # unchanged, so the checkpoints made under them still load
    assert default == {
        "window": {"size_minutes": 15, "step_minutes": 5, "lateness_minutes": 2, "top_k": 5},
        "baseline": {"fading_factor": 0.05, "warmup_windows": 12, "min_std_sentiment": 0.1, "min_std_volume": 1.0},
    }
