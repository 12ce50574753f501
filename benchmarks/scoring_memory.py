"""Resident memory of a process scoring calls of varying sizes and text lengths through the engine,
under glibc's allocator as it comes and as tuned: RSS at intervals (start, end, peak) and msgs/s,
each variant in a fresh process (allocator settings are per process) on the same seeded calls,
its msgs/s as a ratio to the default's in the same run.

    python -m benchmarks.scoring_memory [--registry .vigil/models --version champion] [--calls 500]

Without --registry it trains a tiny model as the tests do (a real MiniLM encoder, ~1 min on CPU).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# name -> (mallopt calls at start, malloc_trim(0) at most every this many seconds, between calls)
VARIANTS: dict[str, tuple[tuple[tuple[int, int], ...], float | None]] = {
    "default": ((), None),
    "trim every 2 s": ((), 2.0),
    "trim after every call": ((), 0.0),
    "mmap threshold 1 MiB": (((M_MMAP_THRESHOLD, MIB),), None),
    "mmap threshold 256 KiB": (((M_MMAP_THRESHOLD, 256 << 10),), None),
    # Setting M_TRIM_THRESHOLD also stops glibc raising its mmap threshold, as setting that one does.
    "arena max 2, trim threshold 1 MiB": (((M_ARENA_MAX, 2), (M_TRIM_THRESHOLD, MIB)), None),
    "arena max 2": (((M_ARENA_MAX, 2),), None),
}


def glibc() -> ctypes.CDLL:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # a platform without the name
        version = None
    if not version:
        raise SystemExit("glibc's allocator is what this measures; this process has another C library")
    return ctypes.CDLL("libc.so.6")


def set_mallopt(lib: ctypes.CDLL, calls: tuple[tuple[int, int], ...]) -> None:
    for param, value in calls:
        if lib.mallopt(param, value) != 1:
            raise SystemExit(f"glibc refused mallopt({param}, {value})")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / MIB


def varied_calls(task: str, n_calls: int, max_call: int, max_words: int, seed: int) -> list[list[str]]:
    """``n_calls`` lists of 1..max_call texts, each of 1..max_words words of the task's bundled texts."""
    from benchmarks.inner_batch import sample_texts

    words = " ".join(sample_texts(task, 2000, seed)).split()
    rng = random.Random(seed)

    def text() -> str:
        start, n = rng.randrange(len(words)), rng.randint(1, max_words)
        return " ".join(words[start : start + n]) or words[0]

    return [[text() for _ in range(rng.randint(1, max_call))] for _ in range(n_calls)]


def child(args: argparse.Namespace) -> None:
    """One variant, in this (fresh) process: one JSON line on stdout."""
    calls, trim_every = VARIANTS[args.child]
    lib = glibc()
    set_mallopt(lib, calls)
    from models.engine import load_scorer
    from streams.settings import VigilSettings

    settings = VigilSettings(data_dir=args.registry.parent, device="cpu", max_length=args.max_length)
    engine = load_scorer(settings, args.task, args.version)
    work = varied_calls(args.task, args.calls, args.max_call, args.max_words, args.seed)
    engine.score(work[0])  # the first pass's one-off costs (the trace's optimisation) are not the allocator's
    series, start, texts = [rss_mib()], time.perf_counter(), 0
    last_trim = start
    for i, batch in enumerate(work, 1):
        engine.score(batch)
        texts += len(batch)
        if trim_every is not None and time.perf_counter() - last_trim >= trim_every:
            lib.malloc_trim(0)
            last_trim = time.perf_counter()
        if i % args.report_every == 0:
            series.append(rss_mib())
    elapsed = time.perf_counter() - start
    print(json.dumps({"variant": args.child, "precision": engine.precision, "texts": texts,
                      "msgs_per_s": texts / elapsed, "rss_mib": [round(r) for r in series]}), flush=True)


def tiny_registry(root: Path) -> Path:
    from models.registry import ModelRegistry
    from tests.fixtures.models import train_tiny

    registry = root / "models"
    ModelRegistry(registry).promote("sentiment", train_tiny("sentiment", registry).card.version)
    return registry


def warm_caches(args: argparse.Namespace) -> str:
    """Load once, so the children find the parity figures (and any ONNX export) cached; the precision."""
    from models.engine import load_scorer
    from streams.settings import VigilSettings

    settings = VigilSettings(data_dir=args.registry.parent, device="cpu", max_length=args.max_length)
    return load_scorer(settings, args.task, args.version).precision


def run_variant(args: argparse.Namespace, name: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scoring_memory", "--child", name, "--registry", str(args.registry),
           "--version", args.version, "--task", args.task, "--calls", str(args.calls), "--max-call",
           str(args.max_call), "--max-words", str(args.max_words), "--max-length", str(args.max_length),
           "--report-every", str(args.report_every), "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(rounds: list[list[dict]], report_every: int) -> None:
    """RSS from the first round; msgs/s and its ratio to the first variant's in the same round, as medians."""
    print("| variant | RSS start MiB | RSS end MiB | RSS peak MiB | msgs/s | msgs/s / default |")
    print("|---|---|---|---|---|---|")
    for i, first in enumerate(rounds[0]):
        rss = first["rss_mib"]
        rates = [one[i]["msgs_per_s"] for one in rounds]
        ratios = [one[i]["msgs_per_s"] / one[0]["msgs_per_s"] for one in rounds]
        print(f"| {first['variant']} | {rss[0]} | {rss[-1]} | {max(rss)} | {statistics.median(rates):.1f} | "
              f"{statistics.median(ratios):.2f} |")
    for first in rounds[0]:
        print(f"{first['variant']}: RSS MiB every {report_every} calls: {first['rss_mib']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", type=Path, help="A registry with the task's version. Default: train a tiny one.")
    ap.add_argument("--version", default="champion")
    ap.add_argument("--task", choices=["sentiment", "triage"], default="sentiment")
    ap.add_argument("--calls", type=int, default=500, help="Scoring calls per variant.")
    ap.add_argument("--max-call", type=int, default=48, help="Texts per call: 1 to this many.")
    ap.add_argument("--max-words", type=int, default=120, help="Words per text: 1 to this many.")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--report-every", type=int, default=50, help="Calls between RSS readings.")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                    help="The first is the baseline of the ratios.")
    ap.add_argument("--rounds", type=int, default=1, help="Runs of every variant, in turn: msgs/s are their medians.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="vigil-scoring-memory-") as tmp:
        if args.registry is None:
            args.registry = tiny_registry(Path(tmp))
        print(json.dumps({"task": args.task, "precision": warm_caches(args), "calls": args.calls,
                          "max_call": args.max_call, "max_words": args.max_words, "seed": args.seed}), flush=True)
        rounds: list[list[dict]] = []
        for _ in range(args.rounds):
            rounds.append([run_variant(args, name) for name in args.variants])
            for result in rounds[-1]:
                print(json.dumps(result), flush=True)
        report(rounds, args.report_every)


if __name__ == "__main__":
    main()
