"""What annotators see while the labelling queue changes hands between `vigil label-ui` instances.

Real parts: the embedded Tansu broker, clickhouse-server (Debian's 18.16), `vigil label-ui`
processes in one group, label sets from a tiny trained registry. One annotator holds a lease and
renews it (``POST /api/queue/lease``, which answers with the item already held) back to back,
always through an instance that stays up, while:
  steady   nothing happens: through the owner, then through a standby (forwarded to the owner);
  join     a third instance starts (Kafka's eager rebalance takes the queue from the owner and
           gives it out again);
  stop     the owner gets SIGTERM (it leaves the group on its way out);
  kill     the owner gets SIGKILL (the group notices after the session timeout);
  cut      the broker is frozen (SIGSTOP) under the last instance, which must serve no queue change
           Kafka has not confirmed, give the queue up before the group could hand it on, and take
           it back after the thaw; lease calls go on every 0.2 s throughout.
For each: lease-call latency p50/p99/max, calls refused with 503 (each retried after 0.2 s), the
seconds from the event until the remaining instances agree on an owner, and whether the annotator
kept the same item throughout.

    python -m benchmarks.label_ui_handover [--session-timeout-ms 10000] [--steady-calls 300] [--cut-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from feedback.auth import TokenBook, tokens_path
from feedback.election import confirmation
from feedback.store import FeedbackStore
from models.registry import ModelRegistry
from streams.broker import EmbeddedBroker
from streams.clickhouse import open_store
from streams.settings import VigilSettings
from streams.topics import ensure_topics
from tests.e2e_stack import free_port, queue_owner, start_label_ui, stop_all, until_served
from tests.fixtures.clickhouse import ClickHouseServer, _find_binary
from tests.fixtures.labelling import numbered_request
from tests.fixtures.models import train_tiny


@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    refused: int = 0
    items: set[str] = field(default_factory=set)
    settled_s: float | None = None
    exited_s: float | None = None

    def row(self) -> str:
        lat = sorted(self.latencies_ms)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        settled = "" if self.settled_s is None else f"{self.settled_s:.1f}"
        exited = "" if self.exited_s is None else f"{self.exited_s:.1f}"
        return (f"| {self.name} | {len(lat)} | {statistics.median(lat):.1f} | {p99:.1f} | {lat[-1]:.1f} | "
                f"{self.refused} | {exited} | {settled} | {'yes' if len(self.items) == 1 else 'no: ' + str(self.items)} |")


class Annotator:
    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"}

    async def renew(self, base: str, phase: Phase) -> None:
        started = time.perf_counter()
        while True:
            async with self.http.post(f"{base}/api/queue/lease", json={"task": "sentiment"}, headers=self.headers) as r:
                body = await r.json()
            if r.status == 200:
                break
            assert r.status == 503, body
            phase.refused += 1
            await asyncio.sleep(0.2)
        phase.latencies_ms.append((time.perf_counter() - started) * 1000)
        phase.items.add(body["item"]["item_id"])

    async def keep_renewing(self, base: str, phase: Phase, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.renew(base, phase)


async def _settle(http: aiohttp.ClientSession, bases: list[str], phase: Phase, annotator: Annotator,
                  through: str, event: asyncio.Future[float]) -> int:
    """Renew through ``through`` while ``event`` happens (it returns when it happened, on the
    perf_counter clock) until ``bases`` agree on an owner, then 2 s more."""
    stop = asyncio.Event()
    renewing = asyncio.create_task(annotator.keep_renewing(through, phase, stop))
    happened = await event
    owner = await queue_owner(http, bases, 120)
    phase.settled_s = time.perf_counter() - happened
    await asyncio.sleep(2)
    stop.set()
    await renewing
    return owner


async def _seconds_to_exit(proc: subprocess.Popen, since: float) -> float:
    await asyncio.to_thread(proc.wait, 60)
    return time.perf_counter() - since


@dataclass
class Cut:
    fenced_s: float  # from the freeze until the owner no longer says it owns the queue
    back_s: float  # from the thaw until it owns the queue again
    served: int  # queue calls answered 200 meanwhile: from the book, with no word from Kafka
    refused: int  # queue calls answered 503 meanwhile
    same_item: bool


async def _cut_kafka(http: aiohttp.ClientSession, base: str, annotator: Annotator, broker_pid: int,
                     cut_s: float) -> Cut:
    """Freeze the broker (SIGSTOP) for ``cut_s`` under the last instance, then thaw it."""
    renewals = Phase("cut")
    await annotator.renew(base, renewals)

    async def owns() -> bool:
        async with http.get(f"{base}/health") as r:
            return (await r.json())["queue_owner"]

    async def fenced_after() -> float:
        while await owns():
            await asyncio.sleep(0.1)
        return time.perf_counter() - frozen

    served = refused = 0
    os.kill(broker_pid, signal.SIGSTOP)
    frozen = time.perf_counter()
    watch = asyncio.create_task(fenced_after())  # beside the lease calls, which wait up to 2 s each
    try:
        while time.perf_counter() - frozen < cut_s:
            async with http.post(f"{base}/api/queue/lease", json={"task": "sentiment"}, headers=annotator.headers) as r:
                served += r.status == 200
                refused += r.status == 503
            await asyncio.sleep(0.2)
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    if not watch.done():
        watch.cancel()
        raise SystemExit(f"the owner still held the queue {cut_s:.0f} s into the freeze")
    fenced_s = watch.result()
    thawed = time.perf_counter()
    while not await owns():
        await asyncio.sleep(0.1)
    back_s = time.perf_counter() - thawed
    await annotator.renew(base, renewals)
    return Cut(fenced_s, back_s, served, refused, len(renewals.items) == 1)


async def _confirmations(bootstrap: str, topic: str, n: int) -> list[float]:
    """Milliseconds per ownership confirmation, the offset commit each queue change now waits for
    (``feedback.election``), by a member of a group of its own on the owner topic's broker."""
    group = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"confirm-{uuid.uuid4().hex[:8]}",
                             enable_auto_commit=False)
    await group.start()
    try:
        while not group.assignment():
            await asyncio.sleep(0.1)
        confirm = confirmation(group, TopicPartition(topic, 0), timeout_s=2)
        took = []
        for _ in range(n):
            at = time.perf_counter()
            assert await confirm()
            took.append((time.perf_counter() - at) * 1000)
        return sorted(took)
    finally:
        await group.stop()


