"""One poll of the hot swap (streams.hotswap.ChampionFollower) on a real registry with the tiny real
models: a champion that cannot serve is refused once and the slot keeps scoring with its version;
nothing a poll meets escapes it (an error out of the timer crashes the worker). Model events are
collected where the worker publishes and stores them."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from feedback.contracts import ModelEventKind
from models.engine import load_scorer
from models.registry import ModelRegistry
from streams.contracts import Kind
from streams.hotswap import ChampionFollower, Refusals, ScorerSlot
from streams.metrics import Metrics
from streams.settings import VigilSettings
from tests.fixtures.models import copy_by_hand, copy_registry, copy_version


@pytest.fixture
def registry(tiny_registry: Path, tmp_path: Path) -> ModelRegistry:
    copy_registry(tiny_registry, tmp_path / "models")
    return ModelRegistry(tmp_path / "models")


def _settings(registry: ModelRegistry) -> VigilSettings:
    return VigilSettings(data_dir=registry.root.parent, device="cpu", inference_precision="fp32")


def _poll(registry: ModelRegistry, slot: ScorerSlot, times: int, load=None) -> list[tuple[ModelEventKind, str, str]]:
    """Poll ``times`` times; the model events reported, as (kind, version, detail)."""
    settings = _settings(registry)
    events: list[tuple[ModelEventKind, str, str]] = []

    async def report(kind, task, version, detail, figures) -> None:
        events.append((kind, version, detail))

    async def go() -> None:
        with ThreadPoolExecutor(1) as loader:
            follower = ChampionFollower(registry, {Kind.news: slot}, load or (lambda t, v: load_scorer(settings, t, v)),
                                        report, refusals=Refusals(600), metrics=Metrics(), worker_name="w1",
                                        loader=loader)
            for _ in range(times):
                await follower.poll()

    asyncio.run(go())
    return events


def _slot(registry: ModelRegistry) -> ScorerSlot:
    return ScorerSlot("sentiment", load_scorer(_settings(registry), "sentiment", "v1"), follows_champion=True)


def _replace_champion_by_hand(registry: ModelRegistry, source: tuple[str, str], card_version: str) -> None:
    v2 = registry.promote("sentiment", copy_version(registry, "sentiment", registry.resolve("sentiment", "v1")).version)
    shutil.rmtree(registry.task_dir("sentiment") / v2)
    copy_by_hand(registry, source, ("sentiment", v2), card_version=card_version)


def test_a_champion_of_another_task_is_refused_and_the_slot_keeps_its_version(registry):
    """It crashed the worker (the slot's ValueError escaped the timer); the restarted one scored news
    with the triage model."""
    slot = _slot(registry)
    _replace_champion_by_hand(registry, ("triage", "v1"), card_version="v2")
    events = _poll(registry, slot, times=2)
    assert (slot.get().task, slot.get().model_version) == ("sentiment", "v1")
    assert [(kind, version) for kind, version, _ in events] == [(ModelEventKind.champion_refused, "v2")]
    assert "card of triage v2, not of sentiment v2" in events[0][2]


def test_a_champion_whose_card_names_another_version_is_refused_once(registry):
    """It was loaded and reported swapped on every poll, and its rows were stamped v1."""
    slot = _slot(registry)
    _replace_champion_by_hand(registry, ("sentiment", "v1"), card_version="v1")
    events = _poll(registry, slot, times=3)
    assert slot.get().model_version == "v1"
    assert [(kind, version) for kind, version, _ in events] == [(ModelEventKind.champion_refused, "v2")]


def test_a_loaded_scorer_of_another_task_is_refused_not_raised(registry):
    """Whatever a load gives, the slot's own check refuses it like a version that fails to load."""
    slot = _slot(registry)
    registry.promote("sentiment", copy_version(registry, "sentiment", registry.resolve("sentiment", "v1")).version)
    events = _poll(registry, slot, times=1, load=lambda task, version: load_scorer(_settings(registry), "triage", "v1"))
    assert (slot.get().task, slot.get().model_version) == ("sentiment", "v1")
    assert [(kind, version) for kind, version, _ in events] == [(ModelEventKind.champion_refused, "v2")]
    assert "triage model v1 cannot score sentiment" in events[0][2]


def test_a_damaged_pointer_is_logged_and_the_poll_goes_on(registry, caplog):
    slot = _slot(registry)
    (registry.task_dir("sentiment") / "champion.json").write_text("{")
    assert _poll(registry, slot, times=2) == []
    assert slot.get().model_version == "v1"
    assert "vigil models promote sentiment VERSION" in caplog.text
