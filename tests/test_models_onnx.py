"""The ONNX Runtime path on the real tiny models: parity with torch fp32, input order, the cached
export, hostile input, and how ``auto`` chooses."""

import hashlib
import json
import logging
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

import torch

from models.engine import ScoringError, auto_precisions, cpu_has_native_bf16, load_scorer, parity_sample
from models.onnx_backend import weights_digest
from models.registry import ModelRegistry
from streams.settings import REPO_ROOT, VigilSettings
from tests.fixtures.models import copy_registry, scorer_from_registry
from tests.test_models_engine import HOSTILE, MIXED

PARITY = [t for t in MIXED if t] * 4


def assert_same_predictions(got, ref):
    assert [p.label for p in got] == [p.label for p in ref]
    assert [p.truncated for p in got] == [p.truncated for p in ref]
    for g, r in zip(got, ref, strict=True):
        assert list(g.probs) == list(r.probs)
        np.testing.assert_allclose(list(g.probs.values()), list(r.probs.values()), atol=1e-5)
        assert g.confidence == pytest.approx(r.confidence, abs=1e-5)
        assert g.margin == pytest.approx(r.margin, abs=1e-5)
        assert g.entropy == pytest.approx(r.entropy, abs=1e-4)


@pytest.fixture(scope="module")
def onnx_scorers(tiny_registry):
    return {task: scorer_from_registry(tiny_registry, task, precision="onnx", parity_texts=PARITY)
            for task in ("sentiment", "triage")}


@pytest.mark.parametrize("task", ["sentiment", "triage"])
def test_onnx_matches_torch_fp32(onnx_scorers, tiny_scorers, task):
    engine = onnx_scorers[task]
    report = engine.parity
    assert engine.precision == "onnx" and tiny_scorers[task].precision == "fp32"
    assert report.precision == "onnx" and report.n == len(PARITY) and report.accepted
    assert report.label_flips == 0 and report.max_abs_prob_diff < 1e-4
    assert_same_predictions(engine.score(MIXED), tiny_scorers[task].score(MIXED))


@pytest.mark.parametrize("task", ["sentiment", "triage"])
def test_onnx_results_come_back_in_input_order(tiny_registry, task):
    engine = scorer_from_registry(tiny_registry, task, precision="onnx", parity_texts=PARITY, batch_size=4)
    batched = engine.score(MIXED)
    assert_same_predictions(batched, [engine.score([t])[0] for t in MIXED])
    assert batched[0].probs != batched[1].probs


@pytest.mark.parametrize("task", ["sentiment", "triage"])
def test_hostile_input_scores_as_in_torch(onnx_scorers, tiny_scorers, task):
    got = onnx_scorers[task].score(HOSTILE)
    assert_same_predictions(got, tiny_scorers[task].score(HOSTILE))
    for p in got:
        assert all(math.isfinite(v) for v in p.probs.values())
    assert got[3].truncated and not got[2].truncated and not got[0].truncated
    with pytest.raises(ScoringError, match="only score str"):
        onnx_scorers[task].score(["ok", None])  # type: ignore[list-item]
    assert onnx_scorers[task].score([]) == []


def test_a_version_with_its_graph_and_figures_cached_starts_without_transformers(tiny_registry):
    """A restarted CPU worker's engine reads the cached ONNX graph, its parity figures and the
    version's tokenizer.json: it neither loads the torch model nor imports transformers (9 s of a
    13 s worker start on a 2-core CPU), and scores as the engine that built the cache."""
    settings = VigilSettings(data_dir=tiny_registry.parent, device="cpu", max_length=32, inference_precision="onnx")
    first = load_scorer(settings, "sentiment")  # exports and checks, unless an earlier test did
    text = "$TSLA beats estimates and raises guidance"
    code = (
        "import json, sys\n"
        "from models.engine import load_scorer\n"
        "from streams.settings import VigilSettings\n"
        f"s = VigilSettings.model_validate_json({settings.model_dump_json()!r})\n"
        "e = load_scorer(s, 'sentiment')\n"
        f"p = e.score([{text!r}])[0]\n"
        "print(json.dumps([e.precision, e._fp32 is None, 'transformers' in sys.modules, p.probs]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    precision, no_torch_model, imported, probs = json.loads(done.stdout.strip().splitlines()[-1])
    assert (precision, no_torch_model, imported) == ("onnx", True, False)
    expected = first.score([text])[0].probs
    assert list(probs) == list(expected)
    np.testing.assert_allclose(list(probs.values()), list(expected.values()), atol=1e-6)


def test_the_export_is_cached_per_version(tiny_registry, tmp_path, caplog):
    # A private copy of the version, so no other test has exported it yet.
    src = ModelRegistry(tiny_registry).resolve("sentiment")
    root = tmp_path / "models"
    copy_registry(src, root / "sentiment" / src.name, ignore=shutil.ignore_patterns("onnx"))
    with caplog.at_level(logging.INFO, logger="models.onnx_backend"):
        first = scorer_from_registry(root, "sentiment", precision="onnx", parity_texts=PARITY)
    exported = root / "sentiment" / src.name / "onnx" / f"model-{weights_digest(src)}.onnx"
    assert first.precision == "onnx" and exported.is_file()
    assert [r for r in caplog.records if "exported" in r.getMessage()]
    before = exported.stat()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="models.onnx_backend"):
        second = scorer_from_registry(root, "sentiment", precision="onnx", parity_texts=PARITY)
    assert second.precision == "onnx" and not [r for r in caplog.records if r.name == "models.onnx_backend"]
    after = exported.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # beside the graph: its parity figures on this sample, which the second engine read back
    kept = [p for p in exported.parent.iterdir() if p != exported]
    assert len(kept) == 1 and kept[0].name.startswith(f"{exported.stem}.parity-") and kept[0].suffix == ".json"
    assert second.parity == first.parity and first.parity.n == len(PARITY)
    kept[0].write_text("not json")  # a damaged record is checked again and rewritten
    third = scorer_from_registry(root, "sentiment", precision="onnx", parity_texts=PARITY)
    assert third.parity == first.parity and json.loads(kept[0].read_text())["n"] == len(PARITY)
    assert_same_predictions(second.score(MIXED), first.score(MIXED))


