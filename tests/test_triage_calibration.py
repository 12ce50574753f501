"""The low-confidence threshold is calibrated at train time on the validation split and carried
in the model card; the worker takes it when VIGIL_TRIAGE_MIN_CONFIDENCE is unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.data import SplitConfig, cap_rows, stratified_split
from models.registry import ModelRegistry
from models.tasks import get_task
from streams.alerting.agent import min_confidence_for
from streams.alerting.rules import AlertRules
from streams.alerting.triage import calibrated_threshold, calibration_summary
from streams.settings import REPO_ROOT
from tests.fixtures.models import scorer_from_registry


def test_the_card_records_the_calibration_its_validation_split_gives(tiny_registry: Path) -> None:
    card = ModelRegistry(tiny_registry).card("triage")
    cfg = card.training_config
    recorded = card.metrics.model_extra["calibration"]

    # Score the same held-out rows again with the stored model, and calibrate them independently.
    split = stratified_split(get_task("triage").load(REPO_ROOT / "data"), SplitConfig(cfg["val_fraction"], cfg["split_seed"]))
    val = cap_rows(split.val, cfg["val_cap"], cfg["split_seed"])
    engine = scorer_from_registry(tiny_registry, "triage", max_length=card.max_length)
    predictions = engine.score([r.text for r in val])
    pairs = [(p.confidence, p.label == r.label) for p, r in zip(predictions, val, strict=True)]
    again = calibration_summary(pairs, cfg["calibration_precision"], min_support=cfg["calibration_min_support"])

    assert recorded["n"] == len(val) and recorded["target_precision"] == cfg["calibration_precision"]
    assert set(recorded) == set(again)
    if "threshold" in again:
        assert recorded["threshold"] == pytest.approx(again["threshold"], abs=1e-4)
        assert recorded["support"] == again["support"]
        assert calibrated_threshold(card) == recorded["threshold"]
    else:  # the tiny model may reach no threshold at the target: the card says so, and the worker falls back
        assert "lower the target" in recorded["error"]
        assert calibrated_threshold(card) is None
    rules = AlertRules()
    assert min_confidence_for(None, calibrated_threshold(card), rules) == (
        recorded.get("threshold", rules.triage.min_confidence)
    )


def test_a_reachable_target_gives_the_lowest_threshold_that_meets_it() -> None:
    pairs = [(0.95, True), (0.9, True), (0.8, False), (0.7, True), (0.6, True), (0.3, False), (0.2, False)]
    got = calibration_summary(pairs, 0.75, min_support=2)
    assert (got["threshold"], got["support"], got["precision"]) == (0.6, 5, 0.8)
    assert "error" in calibration_summary(pairs, 0.99, min_support=3)
