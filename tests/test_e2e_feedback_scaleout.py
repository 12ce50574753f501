"""Near-duplicate collapse across workers, on the real parts: two worker processes in one consumer
group on the Tansu broker, sharing Debian's clickhouse-server 18.16.

Both workers first select from distinct warm-up headlines, so that each has read the queue's
history (a selector takes what is queued as its history before its first batch after an
assignment); a selector starting later would take the other's picks as history and hide the
difference this test is about. Then copies of a
few headlines (differing in case, digits and punctuation) come in under distinct ids, so the
scored topic spreads each text's copies over both workers' partitions. Every message is uncertain
by the thresholds set here. The label queue must still hold each text once: candidates are
re-keyed by text fingerprint, so all copies of a text meet in one worker's selector.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feedback.selection import fingerprint
from feedback.store import FeedbackStore
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.replay import OutgoingMessage
from streams.samples import news_json
from streams.settings import VigilSettings
from streams.worker import WorkerProcess
from tests.e2e_stack import score_all, stack_env, use_stack

pytestmark = pytest.mark.slow

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HEADLINES = [
    "Acme shares plunge {n}% after weak guidance",
    "Bolt beats estimates by {n} cents and raises its outlook",
    "Cobalt recalls {n} thousand cars over faulty brakes",
    "Delta wins a {n} billion defence contract",
    "Ember cuts {n} jobs as demand slows",
]
COPIES = 8
WARM_UP = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
           "kilo", "lima", "mike", "november", "oscar", "papa"]
_SHARE = re.compile(r"label selection: (\d+) of (\d+) label-candidate partitions here")
_HISTORY = re.compile(r"label selection: took \d+ items queued")


def _copy(template: str, i: int) -> str:
    text = template.format(n=i + 2)
    return text.upper() + "!" if i % 2 else text


def _news(mid: str, at: datetime, headline: str) -> OutgoingMessage:
    return OutgoingMessage.raw(Kind.news, mid, news_json(id=mid, published_at=at.isoformat(), headline=headline))


def _copies() -> list[OutgoingMessage]:
    return [
        _news(f"n-{h}-{i}", T0 + timedelta(seconds=10 * (i * len(HEADLINES) + h)), _copy(template, i))
        for i in range(COPIES)
        for h, template in enumerate(HEADLINES)
    ]


def _warm_up(round_no: int) -> list[OutgoingMessage]:
    return [_news(f"w-{round_no}-{word}", T0, f"Warm up {word} {round_no * 'x'} markets") for word in WARM_UP]


def _owned_share(log: Path) -> int:
    """Candidate partitions the worker holds after its latest assignment (0 before any)."""
    found = _SHARE.findall(log.read_text()) if log.exists() else []
    return int(found[-1][0]) if found else 0


def _history_read(log: Path) -> bool:
    """The worker's selector has read the queue's history since its latest assignment."""
    text = log.read_text()
    shares, reads = list(_SHARE.finditer(text)), list(_HISTORY.finditer(text))
    return bool(shares and reads) and reads[-1].start() > shares[-1].start()


@pytest.fixture
def two_workers(tmp_path: Path, tiny_registry: Path, kafka_broker, clickhouse_server, monkeypatch):
    env = stack_env(
        tmp_path, kafka_broker.bootstrap, clickhouse_server.up(), partitions=4,
        VIGIL_FEEDBACK_AUDIT_RATE="0",
        VIGIL_FEEDBACK_BUDGET_PER_HOUR="10000",
        VIGIL_FEEDBACK_MAX_CLASS_SHARE="1",
        VIGIL_FEEDBACK_SENTIMENT_ENTROPY_ABOVE="0",  # every message is uncertain
    )
    settings = use_stack(env, monkeypatch, tiny_registry)
    workers = [
        WorkerProcess(kafka_broker.bootstrap, tmp_path / f"worker-{i}.log", {**env, "VIGIL_WORKER_ID": f"w{i}"})
        for i in range(2)
    ]
    yield settings, workers
    for w in workers:
        w.stop(timeout_s=10)


def _queued_copies(settings: VigilSettings) -> Counter[bytes]:
    """Queued items of the copied headlines, per text fingerprint."""
    with open_store(settings) as store:
        items = FeedbackStore(store).fetch_items()
    return Counter(fingerprint(i.request.text) for i in items if i.request.message_id.startswith("n-"))


def test_copies_of_a_text_on_two_workers_are_queued_once(two_workers) -> None:
    settings, workers = two_workers
    for w in workers:
        w.start()
    deadline = time.monotonic() + 240
    while not all(_owned_share(w.log_path) > 0 for w in workers):
        assert all(w.proc.poll() is None for w in workers), "a worker exited"
        assert time.monotonic() < deadline, "the two workers did not both get label-candidate partitions"
        time.sleep(0.5)
    sent = 0
    while not all(_history_read(w.log_path) for w in workers):
        assert time.monotonic() < deadline, "the two workers' selectors did not both start"
        warm_up = _warm_up(sent // len(WARM_UP))
        assert asyncio.run(score_all(settings, warm_up, sent)), "a warm-up round was not scored"
        sent += len(warm_up)
        time.sleep(2.0)

    assert asyncio.run(score_all(settings, _copies(), sent)), "not every copy came out of the workers"
    # Selection follows scoring; wait until the queue holds every text and nothing more comes.
    deadline, last, quiet_since = time.monotonic() + 120, Counter(), time.monotonic()
    while time.monotonic() < deadline and (len(last) < len(HEADLINES) or time.monotonic() - quiet_since < 5):
        time.sleep(1.0)
        now = _queued_copies(settings)
        if now != last:
            last, quiet_since = now, time.monotonic()
    for w in workers:
        assert w.stop() == 0
    assert all(_owned_share(w.log_path) < 4 for w in workers), "one worker held every candidate partition"
    queued = _queued_copies(settings)
    assert set(queued) == {fingerprint(t.format(n=0)) for t in HEADLINES}
    assert max(queued.values()) == 1, f"a text was queued more than once: {sorted(queued.values())}"
