"""streams.batching.micro_batches on a real faust app and the real broker (Tansu);
finish_before_stopping: a batch in hand outlives one cancellation of its agent, not two, unless it
is still waiting before publishing anything (pause_unless_stopping); and
process_batches, the loop every agent runs: an app stopped mid-batch first finishes and acks it;
pipeline_batches, the scoring agents' loop: the next batch is prepared while the last one commits,
commits and acks keep their order, and a stop finishes the commit in hand but not a batch being prepared;
and in both loops a batch that fails stops the worker before any later batch is acked."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from faust.types import EventT, StreamT

from streams.batching import (
    BatchFailed,
    finish_before_stopping,
    micro_batches,
    pause_unless_stopping,
    pipeline_batches,
    process_batches,
)
from streams.kafka_fetch import FetchWaitApp
from streams.restarts import STOPPING, last_words
from streams.watchdog import ProgressWatchdog

Batch = tuple[float, float, list[bytes]]  # (handed out at, handler done at, values)


def _app(bootstrap: str, datadir: Path, fetch_max_wait_ms: int = 100, **conf: Any) -> FetchWaitApp:
    return FetchWaitApp(
        f"test-batching-{uuid.uuid4().hex[:8]}", fetch_max_wait_ms=fetch_max_wait_ms, broker=f"kafka://{bootstrap}",
        store="memory://", web_enabled=False, key_serializer="raw", value_serializer="raw",
        consumer_auto_offset_reset="earliest", datadir=str(datadir),
        # A lone member joins its group in about the rebalance timeout on Tansu; faust's 60 s is for fleets.
        broker_session_timeout=3.0, broker_heartbeat_interval=1.0, broker_rebalance_timeout=3.0,
        **conf,
    )


async def _run_agent(bootstrap: str, topic: str, datadir: Path, *, max_: int, within: float,
                     handle_s: float, feed: Callable[[AIOKafkaProducer], Awaitable[None]], expect: int) -> list[Batch]:
    """Start a faust app whose one agent batches ``topic`` with micro_batches and takes ``handle_s``
    per batch; run ``feed``; stop once ``expect`` values came through."""
    app = _app(bootstrap, datadir)
    batches: list[Batch] = []
    done = asyncio.Event()

    async def agent(stream: StreamT) -> None:
        async for events in micro_batches(stream, max_, within):
            handed_out = time.monotonic()
            await asyncio.sleep(handle_s)  # the batch's processing
            for event in events:
                await stream.ack(event)
            batches.append((handed_out, time.monotonic(), [e.value for e in events]))
            if sum(len(b[2]) for b in batches) >= expect:
                done.set()

    app.agent(app.topic(topic, key_type=bytes, value_type=bytes), name="batched")(agent)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await app.start()
    await producer.start()
    try:
        await feed(producer)
        await asyncio.wait_for(done.wait(), timeout=120)
    finally:
        await producer.stop()
        await app.stop()
    return batches


def test_batches_keep_order_and_size(kafka_broker, new_topic, tmp_path: Path) -> None:
    topic = new_topic(partitions=1)
    values = [f"m{i}".encode() for i in range(25)]

    async def feed(producer: AIOKafkaProducer) -> None:
        for v in values:
            await producer.send_and_wait(topic, v)

    batches = asyncio.run(_run_agent(kafka_broker.bootstrap, topic, tmp_path, max_=10, within=0.3,
                                     handle_s=0.0, feed=feed, expect=len(values)))
    assert [v for _, _, vs in batches for v in vs] == values
    sizes = [len(vs) for _, _, vs in batches]
    assert min(sizes) >= 1 and max(sizes) == 10, sizes  # 25 sent within one window: the cap closed batches


def test_an_overdue_batch_closes_without_another_window(kafka_broker, new_topic, tmp_path: Path) -> None:
    """A message that arrived while the previous batch was processed, and has already waited longer
    than ``within``, is handed out as soon as that processing ends. faust's take() waits a whole
    ``within`` more there."""
    topic = new_topic(partitions=1)
    within, handle_s = 3.0, 5.0

    async def feed(producer: AIOKafkaProducer) -> None:
        await producer.send_and_wait(topic, b"first")
        await asyncio.sleep(within + 1.0)  # the first batch has closed and is being processed
        await producer.send_and_wait(topic, b"second")

    first, second = asyncio.run(_run_agent(kafka_broker.bootstrap, topic, tmp_path, max_=100, within=within,
                                           handle_s=handle_s, feed=feed, expect=2))
    assert first[2] == [b"first"] and second[2] == [b"second"]
    idle_between = second[0] - first[1]
    assert idle_between < within / 2, f"the overdue batch waited {idle_between:.2f} s after the previous one"


def test_the_worker_consumer_holds_fetches_for_the_setting(kafka_broker, new_topic, tmp_path: Path) -> None:
    topic = new_topic(partitions=1)

    async def check() -> int:
        app = _app(kafka_broker.bootstrap, tmp_path, fetch_max_wait_ms=37)
        app.agent(app.topic(topic), name="idle")(lambda stream: _drain(stream))
        await app.start()
        try:
            consumer = app.consumer._thread._ensure_consumer()
            return consumer._fetcher._fetch_max_wait_ms
        finally:
            await app.stop()

    assert asyncio.run(check()) == 37


async def _drain(stream: StreamT) -> None:
    async for _ in stream:
        pass


def test_a_batch_in_hand_finishes_before_the_cancellation_goes_through() -> None:
    async def go() -> tuple[list[str], bool, list[str], bool]:
        async def batch(done: list[str]) -> None:
            await asyncio.sleep(0.2)
            done.append("stored")
            await asyncio.sleep(0.01)
            done.append("acked")

        async def agent(done: list[str]) -> None:
            await finish_before_stopping(batch(done))
            done.append("next batch")  # never: the cancellation goes through once the batch is done

        once: list[str] = []
        task = asyncio.create_task(agent(once))
        await asyncio.sleep(0.05)
        task.cancel()  # a clean stop
        await asyncio.gather(task, return_exceptions=True)

        twice: list[str] = []
        task2 = asyncio.create_task(agent(twice))
        await asyncio.sleep(0.05)
        task2.cancel()
        await asyncio.sleep(0.05)
        task2.cancel()  # asked again: stop now
        await asyncio.gather(task2, return_exceptions=True)
        return once, task.cancelled(), twice, task2.cancelled()

    once, cancelled, twice, cancelled2 = asyncio.run(go())
    assert once == ["stored", "acked"] and cancelled
    assert twice == [] and cancelled2


def test_a_batch_that_waits_before_publishing_anything_gives_up_at_once_on_a_stop() -> None:
    async def go() -> tuple[list[str], bool, float]:
        steps: list[str] = []

        async def batch() -> None:
            for _ in range(100):  # as the feedback agent waits up to 30 s for an alert's stored rows
                await pause_unless_stopping(0.5)
            steps.append("published")

        task = asyncio.create_task(finish_before_stopping(batch()))
        await asyncio.sleep(0.1)
        asked = time.monotonic()
        task.cancel()  # a clean stop
        await asyncio.gather(task, return_exceptions=True)
        return steps, task.cancelled(), time.monotonic() - asked

    steps, cancelled, took = asyncio.run(go())
    # Not published, not acked: it comes again after the restart. Without the early end the stop
    # waited out the whole 50 s and the batch published.
    assert steps == [] and cancelled and took < 5


def test_an_app_stopped_mid_batch_finishes_and_acks_it_first(kafka_broker, new_topic, tmp_path: Path) -> None:
    topic = new_topic(partitions=1)
    values = [f"m{i}".encode() for i in range(5)]

    async def go() -> tuple[list[bytes], list[bool]]:
        watchdog = ProgressWatchdog(stall_after_s=60.0, started_at=0.0)
        handed_out = asyncio.Event()
        handled: list[bytes] = []
        held: list[EventT] = []

        async def handle(events: list[EventT]) -> None:
            held.extend(events)
            handed_out.set()
            await asyncio.sleep(1.0)  # the stop arrives while the batch is being stored
            handled.extend(e.value for e in events)

        async def agent(stream: StreamT) -> None:
            await process_batches(stream, handle, max_=100, within=0.3, watchdog=watchdog)

        await _run_until(kafka_broker.bootstrap, topic, tmp_path, values, agent, stop_when=handed_out)
        return handled, [e.message.acked for e in held]

    handled, acked = asyncio.run(go())
    assert handled == values
    assert acked == [True] * len(values)


async def _run_until(bootstrap: str, topic: str, datadir: Path, values: list[bytes],
                     agent: Callable[[StreamT], Awaitable[None]], *, stop_when: asyncio.Event) -> None:
    """Start a faust app whose one agent is ``agent``, send ``values``, and stop the app once
    ``stop_when`` is set. As in the worker's app, faust cancels its agents on stop instead of
    waiting for them."""
    app = _app(bootstrap, datadir, stream_wait_empty=False)
    app.agent(app.topic(topic, key_type=bytes, value_type=bytes), name="batched")(agent)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await app.start()
    await producer.start()
    try:
        for v in values:
            await producer.send(topic, v)
        await producer.flush()
        await asyncio.wait_for(stop_when.wait(), timeout=120)
    finally:
        await producer.stop()
    await app.stop()


async def _run_pipeline(
    bootstrap: str, topic: str, datadir: Path, values: list[bytes], *, max_: int,
    prepare: Callable[[list[EventT]], Awaitable[list[bytes]]], commit: Callable[[list[bytes]], Awaitable[None]],
    stop_when: asyncio.Event,
) -> list[EventT]:
    """``_run_until`` with an agent that runs ``pipeline_batches``; returns every event handed to ``prepare``."""
    watchdog = ProgressWatchdog(stall_after_s=60.0, started_at=0.0)
    held: list[EventT] = []

    async def prepare_and_hold(events: list[EventT]) -> list[bytes]:
        held.extend(events)
        return await prepare(events)

    async def agent(stream: StreamT) -> None:
        await pipeline_batches(stream, prepare_and_hold, commit, max_=max_, within=0.3, watchdog=watchdog)

    await _run_until(bootstrap, topic, datadir, values, agent, stop_when=stop_when)
    return held


def test_a_commit_that_gives_up_at_a_stop_is_no_failed_batch(
    kafka_broker, new_topic, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit waiting in pause_unless_stopping ends with BatchAbandoned when the stop cancels the
    agent waiting on it: the batch comes again after the restart, and the worker must not stop as
    if it had failed."""
    next_prepared = asyncio.Event()

    async def prepare(events: list[EventT]) -> list[bytes]:
        values = [e.value for e in events]
        if values == [b"m1"]:
            next_prepared.set()  # the agent now waits on m0's commit, where the stop cancels it
        return values

    async def commit(values: list[bytes]) -> None:
        for _ in range(100):
            await pause_unless_stopping(0.5)

    held = asyncio.run(_run_pipeline(kafka_broker.bootstrap, new_topic(partitions=1), tmp_path, [b"m0", b"m1"],
                                     max_=1, prepare=prepare, commit=commit, stop_when=next_prepared))
    assert [e.value for e in held] == [b"m0", b"m1"] and not any(e.message.acked for e in held)
    assert STOPPING not in caplog.text


