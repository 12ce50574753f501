"""The inference engine on real tiny fine-tuned models: order, truncation, hostile input, precision."""

import gc
import json
import logging
import math
import shutil
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from models.engine import (Engine, ScoringError, TracedForward, cpu_has_native_bf16, encode, linears_in, pad_batch,
                           run_batches, torch_forward)
from models.registry import ModelNotFound, ModelRegistry
from models.engine import load_scorer
from streams.settings import VigilSettings
from tests.fixtures.models import copy_registry, scorer_from_registry

MIXED = [
    "card not arrived",
    "I ordered a new card three weeks ago and it still has not arrived, what should I do about it now?",
    "$TSLA",
    "Someone used my card to pay for things I never bought in a shop in another country yesterday "
    "evening and I want my money back as soon as possible please",
    "refund?",
    "Shares of Nokia fell 4% after the company cut its full-year outlook.",
    "How do I top up by bank transfer?",
    "x",
] * 3


@pytest.mark.parametrize("task", ["sentiment", "triage"])
def test_batched_scoring_matches_one_by_one_in_input_order(tiny_registry, task):
    engine = scorer_from_registry(tiny_registry, task, batch_size=4)
    batched = engine.score(MIXED)
    single = [engine.score([t])[0] for t in MIXED]
    assert [p.label for p in batched] == [p.label for p in single]
    for b, s in zip(batched, single, strict=True):
        assert list(b.probs) == list(engine.labels)
        np.testing.assert_allclose(list(b.probs.values()), list(s.probs.values()), atol=1e-5)
    # the mix of lengths really does reorder batches: the first text is short, the second long
    assert batched[0].probs != batched[1].probs


def test_passes_side_by_side_on_lanes_give_the_same_probabilities_in_input_order(tiny_scorers):
    engine = tiny_scorers["triage"]
    enc = encode(engine.tokenizer, MIXED, 64)
    forward = torch_forward(engine._model(), engine.device)
    ran_on: set[str] = set()

    def recorded(ids, mask):
        ran_on.add(threading.current_thread().name)
        return forward(ids, mask)

    n = len(engine.labels)
    alone = run_batches(forward, enc.ids, engine.tokenizer.pad_token_id, 4, n)
    with ThreadPoolExecutor(2, thread_name_prefix="lane") as lanes:
        side_by_side = run_batches(recorded, enc.ids, engine.tokenizer.pad_token_id, 4, n, lanes)
    np.testing.assert_allclose(side_by_side, alone, atol=1e-6)
    assert ran_on and all(name.startswith("lane") for name in ran_on)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_traced_pass_gives_the_eager_probabilities_for_any_batch_size_and_length(tiny_scorers, dtype):
    model = tiny_scorers["sentiment"]._model()
    if dtype is not None:
        model = linears_in(model, dtype)
    eager, traced = torch_forward(model, torch.device("cpu"), dtype), TracedForward(model, dtype)
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for batch in (1, 2, 5, 16):
            for length in (2, 3, 9, 64):
                for padded in (False, True):
                    # [CLS] ... [SEP]; padded batches mix shorter rows in, down to the bare two tokens
                    inner = [length - 2 if not padded or i == 0 else int(rng.integers(0, length - 1))
                             for i in range(batch)]
                    ids, mask = pad_batch([[101, *rng.integers(1000, 20000, n), 102] for n in inner], 0)
                    assert torch.equal(traced(ids, mask), eager(ids, mask)), (batch, length, padded)


def test_cpu_engines_score_through_the_trace_and_fall_back_to_eager_for_a_model_that_does_not_trace(
        tiny_scorers, caplog):
    engine = tiny_scorers["triage"]
    assert engine.traced == (engine.device.type == "cpu")

    class Untraceable(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            if torch.jit.is_tracing():
                raise RuntimeError("data-dependent control flow")
            return engine._model()(input_ids=input_ids, attention_mask=attention_mask)

    with pytest.raises(ScoringError, match="could not be traced: data-dependent control flow"):
        TracedForward(Untraceable())
    with caplog.at_level(logging.WARNING, logger="models.engine"):
        forward = engine._torch_forward(Untraceable())
    ids, mask = pad_batch([[101, 2000, 102], [101, 102]], 0)
    with torch.inference_mode():
        assert torch.equal(forward(ids, mask), torch_forward(engine._model(), engine.device)(ids, mask))
    if engine.device.type == "cpu":
        assert "scoring eagerly" in caplog.text


def test_prediction_fields_are_consistent(tiny_scorers):
    engine = tiny_scorers["sentiment"]
    for p in engine.score(MIXED[:8]):
        probs = sorted(p.probs.values(), reverse=True)
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-4)
        assert p.label == max(p.probs, key=p.probs.get)
        assert p.confidence == pytest.approx(probs[0])
        assert p.margin == pytest.approx(probs[0] - probs[1])
        assert p.entropy == pytest.approx(-sum(q * math.log(q) for q in probs if q > 0), abs=1e-5)
        assert 0 <= p.entropy <= math.log(3) + 1e-6


