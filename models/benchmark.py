"""`vigil bench scoring`: Vigil's engine vs Hugging Face pipelines, same model, same texts, same run.

Texts are the bundled Twitter Financial News tweets. Prints msgs/s and p50/p99 per-batch latency for:
  engine              Engine.score on batches of `batch` texts (length bucketing), at the settings'
                      precision (auto: fp16 on CUDA; bf16 or ONNX Runtime on CPU; see models.engine)
  engine/P            the same engine at each extra precision P asked for (`also`, e.g. fp32)
  pipeline/1          pipeline("text-classification") called once per message
  pipeline/batch      the same pipeline given each batch, batch_size=`batch`; its weights are in the
                      engine's fp16/bf16 when the engine runs those
  pipeline/batch/fp32 then also the pipeline as it comes (fp32)
and the ratio of each engine to pipeline-batch.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import pipeline
from transformers.utils import logging as hf_logging

from models.engine import load_scorer, set_cpu_threads
from models.links import version_tokenizer
from models.modeling import MeanPoolClassifier
from models.registry import ModelNotFound, ModelRegistry
from models.train import train_task
from streams.settings import VigilSettings


def tweets(settings: VigilSettings, n: int) -> list[str]:
    with (settings.bundled_data_dir / "twitter_financial_news" / "train.csv").open(encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    return (texts * (n // len(texts) + 1))[:n]


def run(name: str, fn: Callable[[list[str]], object], batches: list[list[str]], n: int,
        out: Callable[[str], None]) -> float:
    fn(batches[0])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    lat = []
    t0 = time.perf_counter()
    for b in batches:
        s = time.perf_counter()
        fn(b)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        lat.append(time.perf_counter() - s)
    total = time.perf_counter() - t0
    rate = n / total
    out(f"{name:<16} {rate:9.1f} msgs/s   batch p50 {1000 * np.percentile(lat, 50):8.1f} ms   "
        f"p99 {1000 * np.percentile(lat, 99):8.1f} ms   ({len(batches)} batches)")
    return rate


def bench_scoring(
    settings: VigilSettings, task: str, *, n: int, n_single: int, batch: int, train_if_missing: bool,
    also: Sequence[str] = (), out: Callable[[str], None] = print,
) -> float:
    """Run the contenders; returns engine / pipeline-batch."""
    try:
        ModelRegistry(settings.registry_dir).resolve(task, "champion")
    except ModelNotFound:
        if not train_if_missing:
            raise
        train_task(settings, task, "quick")
    engine = load_scorer(settings, task)
    engines = {"engine": engine} | {
        f"engine/{p}": load_scorer(settings.model_copy(update={"inference_precision": p}), task) for p in also}
    dev = engine.device
    out(f"task {task} {engine.model_version}  device {dev} "
        f"({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{engine.num_threads} threads'})  "
        f"max_length {settings.max_length}  torch {torch.__version__}")
    for name, e in engines.items():
        out(f"{name} precision {e.precision}{' (TorchScript trace)' if e.traced else ''}")
        if e.parity:
            p = e.parity
            out(f"  parity {p.precision} vs fp32 on {p.n} validation texts: {p.label_flips} label flips "
                f"({100 * p.flip_rate:.2f}%), max |dprob| {p.max_abs_prob_diff:.2g}, "
                f"{'accepted' if p.accepted else 'rejected -> fp32'}")

    model_dir = ModelRegistry(settings.registry_dir).resolve(task, engine.model_version)
    # The pipelines get the engine's reduced precision where torch runs it natively, so the ratio
    # measures the engine, not the dtype.
    hf_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(engine.precision, torch.float32)

    hf_tokenizer = version_tokenizer(model_dir)  # the engine's input: a sentiment version drops links

    def hf_pipeline(dtype: torch.dtype):
        model = MeanPoolClassifier.from_pretrained(model_dir, dtype=dtype).eval()
        # The pipeline runs any model with .logits, but meeting a class it does not know (Vigil's
        # own) it logs an error naming the 150 it does: a screenful per pipeline, nothing wrong.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity(hf_logging.CRITICAL)
        try:
            return pipeline("text-classification", model=model, tokenizer=hf_tokenizer, device=dev)
        finally:
            hf_logging.set_verbosity(verbosity)

    pipe = hf_pipeline(hf_dtype)
    kw = {"truncation": True, "max_length": settings.max_length}

    texts = tweets(settings, n)
    batches = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    singles = [[t] for t in texts[:n_single]]
    with torch.inference_mode():
        rates = {name: run(name, e.score, batches, len(texts), out) for name, e in engines.items()}
        # The engines' lanes leave torch at one thread; the pipelines get all the engine had.
        set_cpu_threads(settings.cpu_threads)
        run("pipeline/1", lambda b: pipe(b[0], **kw), singles, len(singles), out)
        r_batch = run("pipeline/batch", lambda b: pipe(b, batch_size=batch, **kw), batches, len(texts), out)
        if hf_dtype != torch.float32:
            # also as a user runs it: the pipeline's default fp32
            fp32_pipe = hf_pipeline(torch.float32)
            r_fp32 = run("pipeline/batch/fp32", lambda b: fp32_pipe(b, batch_size=batch, **kw), batches,
                         len(texts), out)
            out(f"engine / pipeline(batch_size={batch}, fp32) = {rates['engine'] / r_fp32:.2f}x")
    for name, rate in rates.items():
        out(f"{name} / pipeline(batch_size={batch}) = {rate / r_batch:.2f}x")
    return rates["engine"] / r_batch