def test_auto_takes_the_first_cpu_precision_that_passes_parity(tiny_registry, caplog):
    tried = auto_precisions(torch.device("cpu"))
    assert tried == (("bf16", "onnx") if cpu_has_native_bf16() else ("onnx",))
    assert scorer_from_registry(tiny_registry, "triage", parity_texts=PARITY).precision == tried[0]
    with caplog.at_level(logging.WARNING, logger="models.engine"):
        strict = scorer_from_registry(tiny_registry, "triage", parity_texts=PARITY, max_flip_rate=-1.0)
    # every candidate was checked and refused, the last one's report is kept
    assert strict.precision == "fp32" and strict.parity.precision == tried[-1] and not strict.parity.accepted
    refused = [r.getMessage() for r in caplog.records if "not using it" in r.getMessage()]
    assert [m.split(": ")[1].split()[0] for m in refused] == list(tried)
    assert any("keeping fp32" in r.getMessage() for r in caplog.records)
    # without a sample there is nothing to check against: fp32
    assert scorer_from_registry(tiny_registry, "triage").precision == "fp32"
    with pytest.raises(ScoringError, match="parity sample"):
        scorer_from_registry(tiny_registry, "triage", precision="onnx")


def test_onnx_int8_is_checked_against_fp32(tiny_registry):
    engine = scorer_from_registry(tiny_registry, "triage", precision="onnx-int8", parity_texts=PARITY)
    report = engine.parity
    assert report.precision == "onnx-int8" and report.n == len(PARITY)
    assert engine.precision == ("onnx-int8" if report.accepted else "fp32")
    assert report.max_abs_prob_diff > 0  # the quantized graph really ran
    digest = weights_digest(ModelRegistry(tiny_registry).resolve("triage"))
    assert (ModelRegistry(tiny_registry).resolve("triage") / "onnx" / f"model-{digest}-int8.onnx").is_file()


def test_load_scorer_checks_auto_on_the_validation_sample(tiny_registry):
    settings = VigilSettings(data_dir=tiny_registry.parent, device="cpu", max_length=32)
    scorer = load_scorer(settings, "sentiment")
    assert scorer.precision == auto_precisions(torch.device("cpu"))[0]
    assert scorer.parity.n > 100 and scorer.parity.accepted
    fp32 = load_scorer(settings.model_copy(update={"inference_precision": "fp32"}), "sentiment")
    assert fp32.precision == "fp32" and fp32.parity is None
    assert [p.label for p in scorer.score(MIXED)] == [p.label for p in fp32.score(MIXED)]


@pytest.mark.parametrize(("task", "digest"), [("sentiment", "8c6014d7e047d66a"), ("triage", "e54c21fd5f79171f")])
def test_the_parity_sample_is_the_one_stored_figures_were_measured_on(task, digest):
    """The sample's texts name the parity figures each version's folder keeps (``parity_record``).
    Drawn from the split that groups copies of a text, the sentiment sample changed, and every
    version already checked would have been checked again at its next start. The digests are
    those of the sample before copies were grouped."""
    texts = parity_sample(VigilSettings(clickhouse_url=None, parity_sample=1000), task)  # the default
    assert hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16] == digest
