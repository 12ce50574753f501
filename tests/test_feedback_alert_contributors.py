"""The feedback agent finds the scored messages behind a batch of alerts in ClickHouse (real chdb):
one read per kind for the whole batch, the alert's own model version when several scored a message,
and a clear error for messages that never arrive."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import feedback.agent
from feedback.agent import FeedbackProcessor
from feedback.drift import DriftMonitor
from feedback.selection import Selector, policy_from_settings
from feedback.store import FeedbackStore
from streams.alerting.contracts import Alert, ContributingMessage
from streams.clickhouse import open_store
from streams.contracts import NewsItem, SupportMessage
from streams.metrics import Metrics
from streams.settings import VigilSettings
from streams.watchdog import Watchdogs
from tests.fixtures.alerting import scored

T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
SENTIMENT = ["negative", "neutral", "positive"]


def news(i: int) -> NewsItem:
    return NewsItem(id=f"n-{i}", source="wire", headline=f"$VGLX headline {i}", published_at=T0 + timedelta(seconds=i))


def support(i: int) -> SupportMessage:
    return SupportMessage(id=f"s-{i}", channel="chat", customer_id="c-1", text=f"card lost {i}",
                          created_at=T0 + timedelta(seconds=i))


def alert(aid: str, kind: str, ids: list[str], version: str) -> Alert:
    subject = {"ticker": "VGLX"} if kind == "sentiment" else {"intent": "lost_or_stolen_card"}
    return Alert(id=aid, kind=kind, rule="r", severity="critical", model_version=version, created_at=T0, **subject,
                 top_messages=[ContributingMessage(id=i, text="t", label="x", score=0.5) for i in ids])


@pytest.fixture
def processor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = VigilSettings(data_dir=tmp_path, clickhouse_url=None)
    store = open_store(settings)
    executor = ThreadPoolExecutor(1)
    reads: list[tuple[str, list[str]]] = []
    fetch = store.fetch_scored

    def counted(kind, ids):
        reads.append((str(kind), sorted(ids)))
        return fetch(kind, ids)

    monkeypatch.setattr(store, "fetch_scored", counted)
    monkeypatch.setattr(feedback.agent, "_CONTRIBUTOR_WAIT_S", 1.0)
    proc = FeedbackProcessor(
        selector=Selector(policy_from_settings(settings)), drift=DriftMonitor(), candidates_topic=None, requests_topic=None,
        model_events_topic=None, store=store, feedback=FeedbackStore(store), metrics=Metrics(),
        io_executor=executor, retry_max_s=1.0, watchdogs=Watchdogs(60, started_at=time.monotonic()),
        warm_start=0,
    )
    proc.reads = reads  # type: ignore[attr-defined]
    yield proc, store
    executor.shutdown()
    store.close()


def test_a_batch_of_alerts_reads_its_contributors_once_per_kind(processor) -> None:
    proc, store = processor
    store.write_scored([scored(news(i), "negative", SENTIMENT, model_version="v1") for i in range(6)])
    store.write_scored([scored(news(i), "positive", SENTIMENT, model_version="v2") for i in (0, 1)])
    store.write_scored([scored(support(i), "lost_or_stolen_card", ["lost_or_stolen_card", "card_arrival"],
                               model_version="v1") for i in range(50)])
    alerts = [alert("a-news-v1", "sentiment", ["n-0", "n-1", "n-2"], "v1"),
              alert("a-news-v2", "sentiment", ["n-1", "n-0"], "v2"),
              *(alert(f"a-s-{i}", "triage", [f"s-{i}"], "v1") for i in range(50))]
    got = asyncio.run(proc._contributors(alerts))
    assert sorted(kind for kind, _ in proc.reads) == ["news", "support"]  # 52 alerts, 2 reads
    assert [(m.id, m.model_version, m.label) for m in got[0]] == [
        ("n-0", "v1", "negative"), ("n-1", "v1", "negative"), ("n-2", "v1", "negative")]
    assert [(m.id, m.model_version, m.label) for m in got[1]] == [("n-0", "v2", "positive"), ("n-1", "v2", "positive")]
    assert [[m.id for m in ms] for ms in got[2:]] == [[f"s-{i}"] for i in range(50)]


def test_contributors_stored_late_are_waited_for_and_lost_ones_are_reported(processor, caplog) -> None:
    proc, store = processor
    store.write_scored([scored(news(0), "negative", SENTIMENT, model_version="v1")])

    async def run():
        async def store_late():
            await asyncio.sleep(0.3)
            store.write_scored([scored(news(1), "negative", SENTIMENT, model_version="v1")])

        late = asyncio.create_task(store_late())
        got = await proc._contributors([alert("a-1", "sentiment", ["n-0", "n-1", "n-9"], "v1")])
        await late
        return got

    with caplog.at_level(logging.ERROR, logger="feedback.agent"):
        (got,) = asyncio.run(run())
    assert [m.id for m in got] == ["n-0", "n-1"]
    assert proc.reads[0] == ("news", ["n-0", "n-1", "n-9"])
    assert all(ids in (["n-1", "n-9"], ["n-9"]) for _, ids in proc.reads[1:])  # only what is missing is read again
    assert any("a-1" in r.getMessage() and "n-9" in r.getMessage() for r in caplog.records)