def test_the_next_batch_is_prepared_while_the_last_one_commits_and_commits_keep_their_order(
    kafka_broker, new_topic, tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    values = [f"m{i}".encode() for i in range(12)]

    async def go() -> tuple[list[list[bytes]], list[bool], list[bool]]:
        prepared: list[list[bytes]] = []
        committed: list[list[bytes]] = []
        overlapped: list[bool] = []  # per commit: whether the batch after it was being prepared
        all_committed = asyncio.Event()

        async def prepare(events: list[EventT]) -> list[bytes]:
            prepared.append([e.value for e in events])
            return prepared[-1]

        async def next_one_prepared(n: int) -> None:
            while len(prepared) <= n:
                await asyncio.sleep(0.01)

        async def commit(batch: list[bytes]) -> None:
            n = len(committed) + 1  # this commit's batch is the n-th
            if sum(map(len, committed)) + len(batch) < len(values):  # not the last: wait for the next
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(next_one_prepared(n), timeout=10)
            overlapped.append(len(prepared) > n)
            committed.append(batch)
            if sum(map(len, committed)) == len(values):
                all_committed.set()

        held = await _run_pipeline(kafka_broker.bootstrap, topic, tmp_path, values, max_=4,
                                   prepare=prepare, commit=commit, stop_when=all_committed)
        return committed, overlapped, [e.message.acked for e in held]

    committed, overlapped, acked = asyncio.run(go())
    assert [v for batch in committed for v in batch] == values
    assert len(committed) >= 3  # batches of at most 4
    # Each commit but the last ended while the batch after it was being prepared. One at a time,
    # each would have waited out its 10 s with the next batch not yet handed out.
    assert overlapped[:-1] == [True] * (len(committed) - 1)
    assert acked == [True] * len(values)


def test_a_stop_while_a_batch_is_prepared_finishes_the_commit_in_hand_and_leaves_that_batch_unacked(
    kafka_broker, new_topic, tmp_path: Path
) -> None:
    topic = new_topic(partitions=1)
    values = [f"m{i}".encode() for i in range(8)]

    async def go() -> tuple[list[list[bytes]], list[list[bytes]], list[bool]]:
        prepared: list[list[bytes]] = []
        committed: list[list[bytes]] = []
        second_preparing = asyncio.Event()

        async def prepare(events: list[EventT]) -> list[bytes]:
            prepared.append([e.value for e in events])
            if len(prepared) == 2:
                second_preparing.set()  # the stop arrives now, while the first batch commits
                await asyncio.sleep(30)
            return prepared[-1]

        async def commit(batch: list[bytes]) -> None:
            await asyncio.sleep(1.0)
            committed.append(batch)

        held = await _run_pipeline(kafka_broker.bootstrap, topic, tmp_path, values, max_=4,
                                   prepare=prepare, commit=commit, stop_when=second_preparing)
        return prepared, committed, [e.message.acked for e in held]

    prepared, committed, acked = asyncio.run(go())
    first, second = prepared
    assert committed == [first]
    assert acked == [True] * len(first) + [False] * len(second)


async def _run_failing(
    bootstrap: str, topic: str, datadir: Path, loop: str, fail_in: str = "store"
) -> tuple[list[bytes], BaseException | None, int | None]:
    """One agent running ``loop`` over 6 messages sent one at a time, whose first batch fails to
    store (or, ``fail_in="prepare"``, to be prepared); the app runs until it crashed or stored the
    last message. Returns what was stored, why the app crashed (None: it did not), and the offset
    its group committed."""
    app = _app(bootstrap, datadir, stream_wait_empty=False, broker_commit_interval=0.2)
    values = [f"m{i}".encode() for i in range(6)]
    stored: list[bytes] = []
    failures = [RuntimeError("ClickHouse refused the insert: no such column")]

    async def store(batch: list[bytes]) -> None:
        if failures and fail_in == "store":
            raise failures.pop()
        stored.extend(batch)

    async def prepare(events: list[EventT]) -> list[bytes]:
        if failures and fail_in == "prepare":
            raise failures.pop()
        return [e.value for e in events]

    async def handle(events: list[EventT]) -> None:
        await store(await prepare(events))

    async def agent(stream: StreamT) -> None:
        watchdog = ProgressWatchdog(stall_after_s=60.0, started_at=0.0)
        if loop == "pipeline":
            await pipeline_batches(stream, prepare, store, max_=1, within=0.1, watchdog=watchdog)
        else:
            await process_batches(stream, handle, max_=1, within=0.1, watchdog=watchdog)

    app.agent(app.topic(topic, key_type=bytes, value_type=bytes), name="failing")(agent)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await app.start()
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v)
            await asyncio.sleep(0.2)  # a batch each
        for _ in range(600):
            if app.crashed or values[-1] in stored:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # a commit interval or more: what was acked is committed
    finally:
        await producer.stop()
    reason = app.crash_reason if app.crashed else None
    await app.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=app.conf.id, enable_auto_commit=False)
    await consumer.start()
    try:
        committed = await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()
    return stored, reason, committed


