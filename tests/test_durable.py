"""The retry loop that makes a batch's writes durable before it acks (streams/durable.py)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from streams.clickhouse import StorageUnavailable
from streams.durable import until_stored
from streams.metrics import Metrics
from streams.watchdog import Watchdogs


def test_every_wait_is_within_the_longest_back_off(caplog: pytest.LogCaptureFixture) -> None:
    """The first wait was 0.5 s whatever VIGIL_CLICKHOUSE_RETRY_MAX_S said."""
    failures = iter([StorageUnavailable("down"), StorageUnavailable("down")])

    def write() -> str:
        if (failure := next(failures, None)) is not None:
            raise failure
        return "stored"

    metrics = Metrics()
    with ThreadPoolExecutor(1) as executor, caplog.at_level(logging.ERROR, logger="streams.durable"):
        result = asyncio.run(until_stored("insert", write, executor=executor, metrics=metrics,
                                          watchdogs=Watchdogs(60.0, started_at=0.0), retry_max_s=0.1))
    assert result == "stored"
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["insert failed, retrying in 0.1s"] * 2
    assert metrics.registry.get_sample_value("vigil_storage_errors_total") == 2
