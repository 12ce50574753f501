"""Registry versions, champion pointer, promote / rollback / resolve, on real saved models."""

import shutil

import pytest

from models.registry import ModelNotFound, ModelRegistry, RegistryError
from tests.fixtures.models import copy_version


def test_versions_promote_rollback_resolve(tiny_registry, tmp_path):
    src = ModelRegistry(tiny_registry).resolve("triage", "v1")
    reg = ModelRegistry(tmp_path / "models")
    with pytest.raises(ModelNotFound, match="vigil train --task triage"):
        reg.resolve("triage")
    assert [copy_version(reg, "triage", src).version for _ in range(3)] == ["v1", "v2", "v3"]
    assert reg.champion("triage") is None
    assert reg.resolve("triage").name == "v3"  # no champion: the newest
    reg.promote("triage", "v1")
    assert reg.resolve("triage").name == "v1"
    assert copy_version(reg, "triage", src).parent_version == "v1"
    reg.promote("triage", "v2")
    reg.promote("triage", "v4")
    assert reg.champion("triage") == "v4"
    assert reg.rollback("triage") == "v2"
    assert reg.rollback("triage") == "v1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("triage")
    assert reg.resolve("triage", "v3").name == "v3"
    with pytest.raises(ModelNotFound, match="vigil train --task triage"):
        reg.resolve("triage", "v9")
    with pytest.raises(ModelNotFound):
        reg.promote("triage", "../sentiment")
    assert not [p for p in (tmp_path / "models" / "triage").iterdir() if p.name.startswith(".")]


def test_champions_are_listed_newest_first_without_repeats_or_deleted_versions(tiny_registry, tmp_path):
    src = ModelRegistry(tiny_registry).resolve("triage", "v1")
    reg = ModelRegistry(tmp_path / "models")
    for _ in range(4):
        copy_version(reg, "triage", src)
    assert reg.champions("triage") == []
    for version in ("v1", "v2", "v1", "v3", "v4"):
        reg.promote("triage", version)
    shutil.rmtree(reg.resolve("triage", "v3"))
    assert reg.champions("triage") == ["v4", "v1", "v2"]


def test_list_and_show(tiny_registry):
    reg = ModelRegistry(tiny_registry)
    listed = {(c.task, c.version): champ for c, champ in reg.list()}
    assert listed == {("sentiment", "v1"): True, ("triage", "v1"): True}
    shown = reg.show("sentiment")
    assert shown["version"] == "v1" and shown["champion"] is True
    assert shown["labels"] == ["negative", "neutral", "positive"]
    assert shown["data_fingerprint"].startswith("sha256:")
    assert "validation split" in shown["metrics"]["eval_set"]
    assert shown["training_config"]["max_steps"] == 30
    files = {p.name for p in (tiny_registry / "sentiment" / "v1").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "card.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
