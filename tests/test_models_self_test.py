"""A version must score a plain text before a worker serves with it: a pinned broken version stops
the worker with the reason, and a worker that follows a broken champion starts on the newest earlier
champion that works; a refused champion is tried again later. Real tiny models on the CPU;
"broken" is NaN classifier weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.engine import load_scorer
from models.registry import ModelNotFound, ModelRegistry
from models.self_test import FALLBACK_DEPTH, ModelBroken
from streams.hotswap import Refusals, ScorerSlot, WrongTask
from streams.settings import VigilSettings
from streams.worker import load_working_scorer
from tests.fixtures.models import break_classifier, copy_by_hand, copy_registry, copy_version


@pytest.fixture
def registry(tiny_registry: Path, tmp_path: Path) -> ModelRegistry:
    copy_registry(tiny_registry, tmp_path / "models")
    return ModelRegistry(tmp_path / "models")


def _settings(registry: ModelRegistry, **overrides: str) -> VigilSettings:
    return VigilSettings(data_dir=registry.root.parent, device="cpu", inference_precision="fp32", **overrides)


def _promote_copy(registry: ModelRegistry, *, broken: bool) -> str:
    version = copy_version(registry, "sentiment", registry.resolve("sentiment", "v1")).version
    if broken:
        break_classifier(registry.resolve("sentiment", version))
    return registry.promote("sentiment", version)


def test_a_broken_champion_is_refused_for_the_newest_earlier_champion_that_works(registry):
    good = _promote_copy(registry, broken=False)
    broken = _promote_copy(registry, broken=True)
    scorer, refused = load_working_scorer(_settings(registry), "sentiment", "champion")
    assert scorer.model_version == good
    assert list(refused) == [broken]
    assert "cannot score a plain control text" in refused[broken] and "non-finite" in refused[broken]


def test_a_working_champion_is_used_with_nothing_refused(registry):
    scorer, refused = load_working_scorer(_settings(registry), "sentiment", "champion")
    assert (scorer.model_version, refused) == ("v1", {})


def test_a_pinned_broken_version_is_not_replaced_but_stops_the_worker_with_the_reason(registry):
    broken = _promote_copy(registry, broken=True)
    registry.rollback("sentiment")
    with pytest.raises(ModelBroken, match=f"{broken} cannot score.*pinned by VIGIL_SENTIMENT_MODEL"):
        load_working_scorer(_settings(registry, sentiment_model=broken), "sentiment", broken)


def test_when_every_recent_champion_fails_the_worker_stops_naming_each_and_the_device(registry):
    break_classifier(registry.resolve("sentiment", "v1"))
    promoted = [_promote_copy(registry, broken=True) for _ in range(FALLBACK_DEPTH + 1)]
    with pytest.raises(ModelBroken, match="no sentiment version works here.*VIGIL_DEVICE=cpu") as caught:
        load_working_scorer(_settings(registry), "sentiment", "champion")
    message = str(caught.value)
    assert all(f"{v}: the sentiment model {v} cannot score" in message for v in promoted)
    assert "v1:" not in message  # beyond the fallback depth: not loaded


def test_an_empty_registry_still_says_to_train(tmp_path):
    settings = VigilSettings(data_dir=tmp_path, device="cpu", inference_precision="fp32")
    with pytest.raises(ModelNotFound, match="vigil train --task sentiment"):
        load_working_scorer(settings, "sentiment", "champion")


def test_a_refused_champion_is_reported_once_and_tried_again_after_the_retry_interval():
    now = [0.0]
    refusals = Refusals(retry_after_s=600, clock=lambda: now[0])
    assert not refusals.refused("sentiment", "v3") and not refusals.holds_off("sentiment", "v3")
    assert refusals.refuse("sentiment", "v3") is True
    now[0] = 599
    assert refusals.holds_off("sentiment", "v3") and not refusals.holds_off("triage", "v3")
    now[0] = 600
    assert not refusals.holds_off("sentiment", "v3") and refusals.refused("sentiment", "v3")
    assert refusals.refuse("sentiment", "v3") is False  # failed again: no second report
    assert refusals.holds_off("sentiment", "v3")


@pytest.mark.parametrize(("source", "card_version", "why"), [
    (("triage", "v1"), "v2", "card of triage v2, not of sentiment v2"),  # another task's model
    (("sentiment", "v1"), "v1", "card of sentiment v1, not of sentiment v2"),  # stamps rows v1
])
def test_a_champion_copied_by_hand_is_refused_for_the_champion_before_it(registry, source, card_version, why):
    _promote_copy(registry, broken=False)  # v2, then replaced by hand
    shutil.rmtree(registry.task_dir("sentiment") / "v2")
    copy_by_hand(registry, source, ("sentiment", "v2"), card_version=card_version)
    scorer, refused = load_working_scorer(_settings(registry), "sentiment", "champion")
    assert (scorer.task, scorer.model_version) == ("sentiment", "v1")
    assert list(refused) == ["v2"] and why in refused["v2"]


def test_a_slot_takes_no_scorer_of_another_task(registry):
    triage = load_scorer(_settings(registry), "triage", "v1")
    with pytest.raises(WrongTask, match="triage model v1 cannot score sentiment"):
        ScorerSlot("sentiment", triage, follows_champion=True)
