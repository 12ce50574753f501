"""Helpers for the end-to-end tests: worker environments on the shared Tansu broker with chdb or
clickhouse-server, real messages, reading a topic from the start, a worker's own Prometheus metrics,
the group's committed offsets, the rows ClickHouse holds per id, and `vigil label-ui`
processes with the one that owns the queue.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaAdminClient

from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.follow import Tracker, following, wait_for
from streams.replay import OutgoingMessage, bundled_news, bundled_support, interleave, replay
from streams.runtime import all_topics
from streams.settings import VigilSettings
from streams.topics import ensure_topics
from tests.fixtures.models import copy_registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until_served(http: aiohttp.ClientSession, url: str, timeout_s: float,
                       alive: Callable[[], bool] = lambda: True) -> None:
    """GET ``url`` (with the session's headers) until it answers 200; AssertionError once ``alive()``
    is false (the serving process died) or ``timeout_s`` passed."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        assert alive(), f"the process serving {url} exited"
        try:
            async with http.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert asyncio.get_running_loop().time() < deadline, f"{url} did not answer within {timeout_s:.0f}s"
        await asyncio.sleep(0.3)


def stack_env(
    tmp_path: Path, bootstrap: str, clickhouse_url: str | None = None, *, partitions: int, **extra: str
) -> dict[str, str]:
    """Environment for workers of one isolated run: own topics, group, database; shared data dir.
    ``clickhouse_url`` None: embedded chdb under the data dir (one worker process at a time).
    ``extra``: more ``VIGIL_*`` variables, or overrides of these."""
    run = uuid.uuid4().hex[:8]
    return {
        "VIGIL_DATA_DIR": str(tmp_path / "vigil"),
        "VIGIL_KAFKA_BROKERS": bootstrap,
        "VIGIL_CLICKHOUSE_URL": clickhouse_url or "",  # "" rather than absent: a URL in the caller's env must not leak in
        "VIGIL_CLICKHOUSE_DATABASE": f"ops_{run}",
        "VIGIL_TOPIC_NEWS": f"o{run}.news",
        "VIGIL_TOPIC_SUPPORT": f"o{run}.support",
        "VIGIL_TOPIC_SCORED": f"o{run}.scored",
        "VIGIL_TOPIC_DLQ": f"o{run}.dlq",
        "VIGIL_TOPIC_ALERTS": f"o{run}.alerts",
        "VIGIL_TOPIC_TRIAGE_PREFIX": f"o{run}.triage.",
        "VIGIL_TOPIC_TICKET_ACKS": f"o{run}.acks",
        "VIGIL_TOPIC_LABEL_REQUESTS": f"o{run}.label-requests",
        "VIGIL_TOPIC_CORRECTIONS": f"o{run}.corrections",
        "VIGIL_TOPIC_MODEL_EVENTS": f"o{run}.model-events",
        "VIGIL_TOPIC_PARTITIONS": str(partitions),
        "VIGIL_CONSUMER_GROUP": f"g{run}",
        "VIGIL_BATCH_MAX": "32",
        "VIGIL_BATCH_WITHIN_S": "0.2",
        "VIGIL_MAX_LENGTH": "32",
        "VIGIL_DEVICE": "cpu",
        "VIGIL_CPU_THREADS": "1",
        "VIGIL_KAFKA_SESSION_TIMEOUT_S": "6",
        "VIGIL_KAFKA_REBALANCE_TIMEOUT_S": "8",
        "VIGIL_LOG_FORMAT": "json",
        **extra,
    }


def prepare(settings: VigilSettings, tiny_registry: Path) -> None:
    """Models into the run's data dir; topics on the broker."""
    copy_registry(tiny_registry, settings.registry_dir)
    ensure_topics(settings.kafka_brokers, all_topics(settings), settings.topic_partitions)


def use_stack(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tiny_registry: Path) -> VigilSettings:
    """``env`` in this process too (the test reads what the workers write), then ``prepare``."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = VigilSettings()
    prepare(settings, tiny_registry)
    return settings


class Topic:
    """Every record of one single-partition topic from the start, duplicates included, as JSON."""

    def __init__(self, settings: VigilSettings, name: str) -> None:
        self.settings, self.name, self.values = settings, name, []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Self:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_brokers, enable_auto_commit=False)
        await self._consumer.start()
        tp = TopicPartition(self.name, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_beginning(tp)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def until(self, done: Callable[[list[Any]], bool], timeout_s: float) -> bool:
        """Read until ``done(values)``; False at the timeout."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not done(self.values):
            if asyncio.get_running_loop().time() > deadline:
                return False
            for records in (await self._consumer.getmany(timeout_ms=200)).values():
                self.values += [json.loads(r.value) for r in records]
        return True


def real_messages(settings: VigilSettings, n: int, *, skip: int = 0) -> list[OutgoingMessage]:
    news = (OutgoingMessage.of(Kind.news, m) for m in bundled_news(settings.bundled_data_dir))
    support = (OutgoingMessage.of(Kind.support, m) for m in bundled_support(settings.bundled_data_dir))
    return list(itertools.islice(interleave(news, support, ratio=(2, 1)), skip, skip + n))


async def score_all(settings: VigilSettings, messages: list[OutgoingMessage], scored_before: int = 0) -> bool:
    """Send ``messages`` to the raw topics; True once the scored and dead-letter topics hold them
    and the ``scored_before`` sent earlier (False after 180 s)."""
    tracker = Tracker()
    async with following(settings, settings.kafka_brokers, tracker, from_start=True):
        await replay(settings.kafka_brokers, settings.raw_topics, messages, rate_per_s=0)
        return await wait_for(tracker, scored_before + len(messages), timeout_s=180)


def ids_of(messages: list[OutgoingMessage]) -> set[str]:
    """In the follower's ``kind:id`` form."""
    return {f"{m.kind.value}:{m.key.decode()}" for m in messages}


def metric_total(port: int, name: str) -> float:
    """Sum over labels of one metric on a worker's /metrics; 0 when it has no sample yet."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def committed_total(settings: VigilSettings) -> int:
    """Sum of the consumer group's committed offsets on the raw topics."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_brokers)
    try:
        offsets = admin.list_group_offsets(settings.consumer_group)[settings.consumer_group]
    finally:
        admin.close()
    raw = set(settings.raw_topics.values())
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic in raw and meta.offset > 0)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def stored_id_counts(settings: VigilSettings, *, final: bool = True) -> Counter[str]:
    """``kind:id`` -> rows in ``scored``. Under FINAL: one per model version the id was scored by (the
    table is keyed on kind, id and model version, so the copies a replay wrote count once). Without
    it: every row stored, copies included, until a merge of parts collapses them."""
    with open_store(settings) as store:
        rows = store.backend.query(
            f"SELECT kind, id, count() FROM {settings.clickhouse_database}.scored {'FINAL' if final else ''} "
            "GROUP BY kind, id"
        )
    return Counter({f"{kind}:{id_}": int(n) for kind, id_, n in rows})


