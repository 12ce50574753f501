"""decode_record against every hostile input we know of, plus a fuzz test: it never raises."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.contracts import DeadLetter, DeadLetterReason, Kind, NewsItem, SupportMessage
from streams.decode import MAX_DETAIL_CHARS, Rejection, content_hash, decode_record, to_dead_letter
from streams.pipeline import Limits, RawRecord, decode_batch
from streams.samples import hostile_samples, valid_exotic_texts

MAX_BYTES = 64 * 1024
MAX_CHARS = 8000
R = DeadLetterReason

NEWS = {"id": "n-1", "source": "wire", "published_at": "2026-11-23T09:00:00Z", "headline": "Shares rise"}
SUPPORT = {"id": "s-1", "channel": "chat", "customer_id": "c-1", "text": "card stolen", "created_at": "2026-11-23T09:00:00+01:00"}


def news(**fields: object) -> bytes:
    return json.dumps({**NEWS, **fields}, ensure_ascii=False).encode()


def drop(base: dict, name: str) -> bytes:
    return json.dumps({k: v for k, v in base.items() if k != name}).encode()


def decode(kind: Kind, raw: bytes | None, max_chars: int = MAX_CHARS):
    return decode_record(kind, raw, max_bytes=MAX_BYTES, max_text_chars=max_chars)


@pytest.mark.parametrize(
    ("kind", "raw", "reason", "detail_has"),
    [
        pytest.param(Kind.news, None, R.invalid, "no value", id="null value"),
        pytest.param(Kind.news, b"", R.invalid, "no value", id="empty bytes"),
        pytest.param(Kind.news, b'{"id": "n-1", "headline": ', R.bad_json, "line 1 column 27", id="truncated JSON"),
        pytest.param(Kind.news, b'{"id": "n-1",\n "x": tru}', R.bad_json, "line 2 column", id="bad literal"),
        pytest.param(Kind.news, b"[1, 2]", R.bad_json, "got a JSON array", id="array"),
        pytest.param(Kind.news, b'"headline"', R.bad_json, "got a JSON string", id="string"),
        pytest.param(Kind.news, b"null", R.bad_json, "got a JSON null", id="JSON null"),
        pytest.param(Kind.news, b"42", R.bad_json, "got a JSON number", id="number"),
        pytest.param(Kind.news, news(score=float("nan")), R.bad_json, "NaN", id="NaN"),
        pytest.param(Kind.news, b'{"id": "a", "id": "b"}', R.bad_json, "'id' appears more than once", id="dup key"),
        pytest.param(Kind.news, b"[" * 5000 + b"]" * 5000, R.bad_json, "nested too deeply", id="deep nesting"),
        pytest.param(Kind.news, news(headline=42), R.invalid, "headline: Input should be a valid string, got a JSON number", id="wrong type"),
        pytest.param(Kind.news, news(tickers="TSLA"), R.invalid, "tickers: Input should be a valid list", id="wrong container"),
        pytest.param(Kind.news, news(published_at="yesterday"), R.invalid, "published_at:", id="bad datetime"),
        pytest.param(Kind.news, news(published_at="2026-11-23T09:00:00"), R.invalid, "published_at: Input should have timezone", id="naive datetime"),
        pytest.param(Kind.news, drop(NEWS, "headline"), R.invalid, "headline: required field is missing", id="missing field"),
        pytest.param(Kind.support, drop(SUPPORT, "customer_id"), R.invalid, "customer_id: required field is missing", id="missing support field"),
        pytest.param(Kind.news, news(headline=""), R.invalid, "headline: String should have at least 1 character", id="empty text"),
        pytest.param(Kind.news, news(headline=" \t\n "), R.invalid, "headline: Value error, must contain visible text", id="whitespace text"),
        pytest.param(Kind.news, news(headline="\u200b\u202e\x00\x07"), R.invalid, "headline: Value error, must contain visible", id="invisible text"),
        pytest.param(Kind.support, json.dumps({**SUPPORT, "customer_id": "\n\x00 "}).encode(), R.invalid, "customer_id: Value error, must contain visible", id="blank customer id"),
        pytest.param(Kind.news, news(sentiment="bullish"), R.invalid, "sentiment: unknown field", id="unknown field"),
        pytest.param(Kind.news, news(id="has space"), R.invalid, "id: String should match", id="bad id"),
        pytest.param(Kind.news, news(tickers=["TSLA", "$$$"]), R.invalid, "tickers.1:", id="bad ticker"),
        pytest.param(Kind.news, news(tickers=["TSLA."]), R.invalid, "tickers.0: Value error, must be a ticker such as TSLA or BRK.B", id="ticker that does not normalise"),
        pytest.param(Kind.support, json.dumps({**SUPPORT, "channel": "pigeon"}).encode(), R.invalid, "channel: Input should be 'chat'", id="bad channel"),
        pytest.param(Kind.news, news(headline="a" * (MAX_CHARS + 1)), R.too_large, "headline: 8,001 characters; the limit is 8,000", id="long text"),
        pytest.param(Kind.news, news(body="é" * (MAX_CHARS + 1)), R.too_large, "body: 8,001 characters", id="long body"),
        pytest.param(Kind.news, news(headline="a" * 1_000_000), R.too_large, "the limit is 65,536", id="1 MB text"),
        pytest.param(Kind.news, news(headline="MARK").replace(b"MARK", b"bad \xff bytes"), R.bad_encoding, "byte 0xff at offset", id="invalid UTF-8"),
        pytest.param(Kind.news, news(headline="MARK").replace(b"MARK", b"\xed\xa0\x80"), R.bad_encoding, "not UTF-8", id="UTF-8 encoded surrogate"),
        pytest.param(Kind.news, news(headline="MARK").replace(b"MARK", b"\\ud800 lone"), R.bad_encoding, "headline: contains a lone UTF-16 surrogate", id="lone surrogate"),
        pytest.param(Kind.news, news(tickers=["MARK"]).replace(b"MARK", b"\\udc00"), R.bad_encoding, "tickers.0: contains a lone", id="lone surrogate in list"),
        pytest.param(Kind.news, b'{"\\ud800": 1}', R.bad_encoding, "the field name", id="lone surrogate key"),
        pytest.param(Kind.news, b"\xef\xbb\xbf" + news(), R.bad_json, "not valid JSON", id="BOM"),
    ],
)
def test_hostile_inputs_are_rejected_with_reason_and_field(
    kind: Kind, raw: bytes | None, reason: DeadLetterReason, detail_has: str
) -> None:
    result = decode(kind, raw)
    assert isinstance(result, Rejection), result
    assert result.reason is reason, result.detail
    assert detail_has in result.detail


def test_many_problems_are_listed_together() -> None:
    result = decode(Kind.news, json.dumps({"id": 7, "headline": " ", "extra": 1}).encode())
    assert isinstance(result, Rejection) and result.reason is R.invalid
    for part in ["id: Input should be a valid string", "source: required", "published_at: required", "headline: Value error", "extra: unknown field"]:
        assert part in result.detail


def test_the_configured_text_limit_applies() -> None:
    raw = news(headline="a" * 20)
    assert isinstance(decode(Kind.news, raw, max_chars=20), NewsItem)
    result = decode(Kind.news, raw, max_chars=19)
    assert isinstance(result, Rejection) and result.reason is R.too_large and "max_text_chars" in result.detail


def test_the_byte_limit_applies_before_decoding() -> None:
    raw = b"\xff" * 2000  # not UTF-8, but too large is what matters first
    result = decode_record(Kind.news, raw, max_bytes=1999, max_text_chars=MAX_CHARS)
    assert isinstance(result, Rejection) and result.reason is R.too_large
    assert "2,000 bytes" in result.detail and "1,999" in result.detail


@pytest.mark.parametrize("text", [*valid_exotic_texts(), "emoji pair \U0001f600 via JSON", "עברית RTL", "混合 text 123"])
def test_emoji_rtl_and_cjk_are_valid(text: str) -> None:
    for raw in (news(headline=text), json.dumps({**NEWS, "headline": text}).encode()):  # raw UTF-8 and \u escapes
        item = decode(Kind.news, raw)
        assert isinstance(item, NewsItem) and item.headline == text


def test_escaped_surrogate_pair_is_one_valid_character() -> None:
    item = decode(Kind.news, news(headline="MARK").replace(b"MARK", b"up \\ud83d\\ude80"))
    assert isinstance(item, NewsItem) and item.headline == "up \U0001f680"


def test_valid_support_message() -> None:
    item = decode(Kind.support, json.dumps({**SUPPORT, "locale": "en_GB"}).encode())
    assert isinstance(item, SupportMessage) and item.created_at.utcoffset().total_seconds() == 3600


@pytest.mark.parametrize("kind", list(Kind))
def test_shared_hostile_samples_get_their_reason(kind: Kind) -> None:
    """Through the worker's decode, which also holds event times to its clock."""
    samples = hostile_samples(kind, "t", MAX_BYTES)
    records = [RawRecord("raw", 0, i, None, s.raw, 1_764_000_000_000) for i, s in enumerate(samples)]
    decoded, dead = decode_batch(kind, records, Limits(MAX_BYTES, MAX_CHARS), datetime(2026, 12, 5, tzinfo=UTC))
    assert decoded == []
    assert [(d.offset, d.reason) for d in dead] == [(i, s.reason) for i, s in enumerate(samples)]