def test_truncation_is_recorded_per_text(tiny_registry):
    engine = scorer_from_registry(tiny_registry, "triage", max_length=16)
    exactly = " ".join(["card"] * 14)  # 14 tokens + [CLS] + [SEP] = 16
    assert len(engine.tokenizer.backend_tokenizer.encode(exactly).ids) == 16
    texts = ["short one", exactly, exactly + " card", "word " * 500]
    assert [p.truncated for p in engine.score(texts)] == [False, False, True, True]


def test_a_long_text_is_read_as_far_as_its_window_whatever_its_first_characters_give(tiny_scorers):
    """Only a text's first 50 characters per token of the window were tokenized. A message after
    4,000 blank lines was scored as an empty text and marked truncated; one after words of over
    100 characters (each one [UNK]) as those and a word cut in pieces."""
    from tokenizers import Tokenizer

    engine = tiny_scorers["triage"]  # max_length 64: 3,200 characters were read
    message = "Someone used my card in a shop abroad and I want my money back"
    unknown_words = "x" * 101 + " "
    texts = [" " * 4000 + message, "\n" * 4000 + message, "\u200b" * 4000 + message,
             unknown_words * 40 + message, unknown_words * 80 + message, "lost card " * 1000, "a" * 100_000]
    whole = Tokenizer.from_str(engine.tokenizer.backend_tokenizer.to_str())
    whole.no_truncation()
    sep = engine.tokenizer.sep_token_id
    expected = [e.ids if len(e.ids) <= 64 else e.ids[:63] + [sep] for e in whole.encode_batch(texts)]
    got = encode(engine.tokenizer, texts, 64)
    assert got.ids == expected
    assert got.truncated == [False, False, False, False, True, True, False]
    alone = engine.score([message])[0]
    for p in engine.score(texts[:3]):
        assert (p.label, p.truncated) == (alone.label, False)
        assert p.probs == pytest.approx(alone.probs, abs=1e-5)


HOSTILE = [
    "",
    "   \n\t ",
    "a" * 100_000,
    "lost card " * 10_000,
    "\x00\x01\x02\x1b[31mred\x1b[0m\x7f\u200b\u200e\ufeff",
    "lone \ud800 surrogate",
    "\udfff",
    "emoji 💳🔥 and RTL مرحبا and CJK 银行卡",
    "\ufffd\uffff",
]


@pytest.mark.parametrize("task", ["sentiment", "triage"])
def test_hostile_input_never_crashes(tiny_scorers, task):
    preds = tiny_scorers[task].score(HOSTILE)
    assert len(preds) == len(HOSTILE)
    for p in preds:
        assert all(math.isfinite(v) for v in p.probs.values())
        assert math.isclose(sum(p.probs.values()), 1.0, abs_tol=1e-4)
    assert preds[3].truncated
    # 100,000 characters with no space are one word, read whole as one [UNK]: nothing was cut
    assert not preds[0].truncated and not preds[2].truncated and not preds[5].truncated
    # a lone surrogate scores like the replacement character it becomes
    replaced = tiny_scorers[task].score(["lone \ufffd surrogate"])[0].probs
    assert preds[5].probs == pytest.approx(replaced, abs=1e-5)


def test_non_text_is_a_typed_error(tiny_scorers):
    with pytest.raises(ScoringError, match="only score str"):
        tiny_scorers["triage"].score(["ok", None])  # type: ignore[list-item]
    assert tiny_scorers["triage"].score([]) == []


def test_int8_is_checked_against_fp32(tiny_registry):
    texts = [t for t in MIXED if t] * 5
    engine = scorer_from_registry(tiny_registry, "triage", precision="int8", parity_texts=texts)
    report = engine.parity
    assert report is not None and report.n == len(texts) and report.precision == "int8"
    assert engine.precision == ("int8" if report.accepted else "fp32")
    assert report.max_abs_prob_diff > 0  # the quantized model really ran
    strict = scorer_from_registry(tiny_registry, "triage", precision="int8", parity_texts=texts,
                                  max_flip_rate=-1.0)
    assert strict.precision == "fp32" and not strict.parity.accepted
    with pytest.raises(ScoringError, match="parity sample"):
        scorer_from_registry(tiny_registry, "triage", precision="int8")
    with pytest.raises(ScoringError, match="needs CUDA"):
        scorer_from_registry(tiny_registry, "triage", precision="fp16", parity_texts=texts)


