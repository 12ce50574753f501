"""The owner's fence (feedback.election._Fence): when Kafka's group coordinator falls silent, the
queue is given up at the limit itself, measured from the coordinator's last answer. The
coordinator here is a stand-in that answers offset fetches until it is frozen; the fence's Kafka
side runs for real in tests/test_label_ui_process.py (a frozen broker)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition

from feedback.election import _Fence
from feedback.ownership import QueueOwnership


class _Coordinator:
    def __init__(self) -> None:
        self.frozen = asyncio.Event()
        self.last_answer = time.monotonic()
        self.rejoins = 0

    async def committed(self, tp: TopicPartition) -> int:
        if self.frozen.is_set():
            await asyncio.Event().wait()  # out of reach: no answer, ever
        self.last_answer = time.monotonic()
        return 0

    def unsubscribe(self) -> None:
        pass

    def subscribe(self, topics: list[str], listener: object) -> None:
        self.rejoins += 1


def test_the_fence_gives_the_queue_up_at_its_limit_after_the_last_answer() -> None:
    """Heartbeat 1 s, limit 1.3 s: not a whole number of probe cycles. A fence that only looked
    after each probe timed out (every 2 s while the coordinator is silent) gave the queue up 2 s
    after the last answer, spending the margin the limit keeps below the session timeout."""

    async def run() -> tuple[float, int]:
        own = QueueOwnership.sole("http://a:1")
        coordinator = _Coordinator()
        fence = _Fence(coordinator, TopicPartition("owner", 0), own, listener=None,  # type: ignore[arg-type]
                       heartbeat_s=1.0, limit_s=1.3, drain_s=1.0)
        task = asyncio.create_task(fence.run())
        await asyncio.sleep(2.3)  # a few answered probes first
        coordinator.frozen.set()
        while own.owns:
            await asyncio.sleep(0.01)
        gave_up_after = time.monotonic() - coordinator.last_answer
        for _ in range(100):  # the rejoin follows the release's drain, which is not awaited here
            if coordinator.rejoins:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        return gave_up_after, coordinator.rejoins

    gave_up_after, rejoins = asyncio.run(run())
    assert 1.3 <= gave_up_after < 1.8, gave_up_after
    assert rejoins == 1
