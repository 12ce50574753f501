"""Replay: the bundled data as messages, users' files, pacing, and producing into the real broker."""

from __future__ import annotations

import asyncio
import codecs
import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from streams.broker import EmbeddedBroker
from streams.contracts import DeadLetterReason, Kind, NewsItem, SupportMessage
from streams.decode import Rejection, decode_record
from streams.replay import (
    OutgoingMessage,
    Pacer,
    ReplayError,
    ReplayInputError,
    bundled_news,
    bundled_support,
    interleave,
    read_messages,
    replay,
)
from streams.settings import REPO_ROOT

DATA = REPO_ROOT / "data"

# Also registered by tests/conftest.py; naming it here lets this module run on its own.
pytest_plugins = ["tests.fixtures.broker"]


def _decode(m: OutgoingMessage) -> NewsItem | SupportMessage | Rejection:
    return decode_record(m.kind, m.value, max_bytes=64 * 1024, max_text_chars=8000)


# --- bundled data ----------------------------------------------------------------------------


def test_bundled_news_are_valid_and_stable() -> None:
    first = list(bundled_news(DATA, limit=50))
    assert len(first) == 50
    assert first == list(bundled_news(DATA, limit=50))  # same ids, times, tickers every run
    assert {n.source for n in first} == {"twitter", "phrasebank"}
    assert all(n.id.startswith(("tw-", "fpb-")) for n in first)
    assert len({n.id for n in first}) == 50
    times = [n.published_at for n in first]
    assert times == sorted(times) and len(set(times)) == 50
    tweet = next(n for n in first if n.id == "tw-0")
    assert tweet.headline.startswith("$BYND") and tweet.tickers == ["BYND"]
    for n in first:  # what goes on the wire decodes back to the same item
        assert _decode(OutgoingMessage.of(Kind.news, n)) == n


def test_bundled_news_cover_both_files() -> None:
    ids = [n.id for n in bundled_news(DATA)]
    assert sum(i.startswith("tw-") for i in ids) == 9543
    assert sum(i.startswith("fpb-") for i in ids) == 3876
    assert len(set(ids)) == len(ids)


def test_bundled_support_are_valid_and_stable() -> None:
    msgs = list(bundled_support(DATA, limit=30))
    assert [m.id for m in msgs[:3]] == ["b77-0", "b77-1", "b77-2"]
    assert {m.channel for m in msgs} == {"chat", "email", "app", "phone", "social", "web"}
    assert [m.customer_id for m in msgs] == [m.customer_id for m in bundled_support(DATA, limit=30)]
    for m in msgs:
        assert _decode(OutgoingMessage.of(Kind.support, m)) == m


def test_interleave_keeps_the_ratio_then_drains() -> None:
    assert list(interleave("aaaaa", "bb", ratio=(2, 1))) == list("aabaaba")
    assert list(interleave([], [1, 2])) == [1, 2]
    with pytest.raises(ValueError, match="positive weight"):
        list(interleave("a", "b", ratio=(1,)))


# --- users' files ----------------------------------------------------------------------------


def test_jsonl_keeps_raw_lines_even_invalid_ones(tmp_path: Path) -> None:
    good = {"id": "n-1", "source": "wire", "published_at": "2026-01-01T00:00:00Z", "headline": "Up 📈"}
    lines = [json.dumps(good, ensure_ascii=False).encode(), b'{"id": "n-2", "headline":', b"\xff\xfe not utf8"]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\r\n".join(lines[:2]) + b"\n\n" + lines[2] + b"\n")
    out = list(read_messages(path, Kind.news))
    assert [m.value for m in out] == lines
    assert [m.key for m in out] == [b"n-1", None, None]
    assert isinstance(_decode(out[0]), NewsItem)
    assert [getattr(_decode(m), "reason", None) for m in out[1:]] == [
        DeadLetterReason.bad_json,
        DeadLetterReason.bad_encoding,
    ]


def test_csv_maps_columns_to_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        "id,src,published_at,headline,tickers,label\n"
        'n-1,wire,2026-01-01T00:00:00Z,"Tesla, Apple rally",TSLA;aapl,1\n'
        "n-2,wire,2026-01-01T00:00:00Z,,,0\n",
        encoding="utf-8",
    )
    out = list(read_messages(path, Kind.news, columns={"src": "source", "label": None}))
    first = _decode(out[0])
    assert isinstance(first, NewsItem)
    assert (first.source, first.headline, first.tickers) == ("wire", "Tesla, Apple rally", ["TSLA", "aapl"])
    second = _decode(out[1])  # empty headline cell: produced, refused by the worker
    assert isinstance(second, Rejection) and "headline" in second.detail



def test_a_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    """Notepad, PowerShell and Excel start UTF-8 files with a byte order mark: the first JSON line
    was produced with it (and dead-lettered as bad JSON), and a CSV's first column was refused."""
    good = {"id": "n-1", "source": "wire", "published_at": "2026-01-01T00:00:00Z", "headline": "Up"}
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(codecs.BOM_UTF8 + json.dumps(good).encode() + b"\n")
    (first,) = read_messages(jsonl, Kind.news)
    assert first.key == b"n-1" and isinstance(_decode(first), NewsItem)
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("id,source,published_at,headline\nn-1,wire,2026-01-01T00:00:00Z,Up\n", encoding="utf-8-sig")
    (row,) = read_messages(csv_file, Kind.news)
    assert row.key == b"n-1" and isinstance(_decode(row), NewsItem)

