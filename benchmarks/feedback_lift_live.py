"""The feedback-lift benchmark through the live loop (issue 5): topics, worker, queue, API, gate, hot swap.

`benchmarks.feedback_lift` runs selection and retraining in-process. This one runs what a deployment
runs, for one queue (``--arm``) at a time:

1. An embedded Tansu broker, and one `vigil worker` (embedded chdb) that also serves the labelling
   API and runs the background retrain job. Its champion is the PhraseBank-only sentiment model.
2. The evaluation sets go through the worker first: the tweets' and PhraseBank's held-out splits
   as news (ids ``v1-...``), scored by the champion.
3. The tweets' training split streams in as news, in the seeded arrival order of
   `benchmarks.feedback_lift`, with event times spread over one day.
4. A simulated annotator with the tweets' own labels:
   - ``active``: leases items from the worker's queue (POST /api/queue/lease) and labels them
     (POST /api/items/{id}/label), skipping anything that is not a stream tweet, until BUDGET labels;
   - ``random``: posts BUDGET corrections for tweets drawn uniformly from the stream
     (POST /api/corrections), the draw of `benchmarks.feedback_lift`.
5. The worker's retrain job sees the trigger (BUDGET corrections) and runs a round: fine-tune,
   gate, promote. Meanwhile "tick" tweets arrive at ``--tick-rate``; their end-to-end latency (sent
   -> on the scored topic) shows what training next to the worker and the hot swap cost the stream.
6. After the swap, the evaluation sets go through the worker again (ids ``v2-...``), now scored by
   the new champion. A refused challenger is not scored by the worker: its figures are then measured
   in-process (models.engine.load_scorer), and say so.

    python -m benchmarks.feedback_lift --budget 500 --arms active --out OUT   # trains OUT/champion
    python -m benchmarks.feedback_lift_live --champion OUT/champion/models --triage REGISTRY --arm active --seed 0 \
        [--budget 500] [--replay 1000] [--threads 1] [--set retrain_lr=1e-4 ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import aiohttp  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from benchmarks.feedback_lift import accuracy  # noqa: E402
from benchmarks.worker_stack import running_worker  # noqa: E402
from feedback.auth import TokenBook, tokens_path  # noqa: E402
from models.data import SplitConfig, stratified_split  # noqa: E402
from models.tasks import Row, get_task  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.contracts import Kind  # noqa: E402
from streams.follow import quantile  # noqa: E402
from streams.replay import OutgoingMessage, replay  # noqa: E402
from streams.samples import news_json  # noqa: E402
from streams.settings import REPO_ROOT, VigilSettings  # noqa: E402
from streams.worker import WorkerProcess  # noqa: E402
from tests.e2e_stack import free_port, until_served  # noqa: E402

STREAM_DAY = datetime(2026, 11, 1, tzinfo=UTC)
# another day: the evaluation sets spend none of the stream's hourly budgets
EVAL_DAY = datetime(2026, 10, 1, tzinfo=UTC)


@dataclass
class Observed:
    """What the benchmark reads back from the worker's topics."""

    scored: dict[str, dict] = field(default_factory=dict)  # id -> first scored record (+ "_at": arrival time)
    events: list[dict] = field(default_factory=list)
    repeats: int = 0  # scored records of an id already scored: double scoring

    def all_scored(self, ids) -> bool:
        return all(i in self.scored for i in ids)


