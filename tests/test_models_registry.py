"""Registry versions, champion pointer, promote / rollback / resolve, on real saved models."""

import os
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import save_file

from models.registry import CardMismatch, ModelNotFound, ModelRegistry, RegistryError
from tests.fixtures.models import copy_by_hand, copy_version


def test_versions_promote_rollback_resolve(tiny_registry, tmp_path):
    src = ModelRegistry(tiny_registry).resolve("triage", "v1")
    reg = ModelRegistry(tmp_path / "models")
    with pytest.raises(ModelNotFound, match="vigil train --task triage"):
        reg.resolve("triage")
    assert [copy_version(reg, "triage", src).version for _ in range(3)] == ["v1", "v2", "v3"]
    assert reg.champion("triage") == "v1"  # the first version; the others wait for a promotion
    assert reg.resolve("triage").name == "v1"
    assert reg.promote("triage", "champion") == "v1"  # the alias names the champion, never itself
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
    # no staging directory or temporary pointer left behind; the lock file stays
    assert [p.name for p in (tmp_path / "models" / "triage").iterdir() if p.name.startswith(".")] == [".champion.lock"]


def test_champions_are_listed_newest_first_without_repeats_or_deleted_versions(tiny_registry, tmp_path):
    src = ModelRegistry(tiny_registry).resolve("triage", "v1")
    reg = ModelRegistry(tmp_path / "models")
    for _ in range(4):
        copy_version(reg, "triage", src)
    assert reg.champions("triage") == ["v1"]
    for version in ("v1", "v2", "v1", "v3", "v4"):
        reg.promote("triage", version)
    shutil.rmtree(reg.resolve("triage", "v3"))
    assert reg.champions("triage") == ["v4", "v1", "v2"]


def test_a_registry_without_a_pointer_keeps_serving_its_newest_when_a_version_is_added(tiny_registry, tmp_path):
    """Written before first versions became champions: the newest served (restarted workers),
    while running ones followed the pointer; a version trained without --promote would have
    been served by the next restart."""
    src = ModelRegistry(tiny_registry).resolve("triage", "v1")
    reg = ModelRegistry(tmp_path / "models")
    for _ in range(2):
        copy_version(reg, "triage", src)
    (reg.task_dir("triage") / "champion.json").unlink()
    assert reg.resolve("triage").name == "v2"
    assert copy_version(reg, "triage", src).version == "v3"
    assert (reg.champion("triage"), reg.resolve("triage").name) == ("v2", "v2")


def test_a_deleted_champions_number_is_not_given_again(tiny_registry, tmp_path):
    """v3 promoted then deleted by hand: the next version was numbered v3 again, and so became
    the champion unpromoted, under the name of the model that had served."""
    src = ModelRegistry(tiny_registry).resolve("triage", "v1")
    reg = ModelRegistry(tmp_path / "models")
    for _ in range(3):
        copy_version(reg, "triage", src)
    reg.promote("triage", "v3")
    shutil.rmtree(reg.task_dir("triage") / "v3")
    assert copy_version(reg, "triage", src).version == "v4"
    assert reg.champion("triage") == "v3"  # still named: resolving it says it is missing
    with pytest.raises(ModelNotFound, match="'v3'"):
        reg.resolve("triage")


def test_rollback_skips_the_champion_itself_and_deleted_versions(tiny_registry, tmp_path):
    src = ModelRegistry(tiny_registry).resolve("triage", "v1")
    reg = ModelRegistry(tmp_path / "models")
    for _ in range(3):
        copy_version(reg, "triage", src)
    for version in ("v2", "v1", "v3", "v1"):  # history: v1 v2 v1 v3, champion v1
        reg.promote("triage", version)
    shutil.rmtree(reg.task_dir("triage") / "v3")
    assert reg.rollback("triage") == "v2"  # not v3 (deleted), nor v1 (the champion already)
    assert reg.rollback("triage") == "v1"