def assert_exactly_once(settings: VigilSettings, expected: set[str]) -> None:
    """Each expected id, and no other, shown once under FINAL: scored by one model version. A message
    stored twice by the same version (a replay) passes: count that with ``final=False``."""
    counts = stored_id_counts(settings)
    missing, unexpected = expected - set(counts), set(counts) - expected
    assert not missing and not unexpected, f"missing {len(missing)}, unexpected {len(unexpected)}"
    duplicated = {k: n for k, n in counts.items() if n != 1}
    assert not duplicated, f"{len(duplicated)} ids appear more than once under FINAL: {list(duplicated)[:5]}"


def copies(counts: Counter[str]) -> str:
    """``counts`` (records or rows per id) in one line: how many ids, records, and ids more than once."""
    again = sum(1 for n in counts.values() if n > 1)
    return f"{len(counts)} ids in {counts.total()} records, {again} ids more than once (most: {max(counts.values(), default=0)})"


def on_clickhouse_server(settings: VigilSettings, server_settings: VigilSettings) -> VigilSettings:
    """``settings`` on the clickhouse-server database of ``server_settings``, for several processes:
    embedded chdb admits one."""
    return settings.model_copy(update={
        "clickhouse_url": server_settings.clickhouse_url, "clickhouse_database": server_settings.clickhouse_database})


def start_label_ui(settings: VigilSettings, port: int, log: Path, **extra_env: str) -> subprocess.Popen:
    """`vigil label-ui` on 127.0.0.1:``port`` as a process of its own, on ``settings``' broker,
    ClickHouse, topics and UI group, its output in ``log`` (a pipe nobody reads would fill up)."""
    env = {**os.environ, "VIGIL_DATA_DIR": str(settings.data_dir), "VIGIL_CLICKHOUSE_URL": settings.clickhouse_url,
           "VIGIL_CLICKHOUSE_DATABASE": settings.clickhouse_database, "VIGIL_KAFKA_BROKERS": settings.kafka_brokers,
           "VIGIL_TOPIC_CORRECTIONS": settings.topic_corrections, "VIGIL_TOPIC_TICKET_ACKS": settings.topic_ticket_acks,
           "VIGIL_TOPIC_LABEL_REQUESTS": settings.topic_label_requests, "VIGIL_UI_QUEUE_REFRESH_S": "0.5",
           "VIGIL_TOPIC_LABEL_UI_OWNER": settings.topic_label_ui_owner, "VIGIL_UI_GROUP_ID": settings.ui_group_id,
           "PYTHONUNBUFFERED": "1", **extra_env}  # a killed instance's log is complete
    command = [sys.executable, "-m", "streams.cli", "label-ui", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def label_ui_instances(settings: VigilSettings, n: int, **extra_env: str) -> Iterator[tuple[list[str], list[subprocess.Popen]]]:
    """``n`` `vigil label-ui` processes on ``settings`` (base URLs, processes); on the way out each
    gets SIGTERM (SIGKILL after 30 s) and its log is printed, which pytest shows when a test fails."""
    ports = [free_port() for _ in range(n)]
    logs = [settings.data_dir / f"label-ui-{port}.log" for port in ports]
    procs = [start_label_ui(settings, port, log, **extra_env) for port, log in zip(ports, logs, strict=True)]
    try:
        yield [f"http://127.0.0.1:{p}" for p in ports], procs
    finally:
        stop_all(procs)
        for log in logs:
            print(log.read_text(errors="replace"))


def stop_all(procs: list[subprocess.Popen], grace_s: float = 30) -> None:
    """SIGTERM to each process still running, then SIGKILL to any not gone within ``grace_s``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()


async def queue_owner(http: aiohttp.ClientSession, bases: list[str], timeout_s: float) -> int:
    """The index of the instance that owns the queue, once every instance agrees on it."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        health = []
        for base in bases:
            async with http.get(f"{base}/health") as r:
                health.append(await r.json())
        owners = [i for i, h in enumerate(health) if h["queue_owner"]]
        if len(owners) == 1 and all(h["owner_url"] == bases[owners[0]] for h in health):
            return owners[0]
        assert asyncio.get_running_loop().time() < deadline, f"no single queue owner: {health}"
        await asyncio.sleep(0.3)
