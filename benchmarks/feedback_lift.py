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

With --round-size N the budget is spent in rounds, as the product's trigger does
(VIGIL_RETRAIN_MIN_CORRECTIONS, 200 by default): after every N corrections a round retrains on all
corrections so far, and a promoted challenger scores the rest of the stream, so the active queue
selects by the newest champion's uncertainty. Without it, one round at the end of the budget.

What it does NOT go through: Kafka topics, the worker and hot swap (scoring is in-process with
the engine). `benchmarks.feedback_lift_live` runs one queue through all of them; this one is the
quicker way to compare recipes and queues.

    python -m benchmarks.feedback_lift [--budget 500] [--round-size 200] [--stream 0] [--threads 2]
        [--out DIR] [--seed 0] [--arms active,random] [--reuse-champion] [--set retrain_lr=1e-4 ...]

The selection policy and the retrain recipe are the product's (VigilSettings defaults); --set
overrides any setting (feedback_* for the queue, retrain_* for the rounds), to try one before
changing its default. --seed moves the stream order, the random draw and retrain_seed; the
champion does not depend on it, so --reuse-champion keeps it and its scores of the stream from an
earlier run in the same --out (about 6 minutes saved on 2 CPU cores). --arms runs one queue only.
--threads applies to scoring and retraining; training the champion uses every core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def accuracy(settings, version: str, rows) -> float:
    """Sentiment ``version``'s accuracy on ``rows``, scored in-process as a worker would."""
    from models.engine import load_scorer

    got = load_scorer(settings, "sentiment", version).score([r.text for r in rows])
    return sum(p.label == r.label for p, r in zip(got, rows, strict=True)) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--round-size", type=int, default=None,
                    help="Retrain after every this many corrections (default: once, after the whole budget).")
    ap.add_argument("--stream", type=int, default=0, help="Tweets to stream (0: the whole training split).")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--replay", type=int, default=None, help="retrain_replay_size (default: the setting's).")
    ap.add_argument("--epochs", type=int, default=None, help="retrain_epochs (default: the setting's).")
    ap.add_argument("--seed", type=int, default=0,
                    help="Moves the stream order, the random queue's draw and the retrain seed (not the champion).")
    ap.add_argument("--arms", default="active,random", help="Which queues to retrain from (comma-separated).")
    ap.add_argument("--reuse-champion", action="store_true",
                    help="Keep OUT/champion from an earlier run with the same --profile instead of training it again.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="A VigilSettings field for the retrain rounds (repeatable).")
    ap.add_argument("--out", type=Path, default=Path(".vigil-bench/feedback-lift"))
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if not arms or set(arms) - {"active", "random"}:
        ap.error(f"--arms takes active and/or random, got {args.arms!r}")
    round_size = args.round_size or args.budget
    if not 0 < round_size <= args.budget:
        ap.error(f"--round-size must be between 1 and --budget ({args.budget}), got {round_size}")

    from feedback.contracts import Correction, CorrectionSource
    from feedback.retrain_job import Outcome, run_retrain
    from feedback.selection import Selector, policy_from_settings
    from feedback.store import open_feedback_store
    from models.data import SplitConfig, stratified_split
    from models.engine import load_scorer
    from models.registry import ModelRegistry
    from models.scoring import Prediction
    from models.tasks import get_task
    from models.train import train_task
    from streams.clickhouse import open_store
    from streams.contracts import Kind, ScoredMessage
    from streams.settings import VigilSettings

    started = time.perf_counter()
    # The simulated annotator never takes a label back, and each round runs as soon as its labels are
    # in: a round leaves labels inside the UI's undo window out.
    base = {"device": args.device, "cpu_threads": args.threads, "clickhouse_url": None, "kafka_brokers": None,
            "max_length": 64, "retrain_max_length": 64, "retrain_seed": args.seed, "ui_undo_window_s": 0}
    if args.replay is not None:
        base["retrain_replay_size"] = args.replay
    if args.epochs is not None:
        base["retrain_epochs"] = args.epochs
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in VigilSettings.model_fields:
            ap.error(f"--set takes KEY=VALUE with KEY a VigilSettings field, got {item!r}")
        base[key] = value
    champ_settings = VigilSettings(data_dir=args.out / "champion", **base)
    marker = args.out / "champion" / "profile"  # which profile trained the champion kept there
    reuse = args.reuse_champion and marker.exists() and marker.read_text(encoding="utf-8") == args.profile
    if reuse:
        for name in ("active", "random"):
            shutil.rmtree(args.out / name, ignore_errors=True)
        print(f"PhraseBank-only champion: reused from {args.out / 'champion'}")
    else:
        shutil.rmtree(args.out, ignore_errors=True)
        t = time.perf_counter()
        # the registry was just removed: this first version is the champion
        result = train_task(champ_settings, "sentiment", args.profile, sources=("financial_phrasebank",),
                            max_length=64, train_cap=None)
        marker.write_text(args.profile, encoding="utf-8")
        print(f"PhraseBank-only champion {result.card.version}: {time.perf_counter() - t:.0f}s, "
              f"PhraseBank val accuracy {result.report.accuracy:.4f}")

    data = champ_settings.bundled_data_dir
    tweets = stratified_split(get_task("sentiment").load(data, ("twitter_financial_news",)), SplitConfig())
    phrasebank_val = stratified_split(get_task("sentiment").load(data, ("financial_phrasebank",)), SplitConfig()).val

    # The champion's scores of every training tweet and its accuracies: the same for every seed
    # and arm, so a reused champion reuses them too.
    cache = args.out / "champion" / "scores.json"
    if reuse and cache.exists():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        scored = [Prediction(**p) for p in cached["train"]]
        champion_figures = tuple(cached["champion"])
        print(f"champion scores of {len(scored)} tweets: reused from {cache}")
    else:
        scorer = load_scorer(champ_settings, "sentiment")
        t = time.perf_counter()
        scored = scorer.score([r.text for r in tweets.train])
        print(f"streamed {len(scored)} tweets through {scorer.model_version} in {time.perf_counter() - t:.0f}s")
        champion_figures = (accuracy(champ_settings, "v1", tweets.val), accuracy(champ_settings, "v1", phrasebank_val))
        cache.write_text(json.dumps({"train": [{f: getattr(p, f) for f in Prediction.__slots__} for p in scored],
                                     "champion": champion_figures}, default=lambda x: x.item()),  # numpy scalars
                         encoding="utf-8")
    champion_card = ModelRegistry(champ_settings.registry_dir).card("sentiment", "v1")
    order = list(range(len(tweets.train)))
    random.Random(7 + args.seed).shuffle(order)  # arrival order
    if args.stream:
        order = order[: args.stream]
    stream = [tweets.train[i] for i in order]
    champion_preds = [scored[i] for i in order]

    # Event times spread over a day: the per-hour budget shapes what the queue takes, as live.
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    step = timedelta(seconds=86_400 / len(stream))

    def as_scored(i: int, p: Prediction, version: str) -> ScoredMessage:
        return ScoredMessage(
            id=f"tw-{i}", kind=Kind.news, text=stream[i].text, model_name=champion_card.model_name,
            model_version=version, label=p.label, probs=p.probs, confidence=p.confidence, margin=p.margin,
            entropy=p.entropy, content_hash=i, event_time=(at := t0 + i * step), ingest_time=at, scored_time=at,
            src_partition=0, src_offset=i)

    def active_queue(settings: VigilSettings, version: str, preds: list[Prediction], start: int, want: int,
                     selector: Selector) -> tuple[list[int], int]:
        """What the queue selects from tweet ``start`` on until it holds ``want``, and where it
        stopped. A version other than the champion scores the rest of the stream first."""
        if version != "v1":
            t = time.perf_counter()
            preds[start:] = load_scorer(settings, "sentiment", version).score([r.text for r in stream[start:]])
            print(f"  {version} scored the {len(stream) - start} tweets left in {time.perf_counter() - t:.0f}s")
        picked = []
        for i in range(start, len(stream)):
            msg = as_scored(i, preds[i], version)
            if selector.decide(msg, msg.event_time).request is not None:
                picked.append(i)
                if len(picked) == want:
                    return picked, i + 1
        return picked, len(stream)

    random_pick = sorted(random.Random(11 + args.seed).sample(range(len(stream)), args.budget))
    figures = {"champion": champion_figures}
    outcomes = {}
    for name in arms:
        settings = VigilSettings(data_dir=args.out / name, **base)
        shutil.copytree(champ_settings.registry_dir, settings.registry_dir)
        # the day's stream as the champion scored it: VIGIL_RETRAIN_PRIOR_CORRECTION takes its class mix from there
        scored_store = open_store(settings)
        try:
            scored_store.write_scored([as_scored(i, p, "v1") for i, p in enumerate(champion_preds)])
        finally:
            scored_store.close()
        selector, preds, position, version = Selector(policy_from_settings(champ_settings)), list(champion_preds), 0, "v1"
        picked: list[int] = []
        took = 0.0
        store = open_feedback_store(settings)
        try:
            while len(picked) < args.budget and position < len(stream):
                want = min(round_size, args.budget - len(picked))
                if name == "active":
                    new, position = active_queue(settings, version, preds, position, want, selector)
                else:
                    new = random_pick[len(picked):len(picked) + want]
                    position = new[-1] + 1
                # Labelled just before now, in stream order (a millisecond apart): a round takes the
                # corrections newer than the last one read, up to its own start, and holds out the newest.
                labelled_at = datetime.now(UTC) - timedelta(milliseconds=len(new))
                store.write_corrections([
                    Correction(correction_id=Correction.make_id("sentiment", f"tw-{i}", "sim"), task="sentiment",
                               message_id=f"tw-{i}", text=stream[i].text, annotator="sim",
                               human_label=stream[i].label, model_label=preds[i].label,
                               model_version=version if name == "active" else "v1",  # what scored preds
                               source=CorrectionSource.queue, created_at=labelled_at + timedelta(milliseconds=k))
                    for k, i in enumerate(new)
                ])
                picked += new
                t = time.perf_counter()
                report = run_retrain(settings, "sentiment", store, force=True)
                took += time.perf_counter() - t
                version = report.challenger if report.outcome is Outcome.promoted else version
                print(f"{name}: {len(picked)} labels (to tweet {position} of {len(stream)}): {report.outcome.value} "
                      f"{report.challenger} in {time.perf_counter() - t:.0f}s: {report.reason}")
                print(f"  figures: {', '.join(f'{k}={v:.4g}' for k, v in report.figures.items())}")
        finally:
            store.close()
        outcomes[name] = (report, took)
        figures[name] = (accuracy(settings, version, tweets.val), accuracy(settings, version, phrasebank_val))
        print(f"{name}: {version} after {len(picked)} labels, retraining {took:.0f}s; "
              f"tweets val {figures[name][0]:.4f}, PhraseBank val {figures[name][1]:.4f}")

    print(f"\nfeedback lift, budget {args.budget} in rounds of {round_size}, seed {args.seed}, tweets val n={len(tweets.val)}, "
          f"PhraseBank val n={len(phrasebank_val)}; overrides: {args.overrides or 'none'}")
    print(f"{'model':<34} {'tweets acc':>10} {'PhraseBank acc':>15}")
    for name, label in (("champion", "PhraseBank-only champion (before)"), ("active", "after, active queue"),
                        ("random", "after, random queue")):
        if name not in figures:
            continue
        tw, pb = figures[name]
        gate = "" if name == "champion" else f"  last gate: {outcomes[name][0].outcome.value}"
        print(f"{label:<34} {tw:>10.4f} {pb:>15.4f}{gate}")
    if "active" in figures and "random" in figures:
        print(f"active - random: {figures['active'][0] - figures['random'][0]:+.4f} tweet accuracy")
    for name in arms:
        print(f"PhraseBank change ({name}): {figures[name][1] - figures['champion'][1]:+.4f}")
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
