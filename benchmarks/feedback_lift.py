"""The feedback-lift benchmark (issue 5): does labelling what the queue selects beat labelling at random?

1. Train a sentiment model on Financial PhraseBank only and promote it (the champion).
2. Stream the financial tweets' training split through it in event-time order (domain shift).
3. Active queue: the real selection policy (feedback.selection.Selector, budget per hour, class
   balance, de-duplication) picks messages; a simulated annotator answers with the tweet's own
   label, for the first BUDGET picks. Random queue: BUDGET tweets drawn uniformly from the stream.
4. Each set of corrections goes into a FeedbackStore (chdb) and through feedback.retrain_job
   (trigger, annotator screen, fine-tune from the champion + replay, gate, promote).
5. Report accuracy on the tweets' held-out validation split and on PhraseBank's held-out split
   (forgetting) for the champion and both challengers (whether or not the gate promoted them).

What it does NOT go through: Kafka topics, the worker and hot swap (scoring is in-process with
the engine; the hot swap has its own e2e test).

    python -m benchmarks.feedback_lift [--budget 500] [--stream 0] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--stream", type=int, default=0, help="Tweets to stream (0: the whole training split).")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--replay", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(".vigil-bench/feedback-lift"))
    args = ap.parse_args()

    from feedback.contracts import Correction, CorrectionSource
    from feedback.retrain_job import run_retrain
    from feedback.selection import Selector, policy_from_settings
    from feedback.store import open_feedback_store
    from models.data import SplitConfig, stratified_split
    from models.engine import load_scorer
    from models.tasks import get_task
    from models.train import train_task
    from streams.clickhouse import open_store
    from streams.contracts import Kind, ScoredMessage
    from streams.settings import VigilSettings

    started = time.perf_counter()
    shutil.rmtree(args.out, ignore_errors=True)
    base = {"device": args.device, "cpu_threads": args.threads, "clickhouse_url": None, "kafka_brokers": None,
                "max_length": 64, "retrain_max_length": 64, "retrain_replay_size": args.replay, "retrain_epochs": args.epochs,
                "retrain_min_corrections": args.budget}
    champ_settings = VigilSettings(data_dir=args.out / "champion", **base)
    t = time.perf_counter()
    result = train_task(champ_settings, "sentiment", args.profile, promote=True, sources=("financial_phrasebank",),
                        max_length=64, train_cap=None)
    print(f"PhraseBank-only champion {result.card.version}: {time.perf_counter() - t:.0f}s, "
          f"PhraseBank val accuracy {result.report.accuracy:.4f}")

    data = champ_settings.bundled_data_dir
    tweets = stratified_split(get_task("sentiment").load(data, ("twitter_financial_news",)), SplitConfig())
    phrasebank_val = stratified_split(get_task("sentiment").load(data, ("financial_phrasebank",)), SplitConfig()).val
    stream = list(tweets.train)
    random.Random(7).shuffle(stream)  # arrival order
    if args.stream:
        stream = stream[: args.stream]

    scorer = load_scorer(champ_settings, "sentiment")
    t = time.perf_counter()
    preds = scorer.score([r.text for r in stream])
    print(f"streamed {len(stream)} tweets through {scorer.model_version} in {time.perf_counter() - t:.0f}s")

    # Event times spread over a day: the per-hour budget shapes what the queue takes, as live.
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    step = timedelta(seconds=86_400 / len(stream))
    selector = Selector(policy_from_settings(champ_settings))
    active: list[int] = []
    for i, (row, p) in enumerate(zip(stream, preds, strict=True)):
        at = t0 + i * step
        msg = ScoredMessage(id=f"tw-{i}", kind=Kind.news, text=row.text, model_name=scorer.model_name,
                            model_version=scorer.model_version, label=p.label, probs=p.probs,
                            confidence=p.confidence, margin=p.margin, entropy=p.entropy, content_hash=i,
                            event_time=at, ingest_time=at, scored_time=at, src_partition=0, src_offset=i)
        if selector.decide(msg, at).request is not None:
            active.append(i)
            if len(active) == args.budget:
                break
    random_pick = sorted(random.Random(11).sample(range(len(stream)), args.budget))
    print(f"active queue: {len(active)} labels (selection reached tweet {active[-1] + 1} of {len(stream)}); "
          f"random queue: {len(random_pick)}")

    def accuracy(settings: VigilSettings, version: str, rows) -> float:
        s = load_scorer(settings, "sentiment", version)
        got = s.score([r.text for r in rows])
        return sum(p.label == r.label for p, r in zip(got, rows, strict=True)) / len(rows)

    figures = {"champion": (accuracy(champ_settings, "v1", tweets.val), accuracy(champ_settings, "v1", phrasebank_val))}
    outcomes = {}
    for name, picked in (("active", active), ("random", random_pick)):
        settings = VigilSettings(data_dir=args.out / name, **base)
        shutil.copytree(champ_settings.registry_dir, settings.registry_dir)
        open_store(settings).close()
        store = open_feedback_store(settings)
        try:
            store.write_corrections([
                Correction(correction_id=Correction.make_id("sentiment", f"tw-{i}", "sim"), task="sentiment",
                           message_id=f"tw-{i}", text=stream[i].text, annotator="sim", human_label=stream[i].label,
                           model_label=preds[i].label, model_version="v1", source=CorrectionSource.queue,
                           created_at=t0 + i * step)
                for i in picked
            ])
            t = time.perf_counter()
            report = run_retrain(settings, "sentiment", store)
        finally:
            store.close()
        version = report.challenger or "v1"
        outcomes[name] = (report, time.perf_counter() - t)
        figures[name] = (accuracy(settings, version, tweets.val), accuracy(settings, version, phrasebank_val))
        print(f"{name}: {report.outcome.value} {version} in {outcomes[name][1]:.0f}s: {report.reason}")

    print(f"\nfeedback lift, budget {args.budget}, tweets val n={len(tweets.val)}, PhraseBank val n={len(phrasebank_val)}")
    print(f"{'model':<34} {'tweets acc':>10} {'PhraseBank acc':>15}")
    for name, label in (("champion", "PhraseBank-only champion (before)"), ("active", "after, active queue"),
                        ("random", "after, random queue")):
        tw, pb = figures[name]
        gate = "" if name == "champion" else f"  gate: {outcomes[name][0].outcome.value}"
        print(f"{label:<34} {tw:>10.4f} {pb:>15.4f}{gate}")
    print(f"active - random: {figures['active'][0] - figures['random'][0]:+.4f} tweet accuracy; "
          f"PhraseBank change (active): {figures['active'][1] - figures['champion'][1]:+.4f}; "
          f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
