"""Retrying a ClickHouse call on transient failures (BackendUnavailable), shared by every store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from .errors import BackendUnavailable, StorageUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


def call_with_retries(what: str, fn: Callable[[], T], *, attempts: int, retry_max_s: float) -> T:
    """``fn()``, retried with exponential back-off while the backend is unavailable; after
    ``attempts`` tries StorageUnavailable, whose message tells the caller what to do."""
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=min(0.2, retry_max_s), max=retry_max_s),
        retry=retry_if_exception_type(BackendUnavailable),
        before_sleep=lambda rs: log.warning(
            "ClickHouse %s failed (attempt %d/%d), retrying: %s",
            what, rs.attempt_number, attempts, rs.outcome.exception() if rs.outcome else "",
        ),
    )
    try:
        return retrying(fn)
    except RetryError as e:
        cause = e.last_attempt.exception()
        raise StorageUnavailable(
            f"ClickHouse {what} failed {attempts} times; last error: {cause}. Check what it names: that "
            "ClickHouse is running and reachable (VIGIL_CLICKHOUSE_URL), has disk space, memory for the "
            "statement (MEMORY_LIMIT_EXCEEDED) and merges keeping up (TOO_MANY_PARTS); the batch was not "
            "stored, so keep its Kafka offsets uncommitted and retry."
        ) from cause
