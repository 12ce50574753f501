"""The engine's reduced-precision forward pass on CPU, against the ways it could be done: msgs/s of
the same passes over the same texts in one run, variants interleaved round by round, each median as
a ratio to the first variant's, and each variant's label flips against fp32.

- ``per-pass``: autocast over the fp32 model, which casts every weight on every pass (the engine
  before session 18);
- ``linears``: the Linear layers' weights cast once (``models.engine.linears_in``), under the same
  autocast: the same figures, less work (the engine now);
- ``per-call``: one autocast around each call's passes, so the cast is cached across them;
- ``all-weights``: the whole model in the reduced dtype, layer norms and embeddings too;
- ``compile``: ``torch.compile(dynamic=True)`` of the fp32 model under autocast (its first call
  compiles; the time is printed).

Texts and calls as in ``benchmarks.inner_batch``; 16 texts per pass (the CPU default).

    python -m benchmarks.reduced_forward --registry .vigil/models --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.inner_batch import sample_texts
from models.engine import Forward, ModelTokenizer, encode, linears_in, run_batches, set_cpu_threads, torch_forward
from models.modeling import MeanPoolClassifier
from models.registry import ModelRegistry

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = ("per-pass", "linears", "per-call", "all-weights", "compile")


def plain_forward(model: torch.nn.Module) -> Forward:
    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(input_ids=ids, attention_mask=mask.long()).logits.float(), dim=-1)

    return forward


def variants(model: torch.nn.Module, dtype: torch.dtype, names: list[str]) -> dict[str, tuple[Forward, Callable]]:
    """name -> (forward, the context each call runs in)."""
    cpu, per_call = torch.device("cpu"), lambda: torch.autocast("cpu", dtype=dtype)
    build = {
        "per-pass": lambda: (torch_forward(model, cpu, dtype), contextlib.nullcontext),
        "linears": lambda: (torch_forward(linears_in(model, dtype), cpu, dtype), contextlib.nullcontext),
        "per-call": lambda: (plain_forward(model), per_call),
        "all-weights": lambda: (plain_forward(copy.deepcopy(model).to(dtype)), contextlib.nullcontext),
        "compile": lambda: (plain_forward(torch.compile(model, dynamic=True)), per_call),
    }
    return {name: build[name]() for name in names}


def run(forward: Forward, context: Callable, seqs: list, pad: int, n_labels: int, call: int) -> tuple[float, np.ndarray]:
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(seqs), call):
        with context():
            out.append(run_batches(forward, seqs[i : i + call], pad, 16, n_labels))
    return len(seqs) / (time.perf_counter() - t0), np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", type=Path, default=Path(".vigil/models"), help="A registry with the tasks' champions.")
    ap.add_argument("--task", action="append", choices=["sentiment", "triage"], help="Default: both.")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--variant", action="append", choices=VARIANTS, help="Repeatable; the first is the baseline. "
                    "Default: per-pass, linears, per-call, all-weights.")
    ap.add_argument("--call", type=int, action="append", help="Texts per call (repeatable); default 256 and 48.")
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names, dtype = args.variant or list(VARIANTS[:4]), DTYPES[args.dtype]
    threads = set_cpu_threads(None)
    registry = ModelRegistry(args.registry)
    for task in args.task or ["sentiment", "triage"]:
        model_dir = registry.resolve(task)
        model = MeanPoolClassifier.from_pretrained(model_dir).eval()
        tokenizer = ModelTokenizer(model_dir)
        seqs = encode(tokenizer, sample_texts(task, args.texts, args.seed), 128).ids
        pad, n_labels = tokenizer.pad_token_id, model.config.num_labels
        with torch.inference_mode():
            _, reference = run(torch_forward(model, torch.device("cpu")), contextlib.nullcontext, seqs, pad, n_labels, 256)
            forwards = variants(model, dtype, names)
            for name, (forward, context) in forwards.items():
                t0 = time.perf_counter()
                _, probs = run(forward, context, seqs, pad, n_labels, 256)
                print(json.dumps({"task": task, "variant": name, "first_call_s": round(time.perf_counter() - t0, 1),
                                  "label_flips_vs_fp32": int((probs.argmax(1) != reference.argmax(1)).sum()),
                                  "n": len(seqs), "max_abs_prob_diff": float(np.abs(probs - reference).max())}),
                      flush=True)
            for call in args.call or [256, 48]:
                rates: dict[str, list[float]] = {name: [] for name in names}
                for _ in range(args.rounds):
                    for name, (forward, context) in forwards.items():
                        rates[name].append(run(forward, context, seqs, pad, n_labels, call)[0])
                med = {name: statistics.median(r) for name, r in rates.items()}
                print(json.dumps({"task": task, "dtype": args.dtype, "threads": threads, "call": call,
                                  "msgs_per_s": {k: round(v, 1) for k, v in med.items()},
                                  f"ratio_to_{names[0]}": {k: round(v / med[names[0]], 2) for k, v in med.items()}}),
                      flush=True)


if __name__ == "__main__":
    main()
