"""The one retry loop every agent uses to make a batch's writes durable before it acks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from streams.clickhouse import StorageUnavailable
from streams.metrics import Metrics
from streams.watchdog import Watchdogs

log = logging.getLogger(__name__)
T = TypeVar("T")


async def until_stored(
    what: str,
    fn: Callable[..., T],
    *args: Any,
    executor: ThreadPoolExecutor,
    metrics: Metrics,
    watchdogs: Watchdogs,
    retry_max_s: float,
) -> T:
    """Run a storage call off the loop, retrying with backoff until it succeeds. The caller's batch
    stays un-acked meanwhile and take() cannot buffer more, so memory stays bounded while
    ClickHouse is away."""
    delay = min(0.5, retry_max_s)
    while True:
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except StorageUnavailable as exc:
            metrics.storage_errors.inc()
            log.error("%s failed, retrying in %.1fs (offsets stay uncommitted): %s", what, delay, exc)
            watchdogs.excuse(time.monotonic())  # waiting on a known dependency is not a stall
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_max_s)
