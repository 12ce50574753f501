"""The worker's pure core with the tiny real model: decode, duplicate ids, scoring, PII masking;
the agents' wrapper around it for a model that fails on everything; and the scoring agent's
prepare stage, which runs while the batch before it is not stored yet."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import faust
import pytest

from models.scoring import Prediction, Scorer
from streams.agents import BatchProcessor
from streams.clickhouse import open_store
from streams.contracts import DeadLetterReason, Kind
from streams.pipeline import Limits, RawRecord, ScorerBroken, decode_batch, resolve_duplicates, score_batch
from streams.metrics import Metrics
from streams.samples import duplicate_id_pair, hostile_samples, news_json, support_json
from streams.settings import VigilSettings
from streams.watchdog import Watchdogs

LIMITS = Limits(max_message_bytes=64 * 1024, max_text_chars=8000)
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)  # the worker's clock


def _records(topic: str, values: Sequence[bytes]) -> list[RawRecord]:
    return [RawRecord(topic, 0, i, None, v, 1_763_888_400_000 + i) for i, v in enumerate(values)]


def test_decode_batch_splits_valid_from_every_hostile_sample():
    hostile = hostile_samples(Kind.news, "p", LIMITS.max_message_bytes)
    valid = [news_json(id=f"ok-{i}", headline=f"Shares of $ACME rise {i}%") for i in range(3)]
    decoded, dead = decode_batch(Kind.news, _records("news", valid + [s.raw for s in hostile]), LIMITS, NOW)
    assert [d.item.id for d in decoded] == ["ok-0", "ok-1", "ok-2"]
    assert [d.reason for d in dead] == [s.reason for s in hostile]
    assert [d.offset for d in dead] == list(range(3, 3 + len(hostile)))
    assert all(d.raw == s.raw for d, s in zip(dead, hostile, strict=True))


def test_an_event_time_further_ahead_of_the_workers_clock_than_allowed_is_refused():
    """Windows and SLA clocks follow the largest event time: one message dated a day ahead would
    close its partition's windows and leave every later message there too late to count."""
    ahead = [news_json(id="at-limit", published_at="2026-12-05T12:10:00Z"),
             news_json(id="past-limit", published_at="2026-12-05T12:10:01Z"),
             news_json(id="tomorrow", published_at="2026-12-06T12:00:00+01:00")]
    decoded, dead = decode_batch(Kind.news, _records("news", ahead), LIMITS, NOW)
    assert [d.item.id for d in decoded] == ["at-limit"]
    assert [(d.offset, d.reason) for d in dead] == [(1, DeadLetterReason.invalid), (2, DeadLetterReason.invalid)]
    assert "published_at: 2026-12-06T12:00:00+01:00 is 82,800 s ahead" in dead[1].detail
    assert "VIGIL_MAX_EVENT_AHEAD_S" in dead[1].detail


def test_a_record_timestamp_clickhouse_cannot_store_becomes_the_workers_clock():
    """The producer sets the record timestamp (-1 when it sets none); the message is valid, so it
    is scored with the time the worker read it. Year 10000 used to raise in score_batch."""
    stamps = [1_764_936_000_000, -1, 253_402_300_800_000]  # 2025-12-05, unset, 10000-01-01
    records = [RawRecord("news", 0, i, None, news_json(id=f"ts-{i}"), ts) for i, ts in enumerate(stamps)]
    decoded, dead = decode_batch(Kind.news, records, LIMITS, NOW)
    assert dead == []
    assert [d.ingest_time for d in decoded] == [datetime(2025, 12, 5, 12, 0, tzinfo=UTC), NOW, NOW]


def test_a_reused_id_with_new_content_is_refused_but_a_redelivery_is_kept_once():
    first, second = duplicate_id_pair(Kind.news, "p")
    decoded, _ = decode_batch(Kind.news, _records("news", [first, first, second]), LIMITS, NOW)
    kept, dead = resolve_duplicates(decoded, stored_hashes={})
    assert len(kept) == 1 and kept[0].record.offset == 0
    assert [(d.reason, d.offset) for d in dead] == [(DeadLetterReason.duplicate_id, 2)]
    assert "different content" in dead[0].detail

    # Across batches: the store already holds the first version.
    decoded, _ = decode_batch(Kind.news, _records("news", [first, second]), LIMITS, NOW)
    kept, dead = resolve_duplicates(decoded, stored_hashes={"p-dup": decoded[0].content_hash})
    assert [k.record.offset for k in kept] == [0]
    assert [d.offset for d in dead] == [1]


