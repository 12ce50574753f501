"""Scoring throughput: Vigil's engine vs Hugging Face pipelines, same model, same texts, same run.

    python -m benchmarks.bench_scoring [--n 2048] [--batch 256] [--device auto] [--precision auto]

Uses the champion of ``--task`` from the registry (``VIGIL_DATA_DIR``/models); trains a quick
model first with ``--train-if-missing``. Texts are the bundled Twitter Financial News tweets.
Prints msgs/s and p50/p99 per-batch latency for:
  engine            Engine.score on batches of --batch texts (length bucketing, inference_mode)
  pipeline/1        pipeline("text-classification") called once per message
  pipeline/batch    the same pipeline given each batch, batch_size=--batch
"""

from __future__ import annotations

import argparse
import csv
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.modeling import MeanPoolClassifier  # noqa: E402
from models.registry import ModelNotFound, ModelRegistry  # noqa: E402
from models.engine import load_scorer  # noqa: E402
from models.train import train_task  # noqa: E402
from streams.settings import VigilSettings  # noqa: E402


def tweets(settings: VigilSettings, n: int) -> list[str]:
    with (settings.bundled_data_dir / "twitter_financial_news" / "train.csv").open(encoding="utf-8") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    return (texts * (n // len(texts) + 1))[:n]


def run(name: str, fn, batches: list[list[str]], n: int) -> float:
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
    print(f"{name:<16} {rate:9.1f} msgs/s   batch p50 {1000 * np.percentile(lat, 50):8.1f} ms   "
          f"p99 {1000 * np.percentile(lat, 99):8.1f} ms   ({len(batches)} batches)", flush=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sentiment", choices=["sentiment", "triage"])
    ap.add_argument("--n", type=int, default=2048, help="texts per contender")
    ap.add_argument("--n-single", type=int, default=256, help="texts for the one-call-per-message baseline")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default=None, help="auto|cpu|cuda (default: VIGIL_DEVICE)")
    ap.add_argument("--precision", default=None, help="auto|fp32|int8|fp16|bf16 (default: settings)")
    ap.add_argument("--train-if-missing", action="store_true")
    args = ap.parse_args()

    overrides = {k: v for k, v in {"device": args.device, "inference_precision": args.precision}.items() if v}
    settings = VigilSettings(**overrides)
    try:
        ModelRegistry(settings.registry_dir).resolve(args.task, "champion")
    except ModelNotFound:
        if not args.train_if_missing:
            raise
        train_task(settings, args.task, "quick")
    engine = load_scorer(settings, args.task)
    dev = engine.device
    print(f"task {args.task} {engine.model_version}  device {dev} "
          f"({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'})  "
          f"engine precision {engine.precision}  max_length {settings.max_length}  torch {torch.__version__}")
    if engine.parity:
        p = engine.parity
        print(f"parity {p.precision} vs fp32 on {p.n} validation texts: {p.label_flips} label flips "
              f"({100 * p.flip_rate:.2f}%), max |dprob| {p.max_abs_prob_diff:.4f}, "
              f"{'accepted' if p.accepted else 'rejected -> fp32'}")

    from transformers import pipeline

    model_dir = ModelRegistry(settings.registry_dir).resolve(args.task, engine.model_version)
    hf_dtype = torch.float16 if dev.type == "cuda" and engine.precision == "fp16" else (
        torch.bfloat16 if dev.type == "cuda" and engine.precision == "bf16" else torch.float32)
    hf_model = MeanPoolClassifier.from_pretrained(model_dir, dtype=hf_dtype).eval()
    pipe = pipeline("text-classification", model=hf_model, tokenizer=engine.tokenizer, device=dev)
    kw = dict(truncation=True, max_length=settings.max_length)

    texts = tweets(settings, args.n)
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    singles = [[t] for t in texts[: args.n_single]]
    with torch.inference_mode():
        r_engine = run("engine", engine.score, batches, len(texts))
        run("pipeline/1", lambda b: pipe(b[0], **kw), singles, len(singles))
        r_batch = run("pipeline/batch", lambda b: pipe(b, batch_size=args.batch, **kw), batches, len(texts))
    print(f"engine / pipeline(batch_size={args.batch}) = {r_engine / r_batch:.2f}x")


if __name__ == "__main__":
    main()
