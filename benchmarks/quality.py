"""Held-out quality per corpus, the way issue 3's benchmarks slice it.

    python -m benchmarks.quality --task sentiment [--version champion] [--json out.json]

Scores the held-out validation split the registry model was trained around (its card's corpora and
split, as the retrain gate rebuilds its gold set) and reports accuracy and macro-F1 per source corpus; for sentiment
also on the PhraseBank rows where every annotator agreed. These are OUR held-out rows from the
train files, not the public evaluation splits.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.data import stratified_split  # noqa: E402
from models.engine import load_scorer  # noqa: E402
from models.evaluate import EvalReport, evaluate  # noqa: E402
from models.registry import ModelCard  # noqa: E402
from models.retrain import data_origin  # noqa: E402
from models.tasks import Row, get_task  # noqa: E402
from streams.settings import VigilSettings  # noqa: E402


def phrasebank_all_agree(settings: VigilSettings) -> set[str]:
    path = settings.bundled_data_dir / "financial_phrasebank" / "train.csv"
    with path.open(encoding="utf-8") as f:
        return {r["text"] for r in csv.DictReader(f) if r["all_agree"] == "1"}


def held_out(settings: VigilSettings, card: ModelCard) -> list[Row]:
    """The held-out validation split ``card``'s version was trained around: a version split row by
    row (before copies were grouped) trained on rows of today's default split."""
    origin = data_origin(card)
    return stratified_split(get_task(card.task).load(settings.bundled_data_dir, origin.sources), origin.split).val


def slice_reports(settings: VigilSettings, task: str, val: list[Row], predicted: list[str]) -> dict[str, EvalReport]:
    """Accuracy and macro-F1 of ``predicted`` on ``val`` per source corpus (for sentiment also on
    the PhraseBank rows every annotator agreed on)."""
    slices = {src: [i for i, r in enumerate(val) if r.source == src] for src in sorted({r.source for r in val})}
    if task == "sentiment":
        agree = phrasebank_all_agree(settings)
        slices["financial_phrasebank/all_agree"] = [
            i for i, r in enumerate(val) if r.source == "financial_phrasebank" and r.text in agree
        ]
    labels = get_task(task).labels(settings.bundled_data_dir)
    return {name: evaluate([val[i].label for i in idx], [predicted[i] for i in idx], labels)
            for name, idx in slices.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=["sentiment", "triage"])
    ap.add_argument("--version", default="champion")
    ap.add_argument("--json", default=None, help="append the figures as one JSON line to this file")
    args = ap.parse_args()
    settings = VigilSettings()
    scorer = load_scorer(settings, args.task, args.version)
    val = held_out(settings, scorer.card)
    started = time.perf_counter()
    predicted = [p.label for p in scorer.score([r.text for r in val])]
    seconds = time.perf_counter() - started

    results = {"task": args.task, "version": scorer.model_version, "device": str(getattr(scorer, "device", "?")),
               "scored_per_s": len(val) / seconds, "slices": {}}
    for name, report in slice_reports(settings, args.task, val, predicted).items():
        results["slices"][name] = {"n": report.n, "accuracy": round(report.accuracy, 4),
                                   "macro_f1": round(report.macro_f1, 4)}
        print(f"{args.task:9s} {scorer.model_version:4s} {name:32s} n={report.n:5d} "
              f"accuracy {report.accuracy:.4f}  macro-F1 {report.macro_f1:.4f}")
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