async def follow(settings: VigilSettings, seen: Observed) -> None:
    """Read the scored and model-events topics from the start into ``seen`` until cancelled."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, enable_auto_commit=False,
                                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in (settings.topic_scored, settings.topic_model_events)
               for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                now = time.perf_counter()
                for r in records:
                    value = json.loads(r.value)
                    if tp.topic != settings.topic_scored:
                        seen.events.append(value)
                    elif value["id"] in seen.scored:
                        seen.repeats += 1
                    else:
                        seen.scored[value["id"]] = {**value, "_at": now}
    finally:
        await consumer.stop()


async def wait_for(cond, timeout_s: float, what: str, worker: WorkerProcess) -> None:
    deadline = time.perf_counter() + timeout_s
    while not cond():
        if not worker.alive():
            raise RuntimeError(f"the worker died while waiting for {what}; see {worker.log_path}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f}s; see {worker.log_path}")
        await asyncio.sleep(0.2)


def news(msg_id: str, text: str, at: datetime) -> OutgoingMessage:
    return OutgoingMessage.raw(Kind.news, msg_id, news_json(id=msg_id, headline=text, published_at=at.isoformat()))


def eval_messages(prefix: str, sets: dict[str, list[Row]]) -> dict[str, tuple[OutgoingMessage, str]]:
    """id -> (message, true label) for each evaluation set, ids ``{prefix}-{set}-{i}``."""
    out = {}
    for name, rows in sets.items():
        for i, r in enumerate(rows):
            msg_id = f"{prefix}-{name}-{i}"
            out[msg_id] = (news(msg_id, r.text, EVAL_DAY + timedelta(seconds=len(out))), r.label)
    return out


def scored_accuracy(seen: Observed, wanted: dict[str, tuple[OutgoingMessage, str]],
                    name: str) -> tuple[float, set[str]]:
    """Accuracy on one evaluation set as the worker scored it, and the model versions that scored it."""
    ids = [i for i in wanted if i.split("-")[1] == name]
    right = sum(seen.scored[i]["label"] == wanted[i][1] for i in ids)
    return right / len(ids), {seen.scored[i]["model_version"] for i in ids}


class Annotator:
    """The simulated person: the labelling API with a token."""

    def __init__(self, base: str, token: str, truth: dict[str, str]) -> None:
        self.base, self.truth = base, truth
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                          timeout=aiohttp.ClientTimeout(total=60))
        self.labelled: list[str] = []
        self.skipped = 0

    async def close(self) -> None:
        await self.http.close()

    async def _post(self, path: str, body: dict) -> dict:
        async with self.http.post(f"{self.base}{path}", json=body) as r:
            if r.status not in (200, 201):
                raise RuntimeError(f"POST {path}: {r.status} {await r.text()}")
            return await r.json()

    async def ready(self, worker: WorkerProcess) -> None:
        await until_served(self.http, f"{self.base}/api/queue", 300, alive=worker.alive)

    async def work_queue(self, budget: int, stream_done) -> None:
        """Label what the queue hands out until ``budget`` labels, or until the stream is scored and
        the queue has stayed empty for 10 s."""
        idle_since = None
        item = (await self._post("/api/queue/lease", {"task": "sentiment"}))["item"]
        while len(self.labelled) < budget:
            if item is None:
                if stream_done():
                    idle_since = idle_since or time.perf_counter()
                    if time.perf_counter() - idle_since > 10:
                        return
                await asyncio.sleep(0.5)
                item = (await self._post("/api/queue/lease", {"task": "sentiment"}))["item"]
                continue
            idle_since = None
            label = self.truth.get(item["message_id"])
            if label is None:  # not a stream tweet (an evaluation or tick message): not ours to label
                step = await self._post(f"/api/items/{item['item_id']}/skip", {"next_task": "sentiment"})
                self.skipped += 1
            else:
                step = await self._post(f"/api/items/{item['item_id']}/label",
                                        {"label": label, "next_task": "sentiment"})
                self.labelled.append(item["message_id"])
            item = step["item"]

    async def correct(self, picks: list[tuple[str, str, dict]]) -> None:
        """POST a correction per (message id, text, scored record), in order."""
        for msg_id, text, scored in picks:
            await self._post("/api/corrections", {
                "task": "sentiment", "message_id": msg_id, "text": text, "human_label": self.truth[msg_id],
                "model_label": scored["label"], "model_version": scored["model_version"]})
            self.labelled.append(msg_id)


async def evaluate(settings: VigilSettings, seen: Observed, worker: WorkerProcess, prefix: str,
                   evals: dict[str, list[Row]]) -> tuple[dict[str, float], set[str]]:
    """Accuracy per evaluation set as the worker scores it now, and the versions that scored it."""
    wanted = eval_messages(prefix, evals)
    await replay(settings.kafka_brokers, settings.raw_topics, [m for m, _ in wanted.values()])
    await wait_for(lambda: seen.all_scored(wanted), 600, f"the worker scoring the evaluation sets ({prefix})", worker)
    figures, versions = {}, set()
    for name in evals:
        figures[name], by = scored_accuracy(seen, wanted, name)
        versions |= by
    return figures, versions


async def tick_until_round_ends(settings: VigilSettings, seen: Observed, worker: WorkerProcess, texts: list[str],
                                rate: float, timeout_s: float) -> dict[str, float]:
    """Send a tweet every 1/``rate`` s until the worker swapped, or the round ended without a
    promotion. Returns tick id -> send time."""
    ticks: dict[str, float] = {}
    deadline = time.perf_counter() + timeout_s
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers)
    await producer.start()
    try:
        while not any(e["kind"] in ("swapped", "gate_refused", "retrain_failed") for e in seen.events):
            if not worker.alive() or time.perf_counter() > deadline:
                raise RuntimeError(f"no swap within {timeout_s:.0f}s of the last label; see {worker.log_path}")
            msg = news(f"tick-{len(ticks)}", texts[len(ticks) % len(texts)], EVAL_DAY + timedelta(hours=2))
            ticks[msg.key.decode()] = time.perf_counter()
            await producer.send_and_wait(settings.topic_news, key=msg.key, value=msg.value)
            await asyncio.sleep(1 / rate)
    finally:
        await producer.stop()
    return ticks


def tick_figures(seen: Observed, ticks: dict[str, float], swap_at: float) -> dict[str, int]:
    """End-to-end latency of the ticks; and, since they arrive in batches, the longest gap between
    arrivals within 10 s of the swap against the longest elsewhere: a stall shows as a long gap."""
    latency = [seen.scored[i]["_at"] - sent for i, sent in ticks.items() if i in seen.scored]
    arrivals = sorted(seen.scored[i]["_at"] for i in ticks if i in seen.scored)
    gaps = [(b - a, abs(b - swap_at) < 10) for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {"sent": len(ticks), "scored": len(latency),
            "latency_p50_ms": round(1000 * quantile(latency, 0.5)),
            "latency_p99_ms": round(1000 * quantile(latency, 0.99)),
            "latency_max_ms": round(1000 * max(latency, default=float("nan"))),
            "longest_gap_near_swap_ms": round(1000 * max((g for g, near in gaps if near), default=0)),
            "longest_gap_elsewhere_ms": round(1000 * max((g for g, near in gaps if not near), default=0))}


async def drive(args, settings: VigilSettings, token: str, worker: WorkerProcess, stream: list[Row],
                evals: dict[str, list[Row]]) -> dict:
    seen = Observed()
    reader = asyncio.create_task(follow(settings, seen))
    truth = {f"tw-{i}": r.label for i, r in enumerate(stream)}
    annotator = Annotator(f"http://{settings.ui_host}:{settings.ui_port}", token, truth)
    result: dict = {"arm": args.arm, "seed": args.seed, "budget": args.budget, "stream": len(stream),
                    "overrides": args.overrides}
    try:
        await annotator.ready(worker)
        figures, versions = await evaluate(settings, seen, worker, "v1", evals)
        result |= {f"before_{k}": v for k, v in figures.items()} | {"champion": "/".join(sorted(versions))}
        print(f"champion {result['champion']} on the evaluation sets: tweets {result['before_tweets']:.4f}, "
              f"PhraseBank {result['before_phrasebank']:.4f}", flush=True)

        step = timedelta(seconds=86_400 / len(stream))
        t = time.perf_counter()
        await replay(settings.kafka_brokers, settings.raw_topics,
                     [news(f"tw-{i}", r.text, STREAM_DAY + i * step) for i, r in enumerate(stream)])
        stream_done = lambda: seen.all_scored(truth)  # noqa: E731
        if args.arm == "active":
            await annotator.work_queue(args.budget, stream_done)
        await wait_for(stream_done, 600, "the worker scoring the stream", worker)
        if args.arm == "random":
            picks = sorted(random.Random(11 + args.seed).sample(range(len(stream)), args.budget))
            await annotator.correct([(f"tw-{i}", stream[i].text, seen.scored[f"tw-{i}"]) for i in picks])
        if len(annotator.labelled) < args.budget:
            raise RuntimeError(f"the {args.arm} queue gave {len(annotator.labelled)} labels, not {args.budget}: the "
                               "trigger (VIGIL_RETRAIN_MIN_CORRECTIONS = budget) cannot fire")
        result["stream_scored_s"] = round(max(seen.scored[i]["_at"] for i in truth) - t, 1)
        result["labelled"], result["skipped"] = len(annotator.labelled), annotator.skipped
        result["queue_reached_tweet"] = 1 + max(int(i.removeprefix("tw-")) for i in annotator.labelled)
        print(f"stream scored in {result['stream_scored_s']}s; {len(annotator.labelled)} labels "
              f"({annotator.skipped} skipped); waiting for the round", flush=True)

        labelled_at = time.perf_counter()
        ticks = await tick_until_round_ends(settings, seen, worker, [r.text for r in evals["tweets"]], args.tick_rate,
                                            args.round_timeout_s)
        swap_at = time.perf_counter()
        await asyncio.sleep(5)  # ticks sent just before the swap arrive
        end = next(e for e in seen.events if e["kind"] in ("promoted", "gate_refused", "retrain_failed"))
        result |= {"outcome": end["kind"], "gate": end["detail"],
                   "round_s": round(end["figures"].get("round_seconds", float("nan")), 1),
                   "train_s": round(end["figures"].get("train_seconds", float("nan")), 1),
                   "last_label_to_swap_s": round(swap_at - labelled_at, 1),
                   "ticks": tick_figures(seen, ticks, swap_at)}
        if end["kind"] == "promoted":
            swapped = next(e for e in seen.events if e["kind"] == "swapped")
            result["swap_load_s"] = round(swapped["figures"]["load_seconds"], 2)
            figures, versions = await evaluate(settings, seen, worker, "v2", evals)
            if versions != {end["model_version"]}:
                raise RuntimeError(f"after the swap to {end['model_version']} the evaluation sets were scored by "
                                   f"{sorted(versions)}")
            result |= {f"after_{k}": v for k, v in figures.items()} | {"after_scored_by": f"worker, {versions.pop()}"}
        result["scored_twice"] = seen.repeats
        return result
    finally:
        await annotator.close()
        reader.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--champion", type=Path, required=True,
                    help="A registry whose sentiment champion is the PhraseBank-only model (OUT/champion/models "
                         "of benchmarks.feedback_lift).")
    ap.add_argument("--triage", type=Path, required=True,
                    help="A registry with a triage champion: the worker scores support messages too (none are sent).")
    ap.add_argument("--arm", choices=["active", "random"], required=True)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0,
                    help="Stream order, random draw and retrain seed, as in feedback_lift.")
    ap.add_argument("--replay", type=int, default=None, help="retrain_replay_size (default: the setting's).")
    ap.add_argument("--threads", type=int, default=1, help="Torch threads of the worker and of the training process.")
    ap.add_argument("--tick-rate", type=float, default=10.0, help="Tweets per second sent while the round runs.")
    ap.add_argument("--round-timeout-s", type=float, default=3600.0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="A VigilSettings field for the worker (repeatable).")
    ap.add_argument("--out", type=Path, default=Path(".vigil-bench/feedback-lift-live"))
    args = ap.parse_args()

    data = REPO_ROOT / "data"
    tweets = stratified_split(get_task("sentiment").load(data, ("twitter_financial_news",)), SplitConfig())
    phrasebank_val = stratified_split(get_task("sentiment").load(data, ("financial_phrasebank",)), SplitConfig()).val
    order = list(range(len(tweets.train)))
    random.Random(7 + args.seed).shuffle(order)  # the arrival order of benchmarks.feedback_lift
    stream = [tweets.train[i] for i in order]
    evals = {"tweets": tweets.val, "phrasebank": phrasebank_val}

    root = args.out / f"{args.arm}-s{args.seed}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(args.champion / "sentiment", root / "vigil" / "models" / "sentiment")
    shutil.copytree(args.triage / "triage", root / "vigil" / "models" / "triage")
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in VigilSettings.model_fields:
            ap.error(f"--set takes KEY=VALUE with KEY a VigilSettings field, got {item!r}")
        overrides[f"VIGIL_{key.upper()}"] = value
    started = time.perf_counter()
    with EmbeddedBroker(log_dir=root / "logs") as broker:
        env = {
            "VIGIL_DATA_DIR": str(root / "vigil"), "VIGIL_KAFKA_BROKERS": broker.bootstrap,
            "VIGIL_CLICKHOUSE_URL": "", "VIGIL_DEVICE": "cpu", "VIGIL_CPU_THREADS": str(args.threads),
            "VIGIL_MAX_LENGTH": "64", "VIGIL_RETRAIN_MAX_LENGTH": "64",
            "VIGIL_UI_IN_WORKER": "true", "VIGIL_UI_HOST": "127.0.0.1", "VIGIL_UI_PORT": str(free_port()),
            "VIGIL_UI_QUEUE_REFRESH_S": "1",
            "VIGIL_RETRAIN_IN_WORKER": "true", "VIGIL_RETRAIN_CHECK_INTERVAL_S": "2",
            "VIGIL_MODEL_POLL_INTERVAL_S": "1",
            # the trigger is the budget and nothing else: a round on part of the labels would use them up
            "VIGIL_RETRAIN_MIN_CORRECTIONS": str(args.budget),
            "VIGIL_RETRAIN_MIN_CORRECTIONS_AFTER_INTERVAL": str(args.budget),
            "VIGIL_RETRAIN_ON_DRIFT": "false", "VIGIL_RETRAIN_SEED": str(args.seed),
            # the simulated annotator never undoes: its labels count at once, not after the undo window
            "VIGIL_UI_UNDO_WINDOW_S": "0",
            **({"VIGIL_RETRAIN_REPLAY_SIZE": str(args.replay)} if args.replay is not None else {}),
            **overrides,
        }
        token = TokenBook(tokens_path(root / "vigil")).add("sim")
        with running_worker(broker, env, root / "worker.log", stop_timeout_s=60) as (settings, worker):
            result = asyncio.run(drive(args, settings, token, worker, stream, evals))
    if result["outcome"] != "promoted":
        challenger = next((e for e in reversed(result_events(settings)) if e.kind == "gate_refused"), None)
        if challenger is not None:
            result.update({f"after_{name}": accuracy(settings, challenger.model_version, rows)
                           for name, rows in evals.items()})
            result["after_scored_by"] = f"in-process, {challenger.model_version} (refused: never scored by the worker)"
    result["total_s"] = round(time.perf_counter() - started)
    print(json.dumps(result), flush=True)
    print(f"\n{args.arm} queue, seed {args.seed}: tweets val {result['before_tweets']:.4f} -> "
          f"{result.get('after_tweets', float('nan')):.4f}, PhraseBank val {result['before_phrasebank']:.4f} -> "
          f"{result.get('after_phrasebank', float('nan')):.4f} ({result['outcome']}; {result.get('after_scored_by')})")


def result_events(settings: VigilSettings):
    from feedback.store import open_feedback_store

    store = open_feedback_store(settings)
    try:
        return store.fetch_model_events("sentiment")
    finally:
        store.close()


if __name__ == "__main__":
    main()
