"""The Kafka side of queue ownership: which labelling-service instance owns the lease book.

Every instance joins one consumer group (``ui_group_id``) on the owner topic; the member that is
given partition 0 owns the queue. Kafka's group protocol already detects a member that went away
(a clean stop leaves the group at once; a crash is noticed after ``ui_owner_session_timeout_ms``),
so no other coordinator is needed. Each new owner loads the queue from ClickHouse (leases
included, so annotators keep their items) and then announces its URL on the topic, which every
instance follows to know where to forward queue calls.

A rebalance revokes partition 0 from the owner first (Kafka's eager protocol), so even an
instance joining the group makes the queue change hands, or come back to the same owner, within a
few seconds; queue calls wait for that (``QueueOwnership.decided``).

An owner cut off from Kafka (but still reachable by annotators) must stop serving before the
group gives the queue to another instance, which happens one session timeout after its last
heartbeat. aiokafka keeps a member's assignment through such a cut, so the owner fences itself:
when the group coordinator has not answered for all but two heartbeat intervals of a session
timeout, it gives the queue up and re-subscribes, and it serves again only when a rebalance gives
it partition 0 back.

That fence rests on timers, which a paused or CPU-starved process runs late. So every call that
changes the queue is also confirmed with Kafka (``QueueOwnership.confirm_with``): an offset commit
on the owner partition, which the group coordinator accepts only from the member that holds it in
the current generation (otherwise ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID or REBALANCE_IN_PROGRESS),
and which gets no answer while the coordinator is out of reach. A refused or unanswered
confirmation, before the change or after it is written, turns the call away with 503; the
rebalance that follows settles the ownership.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from feedback.contracts import QueueOwnerAnnouncement
from feedback.ownership import QueueOwnership
from streams.kafka_config import client_kwargs
from streams.settings import VigilSettings
from streams.topics import ensure_topics

log = logging.getLogger(__name__)

Publish = Callable[[str, str, bytes], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner_partition: TopicPartition, ownership: QueueOwnership, drain_s: float,
                 take_over: Callable[[], Awaitable[None]], announce: Callable[[], Awaitable[None]]) -> None:
        self._tp = owner_partition
        self._ownership = ownership
        self._drain_s = drain_s
        self._take_over = take_over
        self._announce = announce

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # aiokafka waits for this before the group moves on: the calls in flight finish first.
        await self._ownership.release(self._drain_s)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._tp not in assigned:
            self._ownership.stand_by()
            log.info("labelling queue: standing by, queue calls go to %s",
                     self._ownership.owner_url or "the owner, once it announces itself")
            return
        await self._take_over()
        self._ownership.take()
        await self._announce()
        log.info("labelling queue: this instance (%s) owns it", self._ownership.url)


async def run_election(
    settings: VigilSettings,
    bootstrap: str,
    ownership: QueueOwnership,
    *,
    take_over: Callable[[], Awaitable[None]],
    publish: Publish,
) -> None:
    """Take part in the election until cancelled; on the way out, give the queue up and leave
    the group, so a standby takes over at once."""
    topic = settings.topic_label_ui_owner
    await asyncio.to_thread(ensure_topics, bootstrap, [topic], 1, **client_kwargs(settings))
    tp = TopicPartition(topic, 0)

    async def announce() -> None:
        note = QueueOwnerAnnouncement(url=ownership.url, at=datetime.now(UTC))
        await publish(topic, "owner", note.model_dump_json().encode())

    kafka = client_kwargs(settings)
    # Members learn of a rebalance at their next heartbeat: a short interval shortens hand-overs.
    heartbeat_ms = min(1000, settings.ui_owner_session_timeout_ms // 3)
    group = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=settings.ui_group_id, enable_auto_commit=False,
        session_timeout_ms=settings.ui_owner_session_timeout_ms, heartbeat_interval_ms=heartbeat_ms,
        client_id="vigil-label-ui", **kafka,
    )
    listener = _Listener(tp, ownership, settings.ui_handover_wait_s, take_over, announce)
    group.subscribe([topic], listener=listener)
    ownership.confirm_with(confirmation(group, tp, timeout_s=2 * heartbeat_ms / 1000))
    fence = _Fence(group, tp, ownership, listener, heartbeat_s=heartbeat_ms / 1000,
                   limit_s=(settings.ui_owner_session_timeout_ms - 2 * heartbeat_ms) / 1000,
                   drain_s=settings.ui_handover_wait_s)
    follower = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                client_id="vigil-label-ui-follower", **kafka)
    await follower.start()
    try:
        follower.assign([tp])
        await follower.seek_to_beginning(tp)
        await group.start()
        try:
            await asyncio.gather(_stay_in_group(group), _follow_announcements(follower, ownership), fence.run())
        finally:
            await ownership.release(settings.ui_handover_wait_s)
            await group.stop()
            ownership.stand_by()  # calls waiting for a decision get one now, not after the wait
    finally:
        await follower.stop()


def confirmation(group: AIOKafkaConsumer, tp: TopicPartition, *, timeout_s: float) -> Callable[[], Awaitable[bool]]:
    """The check ``QueueOwnership`` runs before each queue change (see the module doc)."""

    async def confirm() -> bool:
        try:
            # The offset itself means nothing: the owner partition's records are read by the follower.
            await asyncio.wait_for(group.commit({tp: 0}), timeout_s)
        except (KafkaError, TimeoutError) as e:
            log.warning("labelling queue: Kafka did not confirm that this instance still owns it (%s); "
                        "turning a queue change away", str(e) or type(e).__name__)
            return False
        return True

    return confirm


class _Fence:
    """Gives the queue up when the group coordinator has been silent for ``limit_s``."""

    def __init__(self, group: AIOKafkaConsumer, tp: TopicPartition, ownership: QueueOwnership,
                 listener: ConsumerRebalanceListener, *, heartbeat_s: float, limit_s: float, drain_s: float) -> None:
        self._group = group
        self._tp = tp
        self._ownership = ownership
        self._listener = listener
        self._heartbeat_s = heartbeat_s
        self._limit_s = limit_s
        self._drain_s = drain_s

    async def run(self) -> None:
        last_answer = time.monotonic()
        while True:
            started = time.monotonic()
            # An owner's probe waits no later than its deadline, so the fence acts at the limit
            # itself, not up to a probe cycle after it (which would use up the margin).
            left = last_answer + self._limit_s - started
            wait_s = max(0.01, min(self._heartbeat_s, left)) if self._ownership.owns else self._heartbeat_s
            answered = False
            try:
                # An offset fetch goes to the group coordinator, as the heartbeats do.
                await asyncio.wait_for(self._group.committed(self._tp), wait_s)
                last_answer, answered = time.monotonic(), True
            except (KafkaError, TimeoutError):
                pass
            silent_s = time.monotonic() - last_answer
            if self._ownership.owns and silent_s >= self._limit_s:
                log.error("labelling queue: Kafka's group coordinator has not answered for %.1fs; giving the queue "
                          "up before the group hands it to another instance", silent_s)
                await self._ownership.release(self._drain_s)
                # A rejoin, so that the queue comes back (here or elsewhere) once Kafka answers again.
                self._group.unsubscribe()
                self._group.subscribe([self._tp.topic], listener=self._listener)
            # Probe once a heartbeat while the coordinator answers; a probe that failed fast waits out its time.
            await asyncio.sleep(max(0.0, started + (self._heartbeat_s if answered else wait_s) - time.monotonic()))


async def _stay_in_group(group: AIOKafkaConsumer) -> None:
    # The owner's partition holds only announcements, which the follower reads; polling keeps the
    # membership and its rebalance callbacks going.
    while True:
        await group.getmany(timeout_ms=1000)


async def _follow_announcements(follower: AIOKafkaConsumer, ownership: QueueOwnership) -> None:
    async for record in follower:
        try:
            note = QueueOwnerAnnouncement.model_validate_json(record.value or b"")
        except ValidationError as e:
            log.warning("ignoring a bad queue-owner announcement at %s offset %d: %s",
                        record.topic, record.offset, e.errors()[0]["msg"])
            continue
        ownership.announce(note.url)