def test_csv_with_unknown_or_missing_columns_is_refused_up_front(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,text,label\nx,hello,1\n", encoding="utf-8")
    with pytest.raises(ReplayInputError, match=r"\['label'\] are not SupportMessage fields"):
        list(read_messages(path, Kind.support))
    with pytest.raises(ReplayInputError, match="required SupportMessage field"):
        list(read_messages(path, Kind.support, columns={"label": None}))
    with pytest.raises(ReplayInputError, match="expected a .jsonl"):
        read_messages(tmp_path / "in.parquet", Kind.news)


# --- pacing (pure; a fake clock) -------------------------------------------------------------


def test_pacer_schedules_against_the_start_not_the_last_send() -> None:
    now = [100.0]
    pacer = Pacer(2000, clock=lambda: now[0])
    assert pacer.burst == 10
    assert pacer.delay(0) == 0.0
    assert pacer.delay(5) == 0.0  # inside a burst: no wait
    assert pacer.delay(10) == pytest.approx(0.005)
    now[0] = 100.5  # fell behind (a slow send): catch up, no wait until back on schedule
    assert pacer.delay(500) == 0.0
    assert pacer.delay(1200) == pytest.approx(0.1)
    assert Pacer(0).delay(10**6) == 0.0
    for bad in (-1, math.inf, math.nan):  # `vigil produce --rate inf` passes typer's min=0
        with pytest.raises(ValueError, match="finite number >= 0"):
            Pacer(bad)


def test_a_pacer_restarted_once_connected_sends_no_burst_for_the_connection_time() -> None:
    """The replay made its pacer before the producer connected: a second spent connecting came out
    as 50 messages at once at 50 msg/s. It now restarts the schedule once connected."""
    now = [0.0]
    pacer = Pacer(50, clock=lambda: now[0])
    now[0] = 1.0  # connecting
    assert pacer.delay(49) == 0.0  # behind schedule by a second: the burst
    pacer.restart()
    assert pacer.delay(1) == pytest.approx(0.02) and pacer.delay(49) == pytest.approx(0.98)


# --- producing into the real broker ----------------------------------------------------------


async def _consume(bootstrap: str, topics: list[str], n: int, group: str) -> list:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    got: list = []
    try:
        async with asyncio.timeout(60):
            while len(got) < n:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got += records
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


def test_replay_produces_everything_keyed_by_id(kafka_broker: EmbeddedBroker, new_topic: Callable[..., str]) -> None:
    topics = {Kind.news: new_topic(4), Kind.support: new_topic(2)}
    news = (OutgoingMessage.of(Kind.news, m) for m in bundled_news(DATA, limit=600))
    support = (OutgoingMessage.of(Kind.support, m) for m in bundled_support(DATA, limit=300))
    bad = [OutgoingMessage.raw(Kind.news, "bad-1", b"\xff not json"), OutgoingMessage.raw(Kind.support, None, b"")]
    messages = [*interleave(news, support, ratio=(2, 1)), *bad]
    progress: list[int] = []

    counts = asyncio.run(replay(kafka_broker.bootstrap, topics, messages, rate_per_s=0, on_progress=progress.append))
    assert counts.sent == 902 and counts.failed == 0
    assert counts.by_topic == {topics[Kind.news]: 601, topics[Kind.support]: 301}
    assert progress[-1] == 902

    got = asyncio.run(_consume(kafka_broker.bootstrap, list(topics.values()), 902, "test-replay"))
    assert len(got) == 902
    assert Counter((r.key, r.value) for r in got) == Counter((m.key, m.value) for m in messages)
    by_key: dict[bytes, set[int]] = {}
    for r in got:
        if r.key is not None:
            by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in by_key.values())
    assert len({r.partition for r in got if r.topic == topics[Kind.news]}) > 1  # keys spread out


def test_replay_resends_an_id_to_the_same_partition(kafka_broker: EmbeddedBroker, new_topic: Callable[..., str]) -> None:
    topic = new_topic(4)
    msgs = [OutgoingMessage.raw(Kind.news, f"id-{i % 5}", f"v{i}".encode()) for i in range(40)]
    asyncio.run(replay(kafka_broker.bootstrap, {Kind.news: topic}, msgs, rate_per_s=400))
    got = asyncio.run(_consume(kafka_broker.bootstrap, [topic], 40, "test-resend"))
    partitions: dict[bytes, set[int]] = {}
    for r in got:
        partitions.setdefault(r.key, set()).add(r.partition)
    assert len(partitions) == 5 and all(len(p) == 1 for p in partitions.values())
    # Within one id, order is kept.
    for key in partitions:
        values = [int(r.value[1:]) for r in sorted(got, key=lambda r: r.offset) if r.key == key]
        assert values == sorted(values)


def test_replay_to_nowhere_is_a_clear_error(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path) as broker:
        bootstrap = broker.bootstrap
    with pytest.raises(ReplayError, match="could not start a producer"):
        asyncio.run(replay(bootstrap, {Kind.news: "t"}, [OutgoingMessage.raw(Kind.news, "k", b"v")]))