def test_a_batch_prepared_before_the_last_one_is_stored_refuses_an_id_that_batch_used_with_other_content(
    tiny_scorers, chdb_settings: VigilSettings
):
    first, second = duplicate_id_pair(Kind.news, "p")
    app = faust.App("vigil-prepare", broker="kafka://127.0.0.1:9", web_enabled=False)  # prepare publishes nothing
    with open_store(chdb_settings) as store, ThreadPoolExecutor(1) as model, ThreadPoolExecutor(1) as io:
        processor = BatchProcessor(
            kind=Kind.news, scorer=lambda: tiny_scorers["sentiment"], store=store, limits=LIMITS,
            scored_topic=app.topic("scored"), dlq_topic=app.topic("dlq"),
            watchdogs=Watchdogs(60.0, started_at=0.0), metrics=Metrics(), model_executor=model,
            io_executor=io, retry_max_s=1.0,
        )

        async def two_batches() -> tuple[list[str], list[bytes], list[str]]:
            one = await processor.prepare(_records("news", [first, news_json(id="p-other")]))
            two = await processor.prepare(_records("news", [second, first]))  # `one` is still unstored
            return [m.id for m in one.result.scored], [d.raw for d in two.result.dead], [
                m.text for m in two.result.scored
            ]

        scored_one, dead_two, scored_two = asyncio.run(two_batches())
    assert scored_one == ["p-dup", "p-other"]
    assert dead_two == [second]  # refused for the first batch's content, not its own batch's order
    assert scored_two == ["first message with this id"]  # a redelivery is scored again, as before


def test_the_models_time_on_a_batch_is_measured_apart_from_the_rest_of_it(tiny_scorers, chdb_settings) -> None:
    """vigil_batch_seconds runs from decode to stored, with any wait for the batch before it: no
    figure said how long the model itself took."""
    app = faust.App("vigil-scoring-time", broker="kafka://127.0.0.1:9", web_enabled=False)  # prepare publishes nothing
    metrics = Metrics()
    with open_store(chdb_settings) as store, ThreadPoolExecutor(1) as model, ThreadPoolExecutor(1) as io:
        processor = BatchProcessor(
            kind=Kind.news, scorer=lambda: tiny_scorers["sentiment"], store=store, limits=LIMITS,
            scored_topic=app.topic("scored"), dlq_topic=app.topic("dlq"),
            watchdogs=Watchdogs(60.0, started_at=0.0), metrics=metrics, model_executor=model,
            io_executor=io, retry_max_s=1.0,
        )

        async def two_batches() -> None:
            await processor.prepare(_records("news", [news_json(id="t-1"), news_json(id="t-2")]))
            await processor.prepare(_records("news", [b"not json"]))  # nothing to score

        asyncio.run(two_batches())
    assert metrics.registry.get_sample_value("vigil_scoring_seconds_count", {"kind": "news"}) == 1
    assert metrics.registry.get_sample_value("vigil_scoring_seconds_sum", {"kind": "news"}) > 0


def test_score_batch_labels_extracts_tickers_and_masks_support_pii(tiny_scorers):
    news = [news_json(id="n1", headline="$TSLA and $brk.b slump after weak guidance")]
    decoded, _ = decode_batch(Kind.news, _records("news", news), LIMITS, NOW)
    [scored] = score_batch(Kind.news, decoded, tiny_scorers["sentiment"]).scored
    assert scored.label in {"negative", "neutral", "positive"}
    assert abs(sum(scored.probs.values()) - 1) < 1e-4
    assert scored.tickers == ["TSLA", "BRK.B"]
    assert scored.model_version == tiny_scorers["sentiment"].model_version

    card = "4111 1111 1111 1111"
    support = [support_json(id="s1", text=f"my card {card} was stolen, call me on +44 20 7946 0958")]
    decoded, _ = decode_batch(Kind.support, _records("support", support), LIMITS, NOW)
    [scored] = score_batch(Kind.support, decoded, tiny_scorers["triage"]).scored
    assert card not in scored.text and "7946" not in scored.text
    assert "[CARD]" in scored.text and "[PHONE]" in scored.text
    assert scored.label in tiny_scorers["triage"].labels


