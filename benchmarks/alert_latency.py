"""Event-to-alert latency on the embedded stack, and false alerts per hour of normal news replay.

Latency: an embedded Tansu broker, embedded chdb and one worker process (the real model from a
registry). Support messages (Banking77 texts) are offered at ``--rate`` msg/s for ``--seconds``;
every message is routed, and the rules make each one whose intent has one of
``--alert-priorities`` (default: all four, so every message alerts) raise an immediate
``priority_intent`` alert. Its latency is the time from handing the message to the Kafka producer
to the alert arriving on the alerts topic (raw topic -> scoring -> scored topic -> alerting agent
-> alerts topic). Messages scored with an alerting intent but not alerted on by the end, and
messages never scored, count as missing. The alerting stage alone (scored topic -> alerts topic)
is reported too, ``scored_per_s`` is what the worker sustained, and ``cpu_ms_per_msg`` the CPU time
the worker, the broker and this benchmark each spent per message scored. A warm-up message is waited
for first, so worker start-up is not measured.

False alerts: the bundled news (Twitter Financial News + PhraseBank) replayed through the alerting
core with the default rules, event times drawn as a Poisson process (``--news-per-hour``), labels
from the data set (no model): nothing is injected, so every alert counts as false. With
``--model-labels`` the same replay runs again with the registry's sentiment champion's own scores
(on the CPU), as the rules see them in production: the model's mistakes are where false alerts
come from. Only about one message in nine carries a cashtag, spread over some 1,200 tickers, so few
tickers ever reach a rule's minimum volume there; ``--busy-tickers N`` replays the same messages
again in a seeded random order (the tweets file groups them by label, which would be a real shock),
each about one of N made-up tickers, so that every ticker's windows are full.

False intent-spike alerts: the bundled Banking77 messages, in a seeded random order (the file is
grouped by intent, which would be one spike after another), routed with the bundled mapping and
fed to the intent-spike detector with the default rules for ``--ticket-hours`` of event time (a new
order each pass over the file), event times a Poisson process at ``--tickets-per-hour``, intents
from the data set. Nothing is injected: every intent-spike alert counts as false (P1 alerts are
not: every P1 message raises one by design).

    python -m benchmarks.alert_latency --registry /tmp/vq/models --rate 500 --rate 150 --seconds 30 \
        [--alert-priorities P1]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.worker_stack import cpu_seconds, running_worker
from models.engine import load_scorer
from models.triage_mapping import DEFAULT_PATH, TriageMapping, load_triage_mapping
from streams.alerting.contracts import TriageTicket
from streams.alerting.rules import AlertRules, SentimentAlerter
from streams.alerting.triage import IntentSpikeDetector, route
from streams.broker import EmbeddedBroker
from streams.contracts import ScoredMessage, SupportMessage
from streams.follow import quantile
from streams.replay import bundled_news
from streams.samples import support_json
from streams.settings import REPO_ROOT, VigilSettings
from streams.worker import WorkerProcess
from tests.fixtures.alerting import DATA, scored, scored_bundled_news

ALL_PRIORITIES = ["P1", "P2", "P3", "P4"]


def support_rows() -> list[tuple[str, str]]:
    """The bundled Banking77 messages: (text, intent), grouped by intent as the file is."""
    with (REPO_ROOT / "data" / "banking77" / "train.csv").open(encoding="utf-8", newline="") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def support_texts() -> list[str]:
    return [text for text, _ in support_rows()]


async def offer_and_collect(settings: VigilSettings, rate: float, seconds: float, texts: list[str],
                            alerting: set[str], worker: WorkerProcess, broker_pid: int) -> dict:
    """``alerting``: the intents whose messages raise an alert under the rules the worker runs."""
    bootstrap = settings.kafka_brokers
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    # Held fetches answer late on the embedded broker (see streams/kafka_fetch.py): the measuring
    # consumer polls as often as the worker does, so it adds no latency of its own.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms
    )
    await producer.start()
    await consumer.start()
    tps = [TopicPartition(t, p) for t in (settings.topic_alerts, settings.topic_scored) for p in range(settings.topic_partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    arrived: dict[str, float] = {}
    scored: dict[str, float] = {}
    scored_label: dict[str, str] = {}

    async def collect(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for tp, records in (await consumer.getmany(timeout_ms=100)).items():
                now = time.time()
                for r in records:
                    body = json.loads(r.value)
                    if tp.topic == settings.topic_scored:
                        scored.setdefault(body["id"], now)
                        scored_label[body["id"]] = body["label"]
                    elif body["rule"] == "priority_intent":
                        arrived.setdefault(body["top_messages"][0]["id"], now)

    def send(mid: str, text: str):
        body = support_json(id=mid, text=text, created_at=datetime.now(UTC).isoformat())
        return producer.send(settings.topic_support, key=mid.encode(), value=body)

    stop = asyncio.Event()
    collector = asyncio.create_task(collect(stop))
    try:
        # Warm-up: the worker is up, has its partitions and has scored once.
        deadline = time.monotonic() + 600
        warm = f"warm-{uuid.uuid4().hex[:6]}"
        await (await send(warm, "my card was stolen"))
        while warm not in arrived:
            if not worker.alive():
                tail = worker.log_path.read_text(errors="replace")[-3000:]  # its folder goes with this run
                raise SystemExit(f"the worker exited before the warm-up alert; its log ends:\n{tail}")
            if time.monotonic() > deadline:
                raise SystemExit("the worker raised no alert for the warm-up message in 10 minutes; see its log")
            await asyncio.sleep(0.2)

        sent: dict[str, float] = {}
        n = int(rate * seconds)
        def cpu_so_far() -> dict[str, float]:
            return {"worker": cpu_seconds(worker.proc.pid), "broker": cpu_seconds(broker_pid),
                    "this benchmark": time.process_time()}

        cpu_before = cpu_so_far()
        start = time.monotonic()
        futures = []
        for i in range(n):
            due = start + i / rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            mid = f"lat-{i}"
            sent[mid] = time.time()
            futures.append(await send(mid, texts[i % len(texts)]))
        await asyncio.gather(*futures)
        offered_s = time.monotonic() - start
        drain_until = time.monotonic() + max(60.0, seconds * 2)
        while time.monotonic() < drain_until and (
            len(scored.keys() & sent.keys()) < n
            or any(scored_label[m] in alerting and m not in arrived for m in sent.keys() & scored.keys())
        ):
            await asyncio.sleep(0.5)
        cpu_s = {k: v - cpu_before[k] for k, v in cpu_so_far().items()}
    finally:
        stop.set()
        await collector
        await producer.stop()
        await consumer.stop()
    # Expected alerts: the messages scored with an alerting intent, and those never scored at all.
    expected = [m for m in sent if m not in scored or scored_label[m] in alerting]
    lat = [(arrived[m] - sent[m]) * 1000 for m in expected if m in arrived]
    # The alerting stage alone: from the scored message reaching the scored topic to its alert.
    stage = [(arrived[m] - scored[m]) * 1000 for m in expected if m in arrived and m in scored]
    # What the worker sustained: messages scored per second, from the first one offered to the last scored.
    scored_at = [scored[m] for m in sent if m in scored]
    span_s = max(scored_at) - min(sent.values()) if scored_at else None
    return {
        "rate_offered": rate, "sent": n, "send_rate_achieved": n / offered_s,
        "scored_per_s": len(scored_at) / span_s if span_s else None, "alerts_expected": len(expected),
        "alerted": len(lat), "missing": len(expected) - len(lat), "p50_ms": quantile(lat, 0.5) if lat else None,
        "p99_ms": quantile(lat, 0.99) if lat else None, "max_ms": max(lat) if lat else None,
        "mean_ms": statistics.fmean(lat) if lat else None,
        "scored_to_alert_p50_ms": quantile(stage, 0.5) if stage else None,
        "scored_to_alert_p99_ms": quantile(stage, 0.99) if stage else None,
        # What each process spent per message scored, offering and drain included: on a saturated
        # machine, the cost to cut, steadier than the rates and latencies.
        "cpu_ms_per_msg": {k: round(1000 * v / len(scored_at), 3) for k, v in cpu_s.items()} if scored_at else None,
        "load_avg_1m_at_end": os.getloadavg()[0],
    }


def latency(registry: Path, rates: list[float], seconds: float, partitions: int, cpu_threads: int | None,
            batch_within_s: float | None, priorities: list[str]) -> list[dict]:
    mapping = TriageMapping.model_validate_json(DEFAULT_PATH.read_bytes())
    alerting = {intent for intent, route in mapping.intents.items() if route.priority in priorities}
    results = []
    texts = support_texts()
    random.Random(7).shuffle(texts)
    for rate in rates:
        with tempfile.TemporaryDirectory(prefix="vigil-alert-bench-") as tmp:
            root = Path(tmp)
            (root / "vigil").mkdir()
            shutil.copytree(registry, root / "vigil" / "models")
            rules = root / "rules.json"
            rules.write_text(json.dumps({"triage": {"alert_priorities": priorities}}))
            with EmbeddedBroker(log_dir=root / "logs") as broker:
                env = {
                    "VIGIL_DATA_DIR": str(root / "vigil"),
                    "VIGIL_KAFKA_BROKERS": broker.bootstrap,
                    "VIGIL_TOPIC_PARTITIONS": str(partitions),
                    "VIGIL_ALERT_RULES_PATH": str(rules),
                    "VIGIL_TRIAGE_MIN_CONFIDENCE": "0",  # every message is routed, so every one alerts
                    "VIGIL_DEVICE": "cpu",
                    **({"VIGIL_CPU_THREADS": str(cpu_threads)} if cpu_threads else {}),
                    **({"VIGIL_BATCH_WITHIN_S": str(batch_within_s)} if batch_within_s else {}),
                }
                with running_worker(broker, env, root / "worker.log", stop_timeout_s=20) as (settings, worker):
                    result = asyncio.run(offer_and_collect(settings, rate, seconds, texts, alerting, worker, broker.pid))
            results.append(result)
            print(json.dumps(result), flush=True)
    return results


def model_scored_news(registry: Path) -> list[ScoredMessage]:
    """The bundled news with the registry's sentiment champion's scores instead of the data set's labels."""
    with tempfile.TemporaryDirectory(prefix="vigil-false-alerts-") as tmp:
        (Path(tmp) / "models").symlink_to(registry.resolve())
        engine = load_scorer(VigilSettings(data_dir=Path(tmp), device="cpu"), "sentiment")
        news = list(bundled_news(DATA))
        t0 = time.perf_counter()
        predictions = engine.score([item.text for item in news])
        print(json.dumps({"scored": len(news), "model_version": engine.model_version, "precision": engine.precision,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return [scored(item, p.label, engine.labels, offset=n, model_version=engine.model_version, probs=p.probs)
            for n, (item, p) in enumerate(zip(news, predictions, strict=True))]


def label_agreement(model: list[ScoredMessage], data: list[ScoredMessage]) -> dict:
    """How the model's labels of the replay differ from the data set's."""
    return {
        "agreement": round(sum(m.label == d.label for m, d in zip(model, data, strict=True)) / len(data), 4),
        "model_mix": {k: round(v / len(model), 4) for k, v in sorted(Counter(m.label for m in model).items())},
        "data_mix": {k: round(v / len(data), 4) for k, v in sorted(Counter(d.label for d in data).items())},
    }


def busy_tickers(news: list[ScoredMessage], n: int, seed: int) -> list[ScoredMessage]:
    rng = random.Random(seed)
    shuffled = rng.sample(news, len(news))
    return [m.model_copy(update={"tickers": [f"BUSY{rng.randrange(n)}"]}) for m in shuffled]


def false_alerts(labels: str, news: list[ScoredMessage], news_per_hour: float, seed: int) -> dict:
    rules = AlertRules()
    rng = random.Random(seed)
    t = news[0].event_time
    alerter = SentimentAlerter(rules.sentiment)
    by_rule: Counter[str] = Counter()
    for m in news:
        t += timedelta(seconds=rng.expovariate(news_per_hour / 3600))
        by_rule.update(a.rule for a in alerter.feed(m.model_copy(update={"event_time": t})).alerts)
    by_rule.update(a.rule for a in alerter.advance(t + timedelta(hours=2)))
    hours = (t - news[0].event_time) / timedelta(hours=1)
    return {
        "labels": labels, "messages": len(news), "news_per_hour": news_per_hour, "simulated_hours": round(hours, 2),
        "alerts": sum(by_rule.values()), "by_rule": dict(by_rule),
        "false_alerts_per_hour": sum(by_rule.values()) / hours,
    }


def support_tickets() -> list[TriageTicket]:
    """The bundled Banking77 messages as routed tickets, in file order, event times to be set."""
    rows = support_rows()
    intents = sorted({intent for _, intent in rows})
    mapping, min_confidence = load_triage_mapping(intents), AlertRules().triage.min_confidence
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [route(scored(SupportMessage(id=f"s-{n}", channel="chat", customer_id="c", text=text, created_at=t0),
                         intent, intents, offset=n), mapping, min_confidence)
            for n, (text, intent) in enumerate(rows)]


def false_intent_spikes(tickets: list[TriageTicket], tickets_per_hour: float, hours: float, seed: int) -> dict:
    """``hours`` of tickets at ``tickets_per_hour``: the bundled ones in a new seeded order each pass."""
    rng = random.Random(seed)
    t = start = tickets[0].event_time
    end = start + timedelta(hours=hours)
    detector = IntentSpikeDetector(AlertRules().triage.intent_spike)
    by_intent: Counter[str] = Counter()
    fed = 0
    while t < end:
        for ticket in rng.sample(tickets, len(tickets)):
            t += timedelta(seconds=rng.expovariate(tickets_per_hour / 3600))
            if t >= end:
                break
            fed += 1
            update = {"event_time": t, "message_id": f"{ticket.message_id}-{fed}"}
            by_intent.update(a.intent for a in detector.feed_event(ticket.model_copy(update=update)).alerts)
    by_intent.update(a.intent for a in detector.advance(end + timedelta(hours=2)))
    return {
        "tickets": fed, "tickets_per_hour": tickets_per_hour, "simulated_hours": hours,
        "alerts": sum(by_intent.values()), "by_intent": dict(by_intent.most_common()),
        "false_alerts_per_hour": sum(by_intent.values()) / hours,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", type=Path, default=Path(".vigil/models"), help="A registry with both tasks.")
    ap.add_argument("--rate", type=float, action="append", help="Offered msg/s (repeatable); default 500.")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--news-per-hour", type=float, action="append", help="Default: 120, 600 and 3600.")
    ap.add_argument("--tickets-per-hour", type=float, action="append", help="Default: 120, 600 and 3600.")
    ap.add_argument("--ticket-hours", type=float, default=48.0, help="Simulated hours of support traffic per rate.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-threads", type=int, help="The worker's CPU threads (default: the usable cores).")
    ap.add_argument("--batch-within-s", type=float, help="The worker's VIGIL_BATCH_WITHIN_S (default: the setting's).")
    ap.add_argument("--alert-priorities", nargs="+", choices=ALL_PRIORITIES, default=ALL_PRIORITIES,
                    help="Priorities whose messages alert. Default: all, so every message alerts (the worst "
                    "case); the product's default rules alert P1 only, 8%% of Banking77.")
    ap.add_argument("--model-labels", action="store_true",
                    help="Replay the false-alert news with the --registry sentiment champion's scores too.")
    ap.add_argument("--busy-tickers", type=int, metavar="N",
                    help="Replay the false-alert news shuffled over N made-up tickers too.")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    replays = {"data set": list(scored_bundled_news())}
    if args.model_labels:
        by_model = model_scored_news(args.registry)
        print(json.dumps({"labels": label_agreement(by_model, replays["data set"])}), flush=True)
        replays[f"model {by_model[0].model_version}"] = by_model
    if args.busy_tickers:
        replays |= {f"{labels}, shuffled over {args.busy_tickers} tickers": busy_tickers(news, args.busy_tickers, args.seed)
                    for labels, news in replays.items()}
    for labels, news in replays.items():
        for per_hour in args.news_per_hour or [120.0, 600.0, 3600.0]:
            print(json.dumps({"false_alerts": false_alerts(labels, news, per_hour, args.seed)}), flush=True)
    tickets = support_tickets()
    for per_hour in args.tickets_per_hour or [120.0, 600.0, 3600.0]:
        spikes = false_intent_spikes(tickets, per_hour, args.ticket_hours, args.seed)
        print(json.dumps({"false_intent_spikes": spikes}), flush=True)
    if not args.skip_latency:
        latency(args.registry, args.rate or [500.0], args.seconds, args.partitions, args.cpu_threads, args.batch_within_s,
                args.alert_priorities)


if __name__ == "__main__":
    main()
