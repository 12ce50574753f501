"""The CPU engine's texts per forward pass (``VIGIL_SCORE_BATCH_SIZE``): msgs/s of ``Engine.score``
at each size, on the same texts in the same run, sizes interleaved round by round, with each
size's median as a ratio to the first size's.

A call sorts its texts by length and cuts them into forward passes of that many, each padded to
its own longest text: smaller passes pad less, larger ones give the matrix products more rows.
Calls of ``--call`` texts stand for a worker's micro-batches (a backlog fills them; at a moderate
rate they hold what arrived within ``VIGIL_BATCH_WITHIN_S``). Texts: the bundled news (tweets and
PhraseBank sentences, as the demo replays them) for sentiment, Banking77 for triage, sampled with
a fixed seed.

    python -m benchmarks.inner_batch --registry .vigil/models --sizes 64 16 32 --call 256 --call 48
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from models.engine import Engine, load_scorer
from streams.replay import bundled_news, bundled_support
from streams.settings import VigilSettings
from tests.fixtures.alerting import DATA


def sample_texts(task: str, n: int, seed: int) -> list[str]:
    items = bundled_news(DATA) if task == "sentiment" else bundled_support(DATA)
    return random.Random(seed).sample([item.text for item in items], n)


def msgs_per_s(engine: Engine, texts: list[str], call: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(texts), call):
        engine.score(texts[i : i + call])
    return len(texts) / (time.perf_counter() - t0)


def sweep(engine: Engine, texts: list[str], sizes: list[int], call: int, rounds: int) -> dict[int, float]:
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            engine.batch_size = size
            rates[size].append(msgs_per_s(engine, texts, call))
    return {size: statistics.median(r) for size, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", type=Path, default=Path(".vigil/models"), help="A registry with the tasks' champions.")
    ap.add_argument("--task", action="append", choices=["sentiment", "triage"], help="Default: both.")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 8, 16, 32, 48, 128], help="The first is the baseline.")
    ap.add_argument("--call", type=int, action="append", help="Texts per score call (repeatable); default 256 and 48.")
    ap.add_argument("--precision", action="append", help="Engine precision (repeatable); default the settings' (auto).")
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vigil-inner-batch-") as tmp:
        (Path(tmp) / "models").symlink_to(args.registry.resolve())
        settings = VigilSettings(data_dir=Path(tmp), device="cpu")
        for precision in args.precision or [settings.inference_precision]:
            for task in args.task or ["sentiment", "triage"]:
                engine = load_scorer(settings.model_copy(update={"inference_precision": precision}), task)
                texts = sample_texts(task, args.texts, args.seed)
                engine.score(texts[:64])  # warm-up
                for call in args.call or [256, 48]:
                    rates = sweep(engine, texts, args.sizes, call, args.rounds)
                    base = rates[args.sizes[0]]
                    print(json.dumps({
                        "task": task, "precision": engine.precision, "threads": engine.num_threads, "call": call,
                        "msgs_per_s": {size: round(r, 1) for size, r in rates.items()},
                        f"ratio_to_{args.sizes[0]}": {size: round(r / base, 2) for size, r in rates.items()},
                    }), flush=True)


if __name__ == "__main__":
    main()
