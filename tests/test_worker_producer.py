"""The worker's producer (streams.app.worker_app) on the real broker: a micro-batch's records reach a
partition as one record batch, not dozens (the embedded broker pays for every batch a partition holds
on each later fetch of it: benchmarks/embedded_broker_growth.py), and the dead letter of any message
the broker took fits its requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.app import worker_app
from streams.contracts import DeadLetter, DeadLetterReason, Kind
from streams.decode import Rejection, decode_record, to_dead_letter
from streams.samples import news_json
from streams.settings import VigilSettings
from tests.fixtures.alerting import scored
from tests.fixtures.broker import stored_batches
from tests.fixtures.labelling import topic_records

RECORDS = 256  # VIGIL_BATCH_MAX
VALUE = b"x" * 1000  # about a scored message's JSON


def publish_one_micro_batch(bootstrap: str, topic: str, settings: VigilSettings) -> list[int]:
    async def go() -> list[int]:
        app = worker_app(settings, bootstrap)
        out = app.topic(topic, key_type=bytes, value_type=bytes)
        await app.producer.start()
        try:
            # As the agents publish: every send handed to the producer, then every delivery awaited.
            deliveries = [await out.send(key=str(n).encode(), value=VALUE) for n in range(RECORDS)]
            await asyncio.gather(*deliveries)
        finally:
            await app.producer.stop()
        return await stored_batches(bootstrap, topic)

    return asyncio.run(go())


def test_a_micro_batch_reaches_its_partition_in_one_or_two_batches(kafka_broker, new_topic, tmp_path: Path) -> None:
    sizes = publish_one_micro_batch(kafka_broker.bootstrap, new_topic(partitions=1), VigilSettings(data_dir=tmp_path))
    assert sum(sizes) == RECORDS
    # One batch when all sends are handed over within the linger; a slow machine may split it once.
    assert len(sizes) <= 2, sizes


def test_without_linger_and_with_faust_batch_size_the_same_records_make_dozens(
    kafka_broker, new_topic, tmp_path: Path
) -> None:
    faust_defaults = VigilSettings(data_dir=tmp_path, kafka_producer_linger_ms=0, kafka_producer_max_batch_bytes=16384)
    sizes = publish_one_micro_batch(kafka_broker.bootstrap, new_topic(partitions=1), faust_defaults)
    assert sum(sizes) == RECORDS
    assert len(sizes) >= RECORDS * len(VALUE) // 16384, sizes


def test_the_dead_letter_of_a_message_the_broker_took_reaches_the_dead_letter_topic(
    kafka_broker, new_topic, tmp_path: Path
) -> None:
    """An 800 KB message, refused as too_large: its dead letter, with all its bytes in base64, was
    refused by the worker's producer (MessageSizeTooLargeError), so the batch never committed and
    the partition was stuck on it across restarts."""
    raw = news_json(id="n-big", headline="x" * 800_000)
    refused = decode_record(Kind.news, raw, max_bytes=64 * 1024, max_text_chars=8000)
    assert isinstance(refused, Rejection) and refused.reason is DeadLetterReason.too_large
    letter = to_dead_letter(refused, topic="vigil.news.raw", partition=0, offset=0, key=b"n-big", raw=raw)
    dlq = new_topic(partitions=1)

    async def publish() -> None:
        app = worker_app(VigilSettings(data_dir=tmp_path), kafka_broker.bootstrap)
        out = app.topic(dlq, key_type=bytes, value_type=bytes)
        await app.producer.start()
        try:  # as BatchProcessor._publish sends it
            await (await out.send(key=letter.key, value=letter.model_dump_json().encode()))
        finally:
            await app.producer.stop()

    asyncio.run(publish())
    ((key, value),) = asyncio.run(topic_records(kafka_broker.bootstrap, dlq, 1, timeout_s=10))
    back = DeadLetter.model_validate_json(value)
    assert key == b"n-big" and back.raw_bytes == len(raw) and raw.startswith(back.raw)


def test_the_scored_message_of_the_largest_message_allowed_fits_the_producer(tmp_path: Path) -> None:
    """A scored message carries the text again: a raw size limit raised past the producer's request
    would pass messages whose scored message can never be published (the batch retried for ever)."""
    with pytest.raises(ValidationError, match="max_message_bytes"):
        VigilSettings(data_dir=tmp_path, max_message_bytes=2 * 1024 * 1024)
    settings = VigilSettings(data_dir=tmp_path, max_message_bytes=768 * 1024, max_text_chars=100_000)
    # Characters JSON may write at 6 and 12 bytes, in both text fields: as large as a scored text gets.
    field = "\u0001📈" * 21_500
    raw = news_json(headline=field, body=field)
    assert 0.95 * settings.max_message_bytes < len(raw) <= settings.max_message_bytes
    item = decode_record(Kind.news, raw, max_bytes=settings.max_message_bytes, max_text_chars=settings.max_text_chars)
    assert not isinstance(item, Rejection), item
    value = scored(item, "positive", ["negative", "neutral", "positive"]).model_dump_json().encode()
    assert len(value) <= worker_app(settings, "127.0.0.1:9").conf.producer_max_request_size, len(value)
