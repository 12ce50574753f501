"""Shallower models (``encoder_layers``): the encoder's bottom layers, saved and reloaded with their depth."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from models.encoder import base_encoder_dir
from models.engine import encode, predict_probs
from models.modeling import TooManyLayers, init_from_encoder
from models.registry import ModelRegistry
from models.retrain import RetrainConfig, fine_tune, gold_set
from models.tasks import SENTIMENT_LABELS
from streams.settings import REPO_ROOT
from tests.fixtures.models import scorer_from_registry, train_tiny

TEXTS = ["Shares of $TSLA fell 8% after the recall", "Quarterly dividend unchanged at $0.25",
         "Record revenue lifts $NVDA to an all-time high", "The company will report on Tuesday"]


def test_a_shallower_model_keeps_the_encoders_bottom_layers():
    base = load_file(base_encoder_dir() / "model.safetensors")
    model = init_from_encoder(base_encoder_dir(), SENTIMENT_LABELS, layers=2)
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    mine = model.state_dict()
    for layer in (0, 1):
        name = f"encoder.layer.{layer}.attention.self.query.weight"
        base_name = next(k for k in base if k.endswith(name))
        torch.testing.assert_close(mine[f"bert.{name}"], base[base_name].float())


def test_more_layers_than_the_encoder_has_are_refused():
    with pytest.raises(TooManyLayers, match="has 6 layers"):
        init_from_encoder(base_encoder_dir(), SENTIMENT_LABELS, layers=7)


def test_a_shallower_version_is_saved_with_its_depth_and_reloads_as_trained(tmp_path):
    result = train_tiny("sentiment", tmp_path, max_steps=6, val_cap=32, encoder_layers=2)
    weights = load_file(tmp_path / "sentiment" / "v1" / "model.safetensors")
    assert {k.split(".")[3] for k in weights if k.startswith("bert.encoder.layer.")} == {"0", "1"}
    assert result.card.training_config["encoder_layers"] == 2

    reloaded = scorer_from_registry(tmp_path, "sentiment", max_length=32)
    enc = encode(reloaded.tokenizer, TEXTS, 32)
    in_memory = predict_probs(result.model, enc.ids, reloaded.tokenizer.pad_token_id, 8, torch.device("cpu"))
    from_disk, _ = reloaded.probs(TEXTS)
    np.testing.assert_array_equal(in_memory, from_disk)


def test_a_retrained_challenger_keeps_its_champions_depth(tmp_path):
    champion = train_tiny("sentiment", tmp_path, max_steps=4, val_cap=32, encoder_layers=2).card
    corrections = [("Shares of $TSLA fell 8% after the recall", "negative"),
                   ("Record revenue lifts $NVDA to an all-time high", "positive")]
    result = fine_tune(champion, ModelRegistry(tmp_path).resolve("sentiment", champion.version), corrections,
                       RetrainConfig(epochs=1, max_steps=2, replay_size=16, batch_size=8, max_length=32),
                       data_dir=REPO_ROOT / "data", registry_root=tmp_path,
                       gold=gold_set(champion, REPO_ROOT / "data", cap=16), device="cpu")
    assert result.card.training_config["encoder_layers"] == 2
    assert AutoConfig.from_pretrained(ModelRegistry(tmp_path).resolve("sentiment", result.card.version)).num_hidden_layers == 2
