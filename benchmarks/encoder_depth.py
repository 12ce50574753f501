"""Fewer encoder layers (``vigil train --encoder-layers N``): the engine's msgs/s and the held-out
accuracy of champions trained at each depth, measured in the same run.

Each ``--registry`` holds the tasks' champions of one depth (the first is the baseline). Speed:
``Engine.score`` on the same sampled texts (the bundled news for sentiment, Banking77 for triage)
in calls of ``--call`` texts, registries interleaved round by round, medians and their ratios to
the first; an engine falls back from bf16 when its parity check fails (``--max-flip-rate``).
Quality: accuracy on the task's held-out validation split, per slice of ``benchmarks.quality``.

    python -m benchmarks.encoder_depth --registry /tmp/L6/models --registry /tmp/L3/models [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.inner_batch import msgs_per_s, sample_texts
from benchmarks.quality import held_out, slice_reports
from models.engine import Engine, load_scorer
from streams.settings import VigilSettings


def held_out_accuracy(settings: VigilSettings, engine: Engine, task: str) -> dict[str, float]:
    val = held_out(settings, engine.card)
    predicted = [p.label for p in engine.score([r.text for r in val])]
    return {name: round(r.accuracy, 4) for name, r in slice_reports(settings, task, val, predicted).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", type=Path, action="append", required=True, help="One per depth; the first is the baseline.")
    ap.add_argument("--task", action="append", choices=["sentiment", "triage"], help="Default: both.")
    ap.add_argument("--call", type=int, default=256)
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto", help="The engines' VIGIL_INFERENCE_PRECISION.")
    ap.add_argument("--max-flip-rate", type=float, default=0.002,
                    help="VIGIL_PARITY_MAX_FLIP_RATE: raise it to compare depths at one precision.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vigil-encoder-depth-") as tmp:
        for task in args.task or ["sentiment", "triage"]:
            engines: list[tuple[str, int, Engine, VigilSettings]] = []
            for i, registry in enumerate(args.registry):
                data_dir = Path(tmp) / f"{task}-{i}"
                data_dir.mkdir()
                (data_dir / "models").symlink_to(registry.resolve())
                settings = VigilSettings(data_dir=data_dir, device="cpu", inference_precision=args.precision,
                                         parity_max_flip_rate=args.max_flip_rate)
                engine = load_scorer(settings, task)
                layers = json.loads((engine.model_dir / "config.json").read_text())["num_hidden_layers"]
                engines.append((str(registry), layers, engine, settings))
            texts = sample_texts(task, args.texts, args.seed)
            for _, _, engine, _ in engines:
                engine.score(texts[:64])  # warm-up
            rates: list[list[float]] = [[] for _ in engines]
            for _ in range(args.rounds):
                for i, (_, _, engine, _) in enumerate(engines):
                    rates[i].append(msgs_per_s(engine, texts, args.call))
            medians = [statistics.median(r) for r in rates]
            for (registry, layers, engine, settings), rate in zip(engines, medians, strict=True):
                print(json.dumps({
                    "task": task, "registry": registry, "encoder_layers": layers, "precision": engine.precision,
                    "threads": engine.num_threads, "call": args.call, "msgs_per_s": round(rate, 1),
                    "ratio": round(rate / medians[0], 2), "accuracy": held_out_accuracy(settings, engine, task),
                }), flush=True)


if __name__ == "__main__":
    main()