def test_a_damaged_pointer_or_a_version_without_a_card_says_what_to_do(tiny_registry, tmp_path):
    src = ModelRegistry(tiny_registry).resolve("triage", "v1")
    reg = ModelRegistry(tmp_path / "models")
    for _ in range(2):
        copy_version(reg, "triage", src)
    (reg.task_dir("triage") / "v3").mkdir()  # a directory without a card: no usable version
    assert [c.version for c, _ in reg.list()] == ["v1", "v2"]
    (reg.task_dir("triage") / "champion.json").write_text("")
    with pytest.raises(RegistryError, match="damaged.*vigil models promote triage VERSION"):
        reg.champion("triage")
    mode = (reg.task_dir("triage") / "v1").stat().st_mode & 0o777
    assert mode == 0o755  # other users a deployment runs workers as can read it


def test_a_promotion_waits_for_one_under_way(tiny_registry, tmp_path):
    """Promote reads the pointer, then writes it: two at once both read the same one, and the
    first one's champion dropped out of the lineage (a rollback skipped it)."""
    src = ModelRegistry(tiny_registry).resolve("triage", "v1")
    reg = ModelRegistry(tmp_path / "models")
    for _ in range(2):
        copy_version(reg, "triage", src)
    with ThreadPoolExecutor(1) as pool:
        with reg._pointer_locked("triage"):  # another promotion, between its read and its write
            waiting = pool.submit(reg.promote, "triage", "v2")
            time.sleep(0.5)
            assert not waiting.done()
        assert waiting.result(timeout=10) == "v2"
    assert reg.champions("triage") == ["v2", "v1"]

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


def test_a_directory_whose_card_is_another_tasks_or_versions_is_refused(tiny_registry, tmp_path):
    """Copied by hand: a triage model served news, and rows were stamped with the card's version
    while another was the champion."""
    reg = ModelRegistry(tmp_path / "models")
    for task in ("sentiment", "triage"):
        copy_version(reg, task, ModelRegistry(tiny_registry).resolve(task, "v1"))
    copy_by_hand(reg, ("triage", "v1"), ("sentiment", "v2"), card_version="v2")
    copy_by_hand(reg, ("sentiment", "v1"), ("sentiment", "v3"), card_version="v1")
    with pytest.raises(CardMismatch, match="card of triage v2, not of sentiment v2.*vigil models promote sentiment"):
        reg.resolve("sentiment", "v2")
    with pytest.raises(CardMismatch, match="card of sentiment v1, not of sentiment v3"):
        reg.promote("sentiment", "v3")
    assert reg.champion("sentiment") == "v1" and reg.resolve("sentiment").name == "v1"
    # the list leaves them out, with a warning, and still shows the rest
    assert [(c.task, c.version) for c, _ in reg.list()] == [("sentiment", "v1"), ("triage", "v1")]


def _modes(version_dir):
    return {str(p.relative_to(version_dir)): stat.S_IMODE(p.stat().st_mode)
            for p in [version_dir, *version_dir.rglob("*")]}


def test_every_file_of_a_version_is_readable_by_the_other_users_workers_run_as(tiny_registry, tmp_path):
    """safetensors writes the weights 0600 whatever the umask: a worker running as another user
    refused every new version as broken (cannot be loaded)."""
    fields = ModelRegistry(tiny_registry).card("triage").model_dump(
        exclude={"task", "version", "parent_version", "created_at"})

    def write(target):
        save_file({"w": torch.zeros(2)}, str(target / "model.safetensors"))
        (target / "cache").mkdir()
        (target / "cache" / "part.json").write_text("{}")

    reg = ModelRegistry(tmp_path / "models")
    was = os.umask(0o077)  # an operator's strict umask hides the rest of the files too
    try:
        version = reg.add("triage", write, fields).version
    finally:
        os.umask(was)
    assert _modes(reg.resolve("triage", version)) == {
        ".": 0o755, "model.safetensors": 0o644, "card.json": 0o644, "cache": 0o755, "cache/part.json": 0o644}
    # and a version that training wrote (save_pretrained: weights, config, tokenizer)
    trained = ModelRegistry(tiny_registry).resolve("sentiment", "v1")
    written = {name: mode for name, mode in _modes(trained).items() if name.split("/")[0] not in ("onnx", "parity")}
    assert "model.safetensors" in written and set(written.values()) <= {0o644, 0o755}, written