@pytest.mark.parametrize(("value", "detail"), [
    ("0001-01-01T00:00:00+01:00", "out of range once converted to UTC"),
    ("9999-12-31T23:59:59-01:00", "out of range once converted to UTC"),
    ("1969-12-31T23:59:59Z", "from 1970-01-01 up to 2106-01-01 UTC"),
    ("2106-01-01T00:00:00Z", "from 1970-01-01 up to 2106-01-01 UTC"),
])
def test_event_times_clickhouse_cannot_store_are_refused(value: str, detail: str) -> None:
    """Before this, a year-1 time with a +01:00 offset passed and made the batch's commit raise
    (OverflowError), so neither it nor the valid messages beside it were ever stored."""
    result = decode(Kind.news, news(published_at=value))
    assert isinstance(result, Rejection) and result.reason is R.invalid
    assert result.detail.startswith("published_at: ") and detail in result.detail


def test_dead_letter_keeps_the_bytes_and_bounds_the_detail() -> None:
    raw = b"\xff\x00 raw"
    letter = to_dead_letter(Rejection(R.bad_json, "x" * 5000), topic="t", partition=2, offset=9, key=b"k", raw=raw)
    assert isinstance(letter, DeadLetter)
    assert (letter.raw, letter.key, letter.partition, letter.offset, letter.reason) == (raw, b"k", 2, 9, R.bad_json)
    assert len(letter.detail) == MAX_DETAIL_CHARS
    assert DeadLetter.model_validate_json(letter.model_dump_json()).raw == raw