def test_bf16_on_cpu_runs_only_in_hardware_and_is_checked_against_fp32(tiny_registry):
    texts = [t for t in MIXED if t] * 5
    if not cpu_has_native_bf16():
        with pytest.raises(ScoringError, match="emulated"):
            scorer_from_registry(tiny_registry, "triage", precision="bf16", parity_texts=texts)
        return
    parity_dir = ModelRegistry(tiny_registry).resolve("triage") / "parity"
    before = set(parity_dir.glob("bf16-*.json"))
    engine = scorer_from_registry(tiny_registry, "triage", precision="bf16", parity_texts=texts)
    report = engine.parity
    assert report.precision == "bf16" and report.n == len(texts)
    assert engine.precision == ("bf16" if report.accepted else "fp32")
    assert 0 < report.max_abs_prob_diff < 0.05  # bf16 really ran, and stays close to fp32
    # the figures for this sample are kept: the next engine on this version reads them back
    assert len(set(parity_dir.glob("bf16-*.json")) - before) == 1
    assert scorer_from_registry(tiny_registry, "triage", precision="bf16", parity_texts=texts).parity == report
    fp32 = scorer_from_registry(tiny_registry, "triage")
    got, ref = engine.score(MIXED), fp32.score(MIXED)
    assert [p.truncated for p in got] == [p.truncated for p in ref]
    assert max(abs(g.confidence - r.confidence) for g, r in zip(got, ref, strict=True)) < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linears_cast_once_compute_what_autocast_computes_from_fp32(tiny_scorers, dtype):
    """Runs on any CPU: where bf16 is not in hardware, torch emulates it with the same rounding."""
    engine = tiny_scorers["triage"]
    fp32 = engine._model()
    reduced = linears_in(fp32, dtype)
    assert {p.dtype for n, p in reduced.named_parameters() if "embeddings" not in n and "LayerNorm" not in n} == {dtype}
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}  # the parity check's reference is untouched
    # only the Linear weights are new memory: the embeddings and layer norms are the fp32 model's own
    fp32_tensors = {t.data_ptr() for t in fp32.parameters()}
    kept = [p for p in reduced.parameters() if p.dtype == torch.float32]
    assert kept and all(p.data_ptr() in fp32_tensors for p in kept)
    assert not any(p.data_ptr() in fp32_tensors for p in reduced.parameters() if p.dtype == dtype)
    seqs, pad, n = encode(engine.tokenizer, MIXED, 64).ids, engine.tokenizer.pad_token_id, len(engine.labels)
    with torch.inference_mode():
        ref = run_batches(torch_forward(fp32, torch.device("cpu"), dtype), seqs, pad, 4, n)
        got = run_batches(torch_forward(reduced, torch.device("cpu"), dtype), seqs, pad, 4, n)
        full = run_batches(torch_forward(fp32, torch.device("cpu")), seqs, pad, 4, n)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert np.abs(got - full).max() > 1e-4  # the reduced precision really ran


def test_load_scorer_from_settings(tiny_registry, tmp_path):
    settings = VigilSettings(data_dir=tiny_registry.parent, device="cpu", max_length=32)
    scorer = load_scorer(settings, "triage")
    assert (scorer.task, scorer.model_version, scorer.model_name) == ("triage", "v1", "vigil-triage-minilm")
    assert len(scorer.labels) == 77 and scorer.max_length == 32
    assert load_scorer(settings, "sentiment", "v1").labels == ("negative", "neutral", "positive")
    with pytest.raises(ModelNotFound, match="vigil train --task sentiment"):
        load_scorer(VigilSettings(data_dir=tmp_path, device="cpu"), "sentiment")


def test_a_scorer_dropped_by_a_hot_swap_is_freed_by_reference_counting_alone(tiny_registry):
    # A worker freezes what it holds at its start (gc.freeze), so the cyclic collector never looks
    # at its first scorer again: when a hot swap drops it, reference counting must free it, its
    # model and its thread pools, or every worker leaks a model at its first swap.
    settings = VigilSettings(data_dir=tiny_registry.parent, device="cpu", max_length=32)
    scorer = load_scorer(settings, "triage")
    scorer.score(MIXED)
    held = [scorer, *(v for v in vars(scorer).values() if type(v).__weakrefoffset__)]
    refs = [weakref.ref(obj) for obj in held]
    assert len(refs) > 5  # with its model, forward pass, tokenizer and thread pools
    gc.disable()
    try:
        del scorer, held
        assert [type(r()).__name__ for r in refs if r() is not None] == []
    finally:
        gc.enable()