def test_a_text_full_of_cashtags_is_judged_under_its_first_tickers_only(tiny_scorers):
    """Each ticker re-publishes the message to the ticker-events topic: 8,000 characters of
    cashtags would make one message into 1,300 events, each carrying its text."""
    flood = " ".join(f"$T{i}" for i in range(2000))[: LIMITS.max_text_chars]
    news = [news_json(id="n1", headline=flood, tickers=["acme"]), news_json(id="n2", headline="$TSLA slumps")]
    decoded, _ = decode_batch(Kind.news, _records("news", news), LIMITS, NOW)
    result = score_batch(Kind.news, decoded, tiny_scorers["sentiment"], max_tickers=5)
    assert [m.tickers for m in result.scored] == [["ACME", "T0", "T1", "T2", "T3"], ["TSLA"]]
    assert result.tickers_dropped == 1 + 1301 - 5  # the declared one first, then the 1,301 cashtags
    metrics = Metrics()
    metrics.observe_batch(Kind.news, 2, result, 0.1, stored_at=NOW)
    assert metrics.registry.get_sample_value("vigil_tickers_dropped_total") == 1297


class _FailsOnMarker:
    """The real scorer, except that it raises for one text: a model fault on one poison input."""

    def __init__(self, real: Scorer, marker: str) -> None:
        self._real, self._marker = real, marker
        self.task, self.model_name = real.task, real.model_name
        self.model_version, self.labels = real.model_version, real.labels

    def score(self, texts: Sequence[str]) -> list[Prediction]:
        if any(self._marker in t for t in texts):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self._real.score(texts)


def test_one_poison_text_is_dead_lettered_and_the_rest_of_the_batch_is_scored(tiny_scorers):
    values = [news_json(id=f"n{i}", headline=f"headline {i}") for i in range(4)]
    values[2] = news_json(id="n2", headline="POISON headline")
    decoded, _ = decode_batch(Kind.news, _records("news", values), LIMITS, NOW)
    result = score_batch(Kind.news, decoded, _FailsOnMarker(tiny_scorers["sentiment"], "POISON"))
    assert [m.id for m in result.scored] == ["n0", "n1", "n3"]
    assert [(d.reason, d.offset) for d in result.dead] == [(DeadLetterReason.scoring_failed, 2)]
    assert "illegal memory access" in result.dead[0].detail


def test_a_model_that_fails_on_everything_raises_instead_of_dead_lettering_valid_messages(tiny_scorers):
    values = [news_json(id=f"n{i}", headline=f"headline {i}") for i in range(3)]
    decoded, _ = decode_batch(Kind.news, _records("news", values), LIMITS, NOW)
    with pytest.raises(ScorerBroken, match="cannot score a plain control text.*illegal memory access.*falls back to the last champion"):
        score_batch(Kind.news, decoded, _FailsOnMarker(tiny_scorers["sentiment"], ""))  # "" is in every text


def test_a_shadow_challenger_scores_the_same_batch_and_its_failure_costs_nothing(tiny_scorers):
    values = [news_json(id=f"n{i}", headline=f"$ACME headline {i}") for i in range(4)]
    decoded, _ = decode_batch(Kind.news, _records("news", values), LIMITS, NOW)
    champion = tiny_scorers["sentiment"]
    plain = score_batch(Kind.news, decoded, champion).scored
    shadowed = score_batch(Kind.news, decoded, champion, shadow=champion).scored
    # The same model as its own shadow agrees everywhere, and the champion's fields are untouched.
    assert [m.shadow.label for m in shadowed] == [m.label for m in plain]
    assert [m.model_copy(update={"shadow": None, "scored_time": p.scored_time}) for m, p in zip(shadowed, plain)] == plain

    broken = score_batch(Kind.news, decoded, champion, shadow=_FailsOnMarker(champion, "headline"))
    assert [m.id for m in broken.scored] == ["n0", "n1", "n2", "n3"] and broken.dead == []
    assert all(m.shadow is None for m in broken.scored)
