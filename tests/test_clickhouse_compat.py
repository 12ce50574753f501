"""Pure parts of the ClickHouse layer: level choice, SQL rendering, row adaptation, parameter text."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from streams.clickhouse.backends import chdb_param_text, redact_url, to_driver_sql
from streams.clickhouse.compat import (
    CompatLevel,
    dead_letter_from_row,
    dead_letter_row,
    DEAD_LETTER_COLUMNS,
    e2e_ms,
    level_for_version,
    parse_version,
    render_sql,
    scored_columns,
    scored_from_row,
    scored_row,
    template_values,
)
from streams.clickhouse.errors import UnsupportedServer
from streams.clickhouse.migrations import load_migrations
from streams.contracts import DeadLetter, DeadLetterReason, Kind, ScoredMessage

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _msg() -> ScoredMessage:
    return ScoredMessage(
        id="n-1", kind=Kind.news, text="Shares fall", model_name="sentiment", model_version="v3",
        label="negative", probs={"positive": 0.1, "negative": 0.7, "neutral": 0.2}, confidence=0.7,
        margin=0.5, entropy=0.8, tickers=["ACME"], source="wire", content_hash=2**64 - 1,
        event_time=T0, ingest_time=T0 + timedelta(seconds=1), scored_time=T0 + timedelta(seconds=2),
        src_partition=3, src_offset=99,
    )


@pytest.mark.parametrize(
    ("version", "level"),
    [("18.16.1", CompatLevel.legacy_18), ("21.8.15.7", CompatLevel.legacy_18),
     ("22.3.1", CompatLevel.modern), ("26.9.2.1", CompatLevel.modern)],
)
def test_level_follows_server_version(version: str, level: CompatLevel) -> None:
    assert level_for_version(parse_version(version)) is level


def test_servers_older_than_18_16_are_refused_with_advice() -> None:
    with pytest.raises(UnsupportedServer, match="upgrade"):
        level_for_version((1, 1, 54394))


def test_legacy_sql_has_none_of_the_types_18_16_lacks() -> None:
    for level in CompatLevel:
        sql = "\n".join(
            s for m in load_migrations()
            for s in render_sql(m.template, level, template_values(level, database="vdb", ttl_days=30))
        )
        assert "vdb.scored" in sql and "vdb.dead_letters" in sql and "${" not in sql
        modern_only = ["DateTime64", "LowCardinality", "Map(", "TTL", "INTERVAL 30 DAY"]
        if level is CompatLevel.modern:
            assert all(t in sql for t in modern_only)
            assert "prob_labels" not in sql
        else:
            assert not [t for t in modern_only if t in sql]
            assert "prob_labels Array(String)" in sql and "prob_values Array(Float32)" in sql


def test_scored_row_adapts_to_the_level() -> None:
    written = T0 + timedelta(seconds=3, microseconds=250_000)
    modern = dict(zip(scored_columns(CompatLevel.modern), scored_row(_msg(), written, CompatLevel.modern)))
    legacy = dict(zip(scored_columns(CompatLevel.legacy_18), scored_row(_msg(), written, CompatLevel.legacy_18)))
    assert modern["probs"] == {"positive": 0.1, "negative": 0.7, "neutral": 0.2}
    assert legacy["prob_labels"] == ["negative", "neutral", "positive"]
    assert legacy["prob_values"] == [0.7, 0.2, 0.1]
    assert modern["event_time"] == T0.replace(microsecond=123000)
    assert legacy["event_time"] == T0.replace(microsecond=0)
    assert modern["e2e_ms"] == legacy["e2e_ms"] == 2250  # from ingest_time, at full precision
    assert modern["truncated"] == 0 and modern["content_hash"] == 2**64 - 1


@pytest.mark.parametrize("level", list(CompatLevel))
def test_scored_row_reads_back_into_the_contract(level: CompatLevel) -> None:
    row = dict(zip(scored_columns(level), scored_row(_msg(), T0, level)))
    back = scored_from_row(row, level)
    assert back.probs == _msg().probs and back.id == "n-1" and back.kind is Kind.news


def test_e2e_is_clamped_to_uint32() -> None:
    assert e2e_ms(T0, T0 - timedelta(seconds=5)) == 0
    assert e2e_ms(T0, T0 + timedelta(days=100)) == 2**32 - 1
    other_zone = T0.astimezone(timezone(timedelta(hours=-5)))
    assert e2e_ms(other_zone, T0 + timedelta(milliseconds=7)) == 7


def test_a_dead_letter_row_keeps_the_size_and_hash_of_the_bytes_not_the_bytes() -> None:
    raw = b"\xff\xfe{bad\x80 card 4111 1111 1111 1111"
    letter = DeadLetter(
        source_topic="t", partition=1, offset=2, key=b"\x00\xff", raw=raw,
        reason=DeadLetterReason.bad_encoding, detail="not UTF-8", received_at=T0,
    )
    row = dict(zip(DEAD_LETTER_COLUMNS, dead_letter_row(letter, CompatLevel.modern)))
    assert row["raw_preview"] == "\ufffd\ufffd{bad\ufffd card [CARD]" and row["raw_bytes"] == len(raw)
    assert row["raw_base64"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    back = dead_letter_from_row(row)
    assert (back.raw_sha256, back.raw_bytes, back.key) == (letter.raw_sha256, len(raw), letter.key)
    # A row written before held the bytes themselves: they still name the letter.
    assert dead_letter_from_row({**row, "raw_base64": base64.b64encode(raw).decode()}) == back


def test_pii_starting_inside_the_preview_is_masked_whole() -> None:
    """A card number the preview's 500 characters cut through was no card to the masking."""
    for lead in range(480, 500):
        raw = b"x" * lead + b" 4111 1111 1111 1111" + b" and more" * 10
        letter = DeadLetter(source_topic="t", partition=0, offset=0, raw=raw, reason=DeadLetterReason.invalid,
                            detail="d", received_at=T0)
        preview = dict(zip(DEAD_LETTER_COLUMNS, dead_letter_row(letter, CompatLevel.modern)))["raw_preview"]
        assert "4111" not in preview and len(preview) == 500


def test_chdb_parameter_text_escapes_what_the_parser_would_interpret() -> None:
    assert chdb_param_text("a\\b\tc\nd") == "a\\\\b\\tc\\nd"
    assert chdb_param_text(["it's", "x"]) == "['it\\'s','x']"
    assert chdb_param_text(7) == "7" and chdb_param_text(True) == "1"


def test_driver_sql_translation() -> None:
    sql, params = to_driver_sql(
        "SELECT 1 WHERE a = {a:String} AND b IN {b:Array(String)} AND has({b:Array(String)}, c) "
        "AND d LIKE '%x'",
        {"a": "x", "b": ["p", "q"]},
    )
    assert sql == "SELECT 1 WHERE a = %(a)s AND b IN %(b__in)s AND has(%(b)s, c) AND d LIKE '%%x'"
    assert params == {"a": "x", "b": ["p", "q"], "b__in": ("p", "q")}


def test_password_is_redacted() -> None:
    assert redact_url("clickhouses://u:s3cret@h:9440/vigil?verify=false") == (
        "clickhouses://u:***@h:9440/vigil?verify=false"
    )
