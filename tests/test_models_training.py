"""Fine-tuning really moves the model, is deterministic for a seed, and round-trips through disk."""

import numpy as np
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from feedback.contracts import ModelEventKind
from feedback.store import open_feedback_store

from models.encoder import base_encoder_dir
from models.engine import cpu_has_native_bf16, encode, predict_probs
from models.modeling import init_from_encoder
from models.registry import ModelRegistry
from models.tasks import banking77_labels
from streams.cli import app
from streams.clickhouse import open_store
from streams.settings import REPO_ROOT, VigilSettings
from tests.fixtures.models import copy_registry, scorer_from_registry, train_tiny

TEXTS = ["my card was stolen", "how do I top up with cash", "when will my card arrive",
         "I was charged twice for the same thing", "change my PIN", "is there an age limit"]


def test_training_changes_predictions(tiny_registry):
    trained = scorer_from_registry(tiny_registry, "triage")
    labels = banking77_labels(REPO_ROOT / "data")
    torch.manual_seed(0)
    untrained = init_from_encoder(base_encoder_dir(), labels).eval()
    enc = encode(trained.tokenizer, TEXTS, 64)
    before = predict_probs(untrained, enc.ids, trained.tokenizer.pad_token_id, 8, torch.device("cpu"))
    after, _ = trained.probs(TEXTS)
    assert np.abs(after - before).max() > 0.05
    # 30 steps lift the 77-way validation accuracy far above chance (1.3%)
    assert ModelRegistry(tiny_registry).card("triage").metrics.accuracy > 0.05


def test_same_seed_same_weights_and_reload_is_identical(tmp_path):
    a = train_tiny("sentiment", tmp_path / "a", max_steps=6, val_cap=32)
    b = train_tiny("sentiment", tmp_path / "b", max_steps=6, val_cap=32)
    wa = load_file(tmp_path / "a" / "sentiment" / "v1" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "sentiment" / "v1" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.card.data_fingerprint == b.card.data_fingerprint
    train_tiny("sentiment", tmp_path / "c", max_steps=6, val_cap=32, seed=1)
    wc = load_file(tmp_path / "c" / "sentiment" / "v1" / "model.safetensors")
    assert not torch.equal(wa["classifier.weight"], wc["classifier.weight"])

    reloaded = scorer_from_registry(tmp_path / "a", "sentiment", max_length=32)
    enc = encode(reloaded.tokenizer, TEXTS, 32)
    in_memory = predict_probs(a.model, enc.ids, reloaded.tokenizer.pad_token_id, 8, torch.device("cpu"))
    from_disk, _ = reloaded.probs(TEXTS)
    np.testing.assert_array_equal(in_memory, from_disk)


def test_mixed_precision_is_chosen_by_the_hardware_and_recorded(tmp_path):
    auto = train_tiny("sentiment", tmp_path / "auto", max_steps=4, val_cap=32)
    fp32 = train_tiny("sentiment", tmp_path / "fp32", max_steps=4, val_cap=32, autocast="fp32")
    assert auto.card.training_config["autocast"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert fp32.card.training_config["autocast"] == "fp32"
    wa = load_file(tmp_path / "auto" / "sentiment" / "v1" / "model.safetensors")
    wf = load_file(tmp_path / "fp32" / "sentiment" / "v1" / "model.safetensors")
    # the weights stay fp32 either way; bf16 passes move them differently
    assert all(w.dtype == torch.float32 for w in wa.values())
    assert torch.equal(wa["classifier.weight"], wf["classifier.weight"]) == (not cpu_has_native_bf16())


def test_train_promote_is_a_promotion_like_any_other(tiny_registry, tmp_path):
    """`vigil train --promote` moved the pointer only: no self test, and no promoted model event, so
    `vigil status` did not show the promotion."""
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    settings = VigilSettings(data_dir=data_dir, clickhouse_url=None, kafka_brokers=None)
    open_store(settings).close()  # migrates
    result = CliRunner().invoke(app, ["train", "--task", "triage", "--max-steps", "1", "--train-cap", "8",
                                      "--batch-size", "8", "--max-length", "16", "--promote"],
                                env={"VIGIL_DATA_DIR": str(data_dir), "VIGIL_DEVICE": "cpu",
                                     "VIGIL_CLICKHOUSE_URL": "", "VIGIL_KAFKA_BROKERS": ""})
    said = " ".join(result.output.split())
    assert result.exit_code == 0, said
    assert ModelRegistry(settings.registry_dir).champion("triage") == "v2"
    with open_feedback_store(settings) as store:
        events = store.fetch_model_events("triage")
    assert [(e.kind, e.model_version, e.detail) for e in events] == [
        (ModelEventKind.promoted, "v2", "promoted by `vigil train --promote` (was v1)")]
    assert "triage champion: v2, was v1" in said, said
