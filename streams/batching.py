"""Micro-batches from a faust stream, closed when the oldest message has waited ``within`` seconds.

faust's ``take()``/``noack_take()`` restart their ``within`` timer after every batch. A message that
arrives while the previous batch is being processed therefore waits for that processing and then a
whole ``within`` more, even when the batch it joins is already overdue. Under steady load that idle
wait is paid on every batch: batches grow, take longer, and the worker idles for part of every
cycle (measured: 37% of the two cores idle while a backlog built up). Here the timer starts when a
batch's first message arrives, so no message waits more than ``within`` for its batch to close,
and a batch whose first message arrived during the previous batch's processing closes as soon as
the messages already received are in it.

Events come back un-acked, as with ``noack_take``: the caller acks them once they are durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from faust.types import AppT, EventT, StreamT
from mode.utils.aiter import aiter
from mode.utils.futures import notify

from streams.restarts import STOPPING
from streams.settings import VigilSettings
from streams.watchdog import ProgressWatchdog

P = TypeVar("P")
log = logging.getLogger(__name__)

# Once a batch is overdue, how long to let faust move messages it has already received into it.
# Those moves take microseconds each; the bound only matters when messages keep streaming in.
_COLLECT_RECEIVED_S = 0.05


async def micro_batches(stream: StreamT, max_: int, within: float) -> AsyncIterator[list[EventT]]:
    """Yield lists of at most ``max_`` events; a list closes when it is full, or ``within`` seconds
    after its first event arrived (at once, with what has arrived, if that time has already passed)."""
    buffer: list[EventT] = []
    opened_at: float | None = None
    first = asyncio.Event()
    full = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[Any] | None = None
    queue = stream.channel.queue  # faust's per-stream buffer of received, not yet processed events

    # faust calls this for every event, in order, from the stream's background drainer.
    async def add(value: Any) -> Any:
        nonlocal consuming, opened_at
        if opened_at is None:
            # Stamped before waiting out the batch in progress: that wait counts against `within`.
            opened_at = time.monotonic()
            first.set()
        if consuming is not None:
            try:
                await consuming
            finally:
                consuming = None
        event = stream.current_event
        if event is None:
            raise RuntimeError("micro_batches: faust gave a value with no current event")
        buffer.append(event)
        if len(buffer) >= max_:
            full.set()
            consumed.clear()
            await stream.wait(consumed)  # never hand out more than max_ events in one batch
        return value

    enable_acks = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))  # as faust's own take() starts the drainer
    try:
        while not stream.should_stop:
            if opened_at is None:
                await stream.wait_for_stopped(first, timeout=within)
                continue
            remaining = opened_at + within - time.monotonic()
            if remaining > 0:
                await stream.wait_for_stopped(full, timeout=remaining)
            else:
                await _collect_received(queue.empty, full)
            if not buffer:
                continue
            batch = list(buffer)
            opened_at = None
            first.clear()
            consuming = asyncio.get_running_loop().create_future()
            try:
                yield batch
            finally:
                buffer.clear()
                notify(consuming)
                full.clear()
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add)


async def _collect_received(received_empty: Callable[[], bool], full: asyncio.Event) -> None:
    until = time.monotonic() + _COLLECT_RECEIVED_S
    await asyncio.sleep(0)  # lets the event held back by the previous batch into this one
    while not full.is_set() and not received_empty() and time.monotonic() < until:
        await asyncio.sleep(0)


# Set, inside a batch run by finish_before_stopping, once the worker has been asked to stop.
_stop_requested: ContextVar[asyncio.Event | None] = ContextVar("vigil_batch_stop_requested", default=None)


class BatchAbandoned(Exception):
    """A batch gave up on a stop before it published or stored anything; it is not acked."""


async def pause_unless_stopping(seconds: float) -> None:
    """Sleep ``seconds`` in a batch that has published and stored nothing yet, such as one waiting
    for rows another agent writes. A stop meanwhile ends the batch at once with BatchAbandoned
    instead of after the wait: the batch is not acked, so it comes again after a restart."""
    stop = _stop_requested.get()
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return
    raise BatchAbandoned("the worker is stopping; the batch comes again after the restart")


async def finish_before_stopping(work: Awaitable[None]) -> None:
    """Run ``work`` (one batch: publish, store, ack) to its end even when the agent is cancelled
    meanwhile, then let the cancellation through. A worker's clean stop (SIGTERM) cancels its agents;
    without this, a batch already on the topics could stop before it is stored. A second
    cancellation stops the batch too (it is not acked, so it comes again after a restart), as does
    a batch in pause_unless_stopping."""
    stop = asyncio.Event()
    token = _stop_requested.set(stop)
    try:
        task = asyncio.ensure_future(work)  # runs in a copy of this context, which holds ``stop``
    finally:
        _stop_requested.reset(token)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BatchAbandoned):
            await task
        raise


class BatchFailed(RuntimeError):
    """A batch could not be prepared, published or stored; the worker stops with it un-acked."""


async def crash_worker(app: AppT, failure: Exception) -> None:
    """Stop the worker over ``failure`` (it exits non-zero), logged so that `vigil up` says why
    when it restarts it."""
    log.critical("%s%s", STOPPING, failure)
    await app.crash(failure)


async def _stop_worker(stream: StreamT, exc: Exception) -> None:
    """Crash the worker's app over a failed batch. Left to faust, the agent would restart at the
    next message, and the consumer then commits those batches' offsets past the failed one's (a
    partition never committed, or one un-acked offset ahead of the commit, is not even checked
    for a gap): its messages, unstored, were never read again. A crashed worker exits non-zero,
    and the one `vigil up` starts next reads the batch again from the last commit."""
    # Nothing here may raise before the crash: an error escaping would let faust restart the agent.
    topics = ", ".join(sorted(getattr(stream.channel, "topics", ()) or ())) or repr(stream.channel)
    await crash_worker(stream.app, BatchFailed(
        f"a batch of {topics} failed: {exc!r}. The worker stops with it un-acked, and a restarted "
        "worker reads it again; if the same error comes back every time, it is not a passing one: "
        "fix its cause (the message above says what failed) and the batch goes through"
    ))


async def process_batches(
    stream: StreamT,
    handle: Callable[[list[EventT]], Awaitable[object]],
    *,
    max_: int,
    within: float,
    watchdog: ProgressWatchdog,
    ack: bool = True,
) -> None:
    """Every agent's loop: micro-batch ``stream``, ``handle`` each batch (publish, store), then ack
    its events. A clean stop finishes the batch in hand, so what an agent has published is stored
    and acked before it goes. Each batch beats the watchdog: these topics' lag counts in its stall
    check. ``ack=False`` is for a handler that acks on its own schedule (the keyed alerting stages
    ack once a checkpoint holds the events). A batch whose ``handle`` raises stops the worker
    (``_stop_worker``); this loop then returns rather than raise, which faust would answer by
    restarting the agent past the batch."""

    async def one(events: list[EventT]) -> None:
        await handle(events)
        if ack:
            for event in events:
                await stream.ack(event)

    try:
        async for events in micro_batches(stream, max_, within):
            watchdog.beat(time.monotonic())
            await finish_before_stopping(one(events))
            watchdog.beat(time.monotonic())
    except Exception as exc:
        await _stop_worker(stream, exc)


async def pipeline_batches(
    stream: StreamT,
    prepare: Callable[[list[EventT]], Awaitable[P]],
    commit: Callable[[P], Awaitable[object]],
    *,
    max_: int,
    within: float,
    watchdog: ProgressWatchdog,
) -> None:
    """``process_batches`` in two stages, overlapped: while batch N commits (``commit``: publish,
    store; then its events are acked), batch N+1 is prepared (``prepare``: decode, score; nothing
    published or stored). Commits run one at a time and in order, so acks stay in order. A stop
    finishes the commit in hand as ``process_batches`` does; a batch stopped while being prepared
    is dropped un-acked and comes again after the restart. A failed stage stops the worker as in
    ``process_batches``: a failed commit at once, as the next batch may be long in coming, and
    before any later batch is committed."""
    committing: asyncio.Future[None] | None = None
    commit_failed = False

    async def one(events: list[EventT], prepared: P) -> None:
        nonlocal commit_failed
        try:
            await commit(prepared)
        except BatchAbandoned:
            raise  # a stop, not a failure: finish_before_stopping lets the cancellation through
        except Exception as exc:
            commit_failed = True
            await _stop_worker(stream, exc)
            raise
        for event in events:
            await stream.ack(event)

    try:
        try:
            async for events in micro_batches(stream, max_, within):
                watchdog.beat(time.monotonic())
                prepared = await prepare(events)
                if committing is not None:
                    await committing
                    watchdog.beat(time.monotonic())
                committing = asyncio.ensure_future(finish_before_stopping(one(events, prepared)))
        finally:
            if committing is not None:
                await committing
    except Exception as exc:
        if not commit_failed:  # a failed commit has stopped the worker already
            await _stop_worker(stream, exc)


def batch_agent(
    handle: Callable[[list[EventT]], Awaitable[object]], settings: VigilSettings, watchdog: ProgressWatchdog
) -> Callable[[StreamT], Awaitable[None]]:
    """An agent body for ``app.agent``: ``process_batches`` over its stream with ``handle``, in
    batches of the settings' size and window, acked once ``handle`` returns."""

    async def consume(stream: StreamT) -> None:
        await process_batches(
            stream, handle, max_=settings.batch_max, within=settings.batch_within_s, watchdog=watchdog
        )

    return consume


def pipelined_agent(
    prepare: Callable[[list[EventT]], Awaitable[P]],
    commit: Callable[[P], Awaitable[object]],
    settings: VigilSettings,
    watchdog: ProgressWatchdog,
) -> Callable[[StreamT], Awaitable[None]]:
    """``batch_agent`` for a handler in two stages: ``pipeline_batches`` over its stream."""

    async def consume(stream: StreamT) -> None:
        await pipeline_batches(
            stream, prepare, commit, max_=settings.batch_max, within=settings.batch_within_s, watchdog=watchdog
        )

    return consume
