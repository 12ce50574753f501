"""The faust adapter around AlertPartitions, on a keyed events topic: sentiment on the ticker-events
topic, intent spikes on the intent-events topic.

Per micro-batch: take ownership of partitions seen for the first time (restoring their checkpoint
from ClickHouse), feed the events, publish and store the alerts. Events are acknowledged only once
a checkpoint holding them is stored (every ``alert_checkpoint_interval_s``), so the committed
offset never runs ahead of the saved state: a worker that crashes leaves its successor a checkpoint
and the events after it. A worker that loses a partition in a rebalance, or stops, saves its state
first (within ``alert_handover_save_s``), so the successor does not judge those events again: from
an older checkpoint they would fire the alerts already emitted once more (the processor leaves out
such a copy, found in the alerts table, but a crash is the only case that should need it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from faust.types import TP, EventT, StreamT
from pydantic import BaseModel, ValidationError

from streams.alerting.contracts import Alert
from streams.alerting.partitions import AlertPartitions
from streams.clickhouse import ClickHouseError
from streams.clickhouse.alerting_state import AlertingStateStore
from streams.metrics import Metrics

log = logging.getLogger(__name__)

Durably = Callable[..., Awaitable[Any]]


class KeyedStage:
    def __init__(
        self,
        partitions: AlertPartitions,
        state: AlertingStateStore,
        *,
        topic: str,
        event_type: type[BaseModel],
        emit: Callable[[list[Alert]], Awaitable[None]],
        durably: Durably,
        checkpoint_interval_s: float,
        handover_save_s: float,
        metrics: Metrics,
    ) -> None:
        self._parts = partitions
        self._state = state
        self._topic = topic
        self._event_type = event_type
        self._emit = emit
        self._durably = durably
        self._interval_s = checkpoint_interval_s
        self._handover_save_s = handover_save_s
        self._metrics = metrics
        self._pending: list[tuple[StreamT, EventT]] = []
        self._last_save = 0.0
        self._unrestored: set[int] = set()  # assigned here, restored at the next tick or event
        # A batch, a tick and a hand-over one at a time: a checkpoint saved while the alerts of the
        # events it holds are still being stored would leave them to nobody if the worker died.
        self._busy = asyncio.Lock()
        self._failed = False  # a batch or tick failed part way (_unless_failed)

    async def handle(self, stream: StreamT, events: Sequence[EventT], assigned: set[TP], wall: float) -> None:
        """Feed one batch. Events of partitions no longer assigned here (revoked while the batch
        was on its way) are left alone: the partition's new owner gets them again."""
        async with self._busy:
            await self._unless_failed(self._handle(stream, events, assigned, wall))

    async def _handle(self, stream: StreamT, events: Sequence[EventT], assigned: set[TP], wall: float) -> None:
        alerts: list[Alert] = []
        for event in events:
            msg = event.message
            if msg.tp not in assigned:
                continue
            if not self._parts.owned(msg.partition):
                await self._restore(msg.partition, wall)
                self._unrestored.discard(msg.partition)
            self._pending.append((stream, event))
            try:
                keyed = self._event_type.model_validate_json(msg.value)
            except ValidationError as exc:
                log.error("skipping a %s record that is not a %s: %s", self._topic, self._event_type.__name__, exc)
                continue
            fed = self._parts.feed(msg.partition, msg.offset, keyed, wall)
            if fed is None:
                continue
            if fed.too_late:
                self._metrics.alert_late_messages.inc()
            alerts += fed.alerts
        await self._emit(alerts)
        await self.checkpoint(wall)

    async def _restore(self, partition: int, wall: float) -> None:
        checkpoint = await self._durably("reading the alerting checkpoint", self._state.load, partition)
        if checkpoint is None:
            self._parts.restore(partition, None)
            log.info("%s partition %d: no checkpoint, starting fresh", self._parts.name, partition)
            return
        resume = self._parts.resume(checkpoint)
        seen = await self._durably(
            "reading the alerting checkpoint's message ids", self._state.load_seen,
            partition, checkpoint.offset, self._parts.seen_since(resume),
        )
        self._parts.restore(partition, resume, seen, restored_at=wall)
        log.info("%s partition %d: restored at offset %d with %d message ids", self._parts.name, partition,
                 checkpoint.offset, len(seen))

    def assign(self, assigned: Iterable[TP]) -> None:
        """Partitions now read here: restored at the next tick if no event restores them first."""
        self._unrestored |= {tp.partition for tp in assigned if tp.topic == self._topic}

    async def tick(self, wall: float) -> None:
        """Move quiet partitions' event time on. Assigned partitions with no event yet are restored
        first: a partition that went quiet before a restart must still close its windows."""
        async with self._busy:
            await self._unless_failed(self._tick(wall))

    async def _tick(self, wall: float) -> None:
        for partition in sorted(self._unrestored):
            if not self._parts.owned(partition):
                await self._restore(partition, wall)
                if partition not in self._unrestored:  # revoked while its checkpoint was read
                    self._parts.revoke([partition])
            self._unrestored.discard(partition)
        await self._emit(self._parts.tick(wall))
        await self.checkpoint(wall)

    async def _unless_failed(self, work: Awaitable[None]) -> None:
        try:
            await work
        except BaseException:
            # The state may hold events whose alerts were never emitted (the emit failed, or a
            # later partition's restore did before it): a checkpoint of it (the next tick's, or the
            # hand-over as the failure stops the worker) would ack them, the next owner would skip
            # them, and the alerts would never be published. Unsaved, the next owner restores the
            # last checkpoint and judges the events again.
            self._failed = True
            raise

    async def checkpoint(self, wall: float, *, force: bool = False) -> None:
        """Store the changed partitions' state, then acknowledge the events it holds; never once a
        batch or tick failed part way (``_unless_failed``)."""
        if self._failed or (not force and wall - self._last_save < self._interval_s):
            return
        self._last_save = wall
        pending, self._pending = self._pending, []
        checkpoints = self._parts.checkpoints()
        if checkpoints:
            await self._durably("saving alerting checkpoints", self._state.save, checkpoints)
            self._parts.saved(checkpoints)
        for stream, event in pending:
            if self._parts.owned(event.message.partition):
                await stream.ack(event)

    async def hand_over(self, wall: float, revoked: Iterable[TP] = ()) -> None:
        """Save the state now, for whoever reads these partitions next: the ``revoked`` ones, which
        are let go of (their events are not acknowledged: they are no longer this worker's to
        commit), or all of them when the worker stops. A rebalance or a stop does not wait on a
        ClickHouse that is away: past ``alert_handover_save_s`` the next owner restores the last
        saved checkpoint instead."""
        gone = {tp.partition for tp in revoked if tp.topic == self._topic}
        self._unrestored -= gone
        try:
            async with asyncio.timeout(self._handover_save_s):
                async with self._busy:
                    self._pending = [(s, e) for s, e in self._pending if e.message.partition not in gone]
                    await self.checkpoint(wall, force=True)
        except TimeoutError:
            log.warning("%s state not saved within %gs before handing it over: the next owner of its "
                        "partitions restores their last checkpoint", self._parts.name, self._handover_save_s)
        except ClickHouseError as exc:  # a rebalance must go on: the next owner restores the last checkpoint
            log.warning("%s state not saved before handing it over: %s", self._parts.name, exc)
        finally:
            self._pending = [(s, e) for s, e in self._pending if e.message.partition not in gone]
            self._parts.revoke(gone)