@pytest.mark.parametrize("fail_in", ["store", "prepare"])
def test_a_failed_batch_stops_the_worker_before_a_later_batch_commits_past_it(
    kafka_broker, new_topic, tmp_path: Path, fail_in: str
) -> None:
    """faust restarted the failed agent at the next message and committed the later batches'
    offsets over the failed one: m0 (and m1, prepared while m0 was stored) were never stored, nor
    read again. A failed prepare is a broken model (ScorerBroken) or ClickHouse refusing the read
    of known ids."""
    stored, reason, committed = asyncio.run(
        _run_failing(kafka_broker.bootstrap, new_topic(partitions=1), tmp_path, "pipeline", fail_in)
    )
    assert isinstance(reason, BatchFailed), reason
    assert "no such column" in str(reason) and "a restarted worker reads it again" in str(reason)
    assert committed is None and stored == []  # the failed batch, at offset 0, comes again


def test_a_failed_batch_stops_the_worker_in_the_agents_single_stage_loop_too(
    kafka_broker, new_topic, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stored, reason, committed = asyncio.run(
        _run_failing(kafka_broker.bootstrap, new_topic(partitions=1), tmp_path, "single")
    )
    assert isinstance(reason, BatchFailed) and "no such column" in str(reason)
    assert committed is None and stored == []
    # what `vigil up` reads back from the worker's log to say why it restarts it
    assert "no such column" in (last_words(caplog.text) or "")