def test_the_dead_letter_of_a_message_of_any_size_fits_a_request_of_the_workers_producer(tmp_path) -> None:
    """An 800 KB message the broker took was refused as too_large, and its dead letter (the bytes
    in base64) was over the worker producer's 1,000,000-byte requests: the batch's commit failed
    before it was stored or acked, and the message came back after every restart."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    from streams.app import worker_app
    from streams.settings import VigilSettings

    limit = worker_app(VigilSettings(data_dir=tmp_path), "localhost:9092").conf.producer_max_request_size
    topic = "t" * 249  # Kafka's longest topic name
    raw, key = bytes(range(256)) * 8192, b"k" * 5000  # 2 MiB; keys are not bounded by the worker
    # A detail of control characters, each written \u00XX in JSON: the longest a detail gets.
    letter = to_dead_letter(Rejection(R.invalid, "\x01" * 5000), topic=topic, partition=3, offset=7, key=key, raw=raw)
    value = letter.model_dump_json().encode()
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(letter.key, value, []) < limit
    # It holds the start of the message, and says how long it was, what it hashes to, where the rest is.
    assert raw.startswith(letter.raw) and letter.raw and letter.key and key.startswith(letter.key)
    assert (letter.raw_bytes, letter.raw_sha256) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert letter.detail.endswith(f"of the message's {len(raw):,} bytes; all of them stay on {topic} partition 3 "
                                  "offset 7]")
    assert len(letter.detail) <= MAX_DETAIL_CHARS
    assert DeadLetter.model_validate_json(value) == letter


def test_a_field_name_holding_terminal_escape_codes_is_quoted_in_the_detail() -> None:
    """Such a name went into the detail as it was, and from there to `vigil dead-letters list`:
    printed, it set the terminal's title and cleared its screen."""
    name = "\x1b]0;owned\x07\x1b[2J\x1b[31mx"
    result = decode(Kind.news, news(**{name: 1}))
    assert isinstance(result, Rejection) and result.reason is R.invalid
    assert result.detail == "'\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mx': unknown field (not in the contract)"
    # On the way to a lone surrogate under it, too.
    nested = json.dumps({**NEWS, "headline": "h", name: {"x": "\ud800"}}).encode()
    assert decode(Kind.news, nested).detail.startswith("'\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mx'.x: contains a lone")
    assert decode(Kind.news, news(sentiment="bullish")).detail == "sentiment: unknown field (not in the contract)"


def test_content_hash_is_stable_64_bit() -> None:
    # Fixed value: the hash must not change between processes, hosts or releases (it is stored).
    assert content_hash(b"abc") == 15617099051652453721
    assert content_hash(b"abc") != content_hash(b"abd")
    assert 0 <= content_hash(b"") < 2**64


# --- fuzz ------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
_near_valid = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=20) | st.integers(),
        "source": st.text(max_size=10),
        "published_at": st.datetimes().map(lambda d: d.isoformat()) | st.text(max_size=30),
        "headline": st.text(max_size=50),
        "body": st.none() | st.text(max_size=50),
        "tickers": st.lists(st.text(max_size=8), max_size=3) | _json_values,
        "text": st.text(max_size=50),
        "channel": st.sampled_from(["chat", "email", "fax"]),
        "surprise": _json_values,
    },
).map(lambda d: json.dumps(d).encode())

_raw = st.one_of(
    st.none(),
    st.binary(max_size=300),
    _json_values.map(lambda v: json.dumps(v).encode()),
    _near_valid,
    _near_valid.flatmap(lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda i: b[:i])),  # truncated
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(list(Kind)), raw=_raw, max_chars=st.integers(16, 100))
def test_fuzz_decode_never_raises(kind: Kind, raw: bytes | None, max_chars: int) -> None:
    result = decode_record(kind, raw, max_bytes=1024, max_text_chars=max_chars)
    if isinstance(result, Rejection):
        assert isinstance(result.reason, DeadLetterReason) and result.detail
        to_dead_letter(result, topic="t", partition=0, offset=0, key=None, raw=raw or b"")
    else:
        assert isinstance(result, NewsItem if kind is Kind.news else SupportMessage)
        result.model_dump_json().encode("utf-8")  # whatever is accepted re-encodes cleanly
