"""The engine's CPU passes traced (``models.engine.TracedForward``) against eager, quiet and beside a
busy Python thread: msgs/s of the same passes over the same texts in one run, on the engine's lanes,
variants interleaved round by round, each median as a ratio to eager's in the same condition.

The busy thread stands in for a worker's event loop (decode, publish, ClickHouse writes), which
holds the GIL much of the time. An eager pass needs the GIL back after each of its operator calls,
a traced one runs without it; this measures what that costs each of them.

    python -m benchmarks.traced_forward --registry .vigil/models [--precision bf16|fp32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from benchmarks.inner_batch import sample_texts
from models.engine import (Forward, ModelTokenizer, TracedForward, cpu_has_native_bf16, cpu_lanes, cpu_thread_count,
                           encode, linears_in, run_batches, torch_forward)
from models.modeling import MeanPoolClassifier
from models.registry import ModelRegistry


@contextmanager
def busy_python_thread() -> Iterator[None]:
    """A thread running pure Python (holding the GIL but for the interpreter's switches) while inside."""
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i * i

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def rate(forward: Forward, seqs: list, pad: int, n_labels: int, lanes, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run_batches(forward, seqs, pad, 16, n_labels, lanes)
        n += len(seqs)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", type=Path, default=Path(".vigil/models"), help="A registry with the task's champion.")
    ap.add_argument("--task", choices=["sentiment", "triage"], default="sentiment")
    ap.add_argument("--precision", choices=["bf16", "fp32"],
                    help="Default: bf16 where the CPU runs it natively, else fp32.")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=6.0, help="Per measurement.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    precision = args.precision or ("bf16" if cpu_has_native_bf16() else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else None
    threads = cpu_thread_count(None)
    torch.set_num_threads(1)  # as the engine runs them: one torch thread per pass, passes on the lanes
    lanes = cpu_lanes(threads)
    model_dir = ModelRegistry(args.registry).resolve(args.task)
    model = MeanPoolClassifier.from_pretrained(model_dir).eval()
    if dtype is not None:
        model = linears_in(model, dtype)
    tokenizer = ModelTokenizer(model_dir)
    seqs = encode(tokenizer, sample_texts(args.task, args.texts, args.seed), 128).ids
    pad, n_labels = tokenizer.pad_token_id, model.config.num_labels
    forwards = {"eager": torch_forward(model, torch.device("cpu"), dtype), "traced": TracedForward(model, dtype)}
    with torch.inference_mode():
        eager, traced = (run_batches(f, seqs, pad, 16, n_labels, lanes) for f in forwards.values())
        print(json.dumps({"task": args.task, "precision": precision, "n": len(seqs),
                          "max_abs_prob_diff_traced_vs_eager": float(np.abs(eager - traced).max())}), flush=True)
        for busy in (False, True):
            rates: dict[str, list[float]] = {name: [] for name in forwards}
            for _ in range(args.rounds):
                for name, forward in forwards.items():
                    with busy_python_thread() if busy else nullcontext():
                        rates[name].append(rate(forward, seqs, pad, n_labels, lanes, args.seconds))
            med = {name: statistics.median(r) for name, r in rates.items()}
            print(json.dumps({"beside": "a busy Python thread" if busy else "nothing", "lanes": threads,
                              "msgs_per_s": {k: round(v, 1) for k, v in med.items()},
                              "traced_to_eager": round(med["traced"] / med["eager"], 2)}), flush=True)


if __name__ == "__main__":
    main()