def test_fast_encode_matches_the_transformers_tokenizer(tiny_registry, tiny_scorers):
    """The engine reads the version's tokenizer.json itself (no transformers import); its ids are
    the ones transformers' tokenizer of that version gives."""
    from models.engine import encode
    from models.links import version_tokenizer

    tok = version_tokenizer(ModelRegistry(tiny_registry).resolve("sentiment"))
    engine_tok = tiny_scorers["sentiment"].tokenizer
    assert (engine_tok.pad_token_id, engine_tok.sep_token_id) == (tok.pad_token_id, tok.sep_token_id)
    texts = ["$TSLA up 5%", "Ünïcödé and emoji 📉", "word " * 200, "a", "Zero\u200bwidth\tand tabs", "",
             "ÀÉÎ accents and CAPITALS", "中文 mixed with english", "\x00\x1b[31mred\x1b[0m\x7f",
             "$GM loses a bull https://t.co/tdUfG5HbXy", "see www.example.com/x?y=1 now"]
    for max_length in (8, 32, 128):
        expected = tok(texts, truncation=True, max_length=max_length + 1)["input_ids"]
        assert encode(tok, texts, max_length).ids == encode(engine_tok, texts, max_length).ids
        got = encode(engine_tok, texts, max_length)
        for e, g, cut in zip(expected, got.ids, got.truncated, strict=True):
            if len(e) > max_length:
                assert cut and g == e[: max_length - 1] + [tok.sep_token_id]
            else:
                assert g == e


def test_a_batch_that_does_not_fit_in_gpu_memory_runs_in_halves_in_order(tiny_scorers, caplog):
    from models.engine import encode, run_batches

    engine = tiny_scorers["triage"]
    forward, ran = engine._forward, []

    def bounded(ids, mask):  # the allocator's cap, as torch reports it, for more than 3 texts
        if len(ids) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
        ran.append(len(ids))
        return forward(ids, mask)

    seqs = encode(engine.tokenizer, MIXED, 64).ids
    pad, n = engine.tokenizer.pad_token_id, len(engine.labels)
    with caplog.at_level(logging.WARNING, logger="models.engine"):
        got = run_batches(bounded, seqs, pad, 16, n)
    np.testing.assert_allclose(got, run_batches(forward, seqs, pad, 16, n), atol=1e-6)
    assert sum(ran) == len(seqs) and max(ran) <= 3  # 24 texts: batches of 16 and 8, halved until they fit
    assert any("did not fit in GPU memory" in r.getMessage() for r in caplog.records)

    def hopeless(ids, mask):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ScoringError, match="VIGIL_GPU_MEMORY_FRACTION"):
        run_batches(hopeless, seqs[:2], pad, 16, n)


def test_workers_sharing_a_gpu_split_its_memory_unless_told_otherwise(tmp_path):
    from streams.worker import gpu_share_env

    settings = VigilSettings(data_dir=tmp_path)
    assert gpu_share_env(settings, 1) == {}
    assert gpu_share_env(settings, 4) == {"VIGIL_GPU_MEMORY_FRACTION": "0.2250"}
    assert gpu_share_env(settings.model_copy(update={"gpu_memory_fraction": 0.5}), 4) == {}


def test_workers_on_one_node_share_its_cores_unless_told_otherwise(tmp_path, monkeypatch):
    import streams.worker as worker

    settings = VigilSettings(data_dir=tmp_path)
    monkeypatch.setattr(worker, "usable_cores", lambda: 16)
    assert worker.cpu_share_env(settings, 1) == {}
    assert worker.cpu_share_env(settings, 3) == {"VIGIL_CPU_THREADS": "5"}
    monkeypatch.setattr(worker, "usable_cores", lambda: 2)
    assert worker.cpu_share_env(settings, 4) == {"VIGIL_CPU_THREADS": "1"}
    assert worker.cpu_share_env(settings.model_copy(update={"cpu_threads": 2}), 4) == {}


def test_a_version_missing_its_tokenizer_or_with_other_labels_is_refused_with_what_to_do(tiny_registry, tmp_path):
    source = ModelRegistry(tiny_registry).resolve("sentiment")
    broken = tmp_path / "sentiment" / "v1"
    copy_registry(source, broken, ignore=shutil.ignore_patterns("onnx", "parity"))
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ScoringError, match="no fast tokenizer .* retrain it"):
        Engine(broken, device="cpu", precision="fp32")

    shutil.copy2(source / "tokenizer.json", broken / "tokenizer.json")
    config = json.loads((broken / "config.json").read_text())
    config["id2label"] = {"0": "positive", "1": "neutral", "2": "negative"}
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScoringError, match="card labels and model labels differ"):
        Engine(broken, device="cpu", precision="fp32")