async def _run(settings: VigilSettings, token: str, logs: Path, session_timeout_ms: int, steady_calls: int,
               broker_pid: int, cut_s: float) -> tuple[list[Phase], Cut]:
    env = {"VIGIL_UI_OWNER_SESSION_TIMEOUT_MS": str(session_timeout_ms)}
    ports = [free_port() for _ in range(3)]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    procs: list[subprocess.Popen] = []

    def start(i: int) -> subprocess.Popen:
        proc = start_label_ui(settings, ports[i], logs / f"label-ui-{i}.log", **env)
        procs.append(proc)
        return proc

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        try:
            for i in (0, 1):
                proc = start(i)
                await until_served(http, f"{bases[i]}/", 120, alive=lambda p=proc: p.poll() is None)
            live = [0, 1]
            owner = live[await queue_owner(http, [bases[i] for i in live], 60)]
            annotator = Annotator(http, token)
            phases = []
            for name, through in (("steady, through the owner", owner), ("steady, through a standby", 1 - owner)):
                phase = Phase(name)
                for _ in range(steady_calls):
                    await annotator.renew(bases[through], phase)
                phases.append(phase)

            async def joined() -> float:
                proc = start(2)
                await until_served(http, f"{bases[2]}/", 120, alive=lambda: proc.poll() is None)
                return time.perf_counter()  # it joins the group once it serves

            standby = 1 - owner
            phase = Phase("a third instance joins")
            live = [0, 1, 2]
            owner = live[await _settle(http, bases, phase, annotator, bases[standby], asyncio.ensure_future(joined()))]
            phases.append(phase)

            for name, sig in (("the owner stops (SIGTERM)", signal.SIGTERM), ("the owner dies (SIGKILL)", signal.SIGKILL)):
                survivor = next(i for i in live if i != owner)
                dying = procs[owner]
                live = [i for i in live if i != owner]
                phase = Phase(f"{name}, {len(live)} left")
                exiting: list[asyncio.Task[float]] = []

                async def hit(proc: subprocess.Popen = dying, sig: signal.Signals = sig) -> float:
                    at = time.perf_counter()
                    proc.send_signal(sig)
                    exiting.append(asyncio.create_task(_seconds_to_exit(proc, at)))
                    return at

                at = [bases[i] for i in live]
                owner = live[await _settle(http, at, phase, annotator, bases[survivor], asyncio.ensure_future(hit()))]
                phase.exited_s = await exiting[0]
                phases.append(phase)
            return phases, await _cut_kafka(http, bases[owner], annotator, broker_pid, cut_s)
        finally:
            stop_all(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--session-timeout-ms", type=int, default=VigilSettings().ui_owner_session_timeout_ms)
    parser.add_argument("--steady-calls", type=int, default=300)
    parser.add_argument("--cut-s", type=float, default=20.0, help="How long Kafka is frozen at the end.")
    parser.add_argument("--logs", type=Path, help="Keep the instances' logs here (default: a temporary folder).")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker(Path(tmp_name) / "broker") as broker:
        tmp = Path(tmp_name)
        root = tmp / "models"
        card = train_tiny("sentiment", root).card
        ModelRegistry(root).promote("sentiment", card.version)
        server = ClickHouseServer(_find_binary(), tmp / "clickhouse-server")
        server.start()
        try:
            names = {f: f"h{run}.{f}" for f in ("corrections", "acks", "requests", "owner")}
            ensure_topics(broker.bootstrap, names.values(), 1)
            settings = VigilSettings(
                data_dir=tmp, kafka_brokers=broker.bootstrap, clickhouse_url=server.url,
                clickhouse_database=f"handover_{run}", topic_corrections=names["corrections"],
                topic_ticket_acks=names["acks"], topic_label_requests=names["requests"],
                topic_label_ui_owner=names["owner"], ui_group_id=f"handover-{run}",
            )
            store = open_store(settings)
            FeedbackStore(store).write_requests([numbered_request(i) for i in range(20)])
            store.close()
            token = TokenBook(tokens_path(tmp)).add("ann")
            logs = args.logs or tmp
            logs.mkdir(parents=True, exist_ok=True)
            confirms = asyncio.run(_confirmations(broker.bootstrap, names["owner"], args.steady_calls))
            phases, cut = asyncio.run(_run(settings, token, logs, args.session_timeout_ms, args.steady_calls,
                                           broker.pid, args.cut_s))
        finally:
            server.stop()
    print(f"\nsession timeout {args.session_timeout_ms} ms, hand-over wait {VigilSettings().ui_handover_wait_s:.0f} s, "
          f"{os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}")
    print(f"ownership confirmation (offset commit) before each queue change, {len(confirms)} in a row: p50 "
          f"{statistics.median(confirms):.2f} ms, p99 {confirms[int(0.99 * (len(confirms) - 1))]:.2f} ms, "
          f"max {confirms[-1]:.2f} ms\n")
    print("| phase | lease calls | p50 ms | p99 ms | max ms | refused (503) | s until the owner exited | "
          "s until one owner | same item throughout |")
    print("|---|---|---|---|---|---|---|---|---|")
    for phase in phases:
        print(phase.row())
    print(f"\nKafka frozen (SIGSTOP on the broker) for {args.cut_s:.0f} s under the last instance: it gave the queue "
          f"up after {cut.fenced_s:.1f} s; meanwhile it served {cut.served} lease calls (200, from its book alone) and "
          f"refused {cut.refused} (503: its ownership unconfirmed, or after the queue was given up, each after the "
          f"hand-over wait of {VigilSettings().ui_handover_wait_s:.0f} s); it owned the queue again "
          f"{cut.back_s:.1f} s after the thaw; same item: {'yes' if cut.same_item else 'no'}")


if __name__ == "__main__":
    main()
