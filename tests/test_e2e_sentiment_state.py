"""Sentiment alerting state across workers, end to end: two worker processes on the Tansu broker
sharing Debian's clickhouse-server 18.16, rules with short windows, scored news put straight on
the scored topic (so every label and event time is the test's).

Worker A starts alone; B joins mid-stream and takes a ticker-events partition over from A's
checkpoint. Then a negative shock goes into one ticker's windows, and the worker that holds that
ticker's partition is SIGKILLed before the shocked window closes: the survivor restores the
partition from the dead worker's checkpoint and closes the window. The alerts stored must be
exactly those of one alerting core that saw the whole stream without a stop: the shock alerts
once, with its messages as contributors, and the steady tickers never.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from streams.alerting.rules import AlertRules, SentimentAlerter
from streams.clickhouse import open_store
from streams.contracts import ScoredMessage
from streams.replay import BUNDLED_START
from streams.settings import VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import stack_env, use_stack
from tests.fixtures.alerting import scored_news

pytestmark = pytest.mark.slow

RULES = {
    "sentiment": {
        "window": {"size_minutes": 5, "step_minutes": 1, "lateness_minutes": 1},
        "baseline": {"warmup_windows": 3},  # the 5-minute windows learned by minute 15: warm before the shock
        "volume_spike": {"enabled": False},  # the first windows fill up: not what this test is about
    }
}
TICKERS = ("AAA", "SHK", "CCC", "VGLX")  # two on each of the two ticker-events partitions
SHOCKED, SHOCK_MINUTES = "SHK", (22, 23)
SHOCKED_PARTITION = 0  # murmur2(b"SHK") % 2, as the producer's default partitioner places it
T0 = BUNDLED_START


def _minute(m: int) -> list[ScoredMessage]:
    """Every ticker posts at the same three seconds of each minute, so each partition's event clock
    moves exactly as one clock over all of them would."""
    out = []
    for s, second in enumerate((10, 30, 50)):
        for ticker in TICKERS:
            shocked = ticker == SHOCKED and m in SHOCK_MINUTES
            label = "negative" if shocked else ("positive", "neutral", "positive")[s]
            mid = f"{'shock' if shocked else 'n'}-{ticker}-{m}-{s}"
            out.append(scored_news(mid, T0 + timedelta(minutes=m, seconds=second), label, ticker=ticker))
    return out


def _phase(minutes: range) -> list[ScoredMessage]:
    return [msg for m in minutes for msg in _minute(m)]


@pytest.fixture
def two_workers(tmp_path: Path, tiny_registry: Path, kafka_broker, clickhouse_server, monkeypatch):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    env = stack_env(
        tmp_path, kafka_broker.bootstrap, clickhouse_server.up(), partitions=2,
        VIGIL_ALERT_RULES_PATH=str(rules), VIGIL_ALERT_CHECKPOINT_INTERVAL_S="1",
    )  # fmt: skip
    settings = use_stack(env, monkeypatch, tiny_registry)
    workers = [WorkerProcess(kafka_broker.bootstrap, tmp_path / f"worker-{n}.log", {**env, "VIGIL_WORKER_ID": n})
               for n in ("a", "b")]
    yield settings, workers
    for w in workers:
        w.stop(timeout_s=10)


async def _send(settings: VigilSettings, messages: list[ScoredMessage]) -> None:
    # One scored partition keeps the stream in event-time order into the fan-out.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_brokers)
    await producer.start()
    try:
        for m in messages:
            await producer.send(settings.topic_scored, m.model_dump_json().encode(), key=m.id.encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def _wait(what: str, done, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _checkpointed_partitions(settings: VigilSettings) -> set[int]:
    with open_store(settings) as store:
        rows = store._query("test", f"SELECT DISTINCT partition FROM {settings.clickhouse_database}.alerting_state")
    return {int(r[0]) for r in rows}


def _stored_alerts(settings: VigilSettings) -> dict[str, dict]:
    with open_store(settings) as store:
        return {a.id: a.model_dump(mode="json") for a in store.fetch_alerts()}


def _expected(stream: list[ScoredMessage]) -> dict[str, dict]:
    alerter = SentimentAlerter(AlertRules.from_mapping(RULES).sentiment)
    return {a.id: a.model_dump(mode="json") for m in stream for a in alerter.feed(m).alerts}


def _log(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace")


def _last_owner(partition: int, *workers: WorkerProcess) -> WorkerProcess:
    """The worker that took ``partition`` of the ticker-events topic over last (JSON log times)."""
    def last_take(w: WorkerProcess) -> str:
        lines = [json.loads(line) for line in _log(w).splitlines() if f"sentiment partition {partition}:" in line]
        return max((line["time"] for line in lines), default="")
    return max(workers, key=last_take)


def test_sentiment_state_follows_its_partition_through_a_rebalance_and_a_sigkill(two_workers):
    settings, (a, b) = two_workers
    phases = [_phase(range(0, 15)), _phase(range(15, 22)), _phase(range(22, 24)), _phase(range(24, 40)) + _minute(50)]
    stream = [m for p in phases for m in p]
    expected = _expected(stream)
    shock = [x for x in expected.values() if x["ticker"] == SHOCKED]
    assert len(shock) == 1 and {x["ticker"] for x in expected.values()} == {SHOCKED}, "the scenario itself is off"

    a.start()
    asyncio.run(_send(settings, phases[0]))
    _wait("A's first checkpoints of both partitions", lambda: _checkpointed_partitions(settings) == {0, 1})

    b.start()
    # B has joined once A has been given its share back after the rebalance B's arrival caused.
    _wait("the rebalance B's arrival causes", lambda: "Ready" in _log(b) and _log(a).count("Executing _on_partitions_assigned") >= 2)
    asyncio.run(_send(settings, phases[1]))
    _wait("B restoring a partition from A's checkpoint", lambda: "restored at offset" in _log(b))

    asyncio.run(_send(settings, phases[2]))  # the shock: its window closes only with later traffic
    time.sleep(3)
    victim, survivor = (a, b) if _last_owner(SHOCKED_PARTITION, a, b) is a else (b, a)
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    restores_before = _log(survivor).count(f"sentiment partition {SHOCKED_PARTITION}: restored")

    asyncio.run(_send(settings, phases[3]))
    _wait("every expected alert", lambda: set(_stored_alerts(settings)) >= set(expected), timeout_s=240)
    time.sleep(3)  # anything extra would have come by now
    # The scored messages went straight on the scored topic, so the shock alert's contributors are
    # not in ClickHouse and the survivor's feedback agent is waiting up to 30 s for them: the stop
    # ends that wait (the alert is not acked) instead of waiting it out, past stop()'s 30 s.
    assert survivor.stop() == 0

    stored = _stored_alerts(settings)
    assert stored == expected
    (alert,) = [x for x in stored.values() if x["ticker"] == SHOCKED]
    assert alert["rule"] == "sentiment_shock"
    assert datetime.fromisoformat(alert["window_end"]) == T0 + timedelta(minutes=SHOCK_MINUTES[-1] + 1)
    assert {m["id"] for m in alert["top_messages"]} <= {m.id for m in stream if m.id.startswith("shock-")}
    # The shocked window closed in the survivor, from the state the victim left in its checkpoint.
    assert f"sentiment_shock {SHOCKED}" not in _log(victim) and f"sentiment_shock {SHOCKED}" in _log(survivor)
    assert _log(survivor).count(f"sentiment partition {SHOCKED_PARTITION}: restored") > restores_before
