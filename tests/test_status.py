"""`vigil status` through the real CLI on Tansu and chdb, with a copy of the tiny registry: a champion
a worker refused, what was stored in the window, the consumer group's lag and the label queue."""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata, TopicPartition
import pytest
from typer.testing import CliRunner

from feedback.contracts import ModelEvent, ModelEventKind
from feedback.store import FeedbackStore
from models.registry import ModelRegistry, RegistryError
from streams.cli import app
from streams.clickhouse import open_store
from streams.contracts import DeadLetter, DeadLetterReason
from streams.kafka_lag import partition_lag
from streams.settings import VigilSettings
from streams.status import StatusReport, model_status
from streams.topics import ensure_topics
from tests.fixtures.alerting import scored_news
from tests.fixtures.broker import produce_one_batch
from tests.fixtures.models import copy_registry

NOW = datetime.now(UTC)


def _event(kind: ModelEventKind, version: str, minutes_ago: float, detail: str = "") -> ModelEvent:
    return ModelEvent(kind=kind, task="sentiment", model_version=version, detail=detail,
                      created_at=NOW - timedelta(minutes=minutes_ago))


def test_only_refusals_since_the_version_last_became_champion_count() -> None:
    events = [
        _event(ModelEventKind.promoted, "v2", 50),
        _event(ModelEventKind.champion_refused, "v2", 45, "w1 refused v2 at start: NaN"),
        _event(ModelEventKind.rolled_back, "v1", 40),
        _event(ModelEventKind.promoted, "v2", 30),  # fixed and promoted again
        _event(ModelEventKind.champion_refused, "v2", 20, "w2 refused v2: NaN"),
        _event(ModelEventKind.champion_refused, "v1", 10, "an older version's refusal"),
    ]
    status = model_status("sentiment", "v2", 0.8, events, recent=3)
    assert status.refusals == ["w2 refused v2: NaN"]
    assert [e.model_version for e in status.recent_events] == ["v1", "v2", "v2"]  # newest first
    # A champion no event made one (promoted when it was trained): all its refusals count.
    only_v3 = [_event(ModelEventKind.champion_refused, "v3", 5, "x")]
    assert model_status("sentiment", "v3", None, only_v3).refusals == ["x"]


def test_a_refusal_ends_when_that_worker_swapped_to_the_champion() -> None:
    # The texts streams.hotswap writes: the worker's name first.
    events = [
        _event(ModelEventKind.promoted, "v2", 30),
        _event(ModelEventKind.champion_refused, "v2", 29, "host-w0 refused v2, still scoring with v1: CUDA out of memory"),
        _event(ModelEventKind.champion_refused, "v2", 28, "host-w1 refused v2 at start: NaN scores"),
        _event(ModelEventKind.swapped, "v2", 19, "host-w0 swapped v1 -> v2"),  # its retry 10 minutes on
        _event(ModelEventKind.swapped, "v1", 18, "host-w1 swapped v0 -> v1"),  # another version: no end
    ]
    assert model_status("sentiment", "v2", 0.8, events).refusals == ["host-w1 refused v2 at start: NaN scores"]
    # Refused again after its swap (a restart on a card that now fails): that refusal stands.
    again = [*events, _event(ModelEventKind.champion_refused, "v2", 5, "host-w0 refused v2 at start: NaN scores")]
    assert model_status("sentiment", "v2", 0.8, again).refusals == [
        "host-w1 refused v2 at start: NaN scores", "host-w0 refused v2 at start: NaN scores"]


def test_a_refusal_ends_when_that_worker_started_on_the_champion() -> None:
    # host-w0 refuses v2 at its hot swap (GPU memory a neighbour held); `vigil up` restarts it and it
    # starts on v2. streams.hotswap's texts, the worker's name first.
    events = [
        _event(ModelEventKind.promoted, "v2", 60),
        _event(ModelEventKind.started, "v2", 59, "host-w1 started on v2"),  # before the refusal: no end
        _event(ModelEventKind.champion_refused, "v2", 58, "host-w0 refused v2, still scoring with v1: CUDA out of memory"),
        _event(ModelEventKind.champion_refused, "v2", 57, "host-w1 refused v2 at start: NaN scores"),
        _event(ModelEventKind.started, "v1", 56, "host-w1 started on v1"),  # its fallback: no end either
        _event(ModelEventKind.started, "v2", 55, "host-w0 started on v2"),
    ]
    assert model_status("sentiment", "v2", 0.8, events).refusals == ["host-w1 refused v2 at start: NaN scores"]
    # host-w0 alone: nothing needs attention any more (`vigil status` exits 0)
    only_w0 = [events[0], events[2], events[5]]
    report = StatusReport(at=NOW, models=[model_status("sentiment", "v2", 0.8, only_w0)],
                          activity=None, label_queue=None, consumer_lag=None)
    assert report.problems() == []


def test_a_partition_counts_from_the_oldest_offset_kafka_still_holds() -> None:
    # On the arithmetic alone: the embedded broker (Tansu) drops the connection on DeleteRecords, so a
    # test cannot move a partition's start past 0 (the lag test below reads starts and ends from it).
    assert partition_lag(None, start=0, end=12) == 12  # never committed, nothing deleted
    assert partition_lag(None, start=900, end=1000) == 100  # never committed, retention deleted 900
    assert partition_lag(-1, start=900, end=1000) == 100  # what Kafka says for "no commit"
    assert partition_lag(950, start=900, end=1000) == 50
    assert partition_lag(400, start=900, end=1000) == 100  # the group resumes at the start, not at 400
    assert partition_lag(1000, start=900, end=1000) == 0


def _card_only_registry(data_dir: Path) -> None:
    """A champion v1 card per task: what `vigil status` reads of the registry, without weights."""
    for task in ("sentiment", "triage"):
        version = data_dir / "models" / task / "v1"
        version.mkdir(parents=True)
        (version / "card.json").write_text(json.dumps({
            "task": task, "version": "v1", "model_name": "m", "labels": ["a", "b"], "metrics": None,
            "data_fingerprint": "f", "parent_version": None, "base_encoder": "b", "max_length": 32,
            "training_config": {}, "created_at": "2025-01-01T00:00:00Z"}))
        (version.parent / "champion.json").write_text('{"champion": "v1", "history": []}')


def test_a_damaged_champion_pointer_is_a_problem_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    _card_only_registry(tmp_path)
    (tmp_path / "models" / "sentiment" / "champion.json").write_text('{"champion": "v1", "history": [')  # cut short
    monkeypatch.setenv("VIGIL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VIGIL_CLICKHOUSE_URL", "")
    monkeypatch.delenv("VIGIL_KAFKA_BROKERS", raising=False)
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 1 and not isinstance(result.exception, RegistryError), result.output
    sentiment, triage = json.loads(result.stdout)["models"]
    assert sentiment["champion"] is None and "champion.json is damaged" in sentiment["registry_error"]
    assert (triage["champion"], triage["registry_error"]) == ("v1", None)
    said = " ".join(CliRunner().invoke(app, ["status"]).output.split())
    assert "needs attention: sentiment: the champion pointer" in said
    assert "`vigil models promote sentiment VERSION`, which writes it anew" in said


def test_a_deleted_champion_is_a_registry_problem_naming_the_version_workers_fall_back_to(
        tmp_path: Path, monkeypatch) -> None:
    registry = ModelRegistry(tmp_path / "models")
    card = dict(model_name="m", labels=["a", "b"], metrics={"eval_set": "test", "n": 10, "accuracy": 0.8, "macro_f1": 0.7},
                data_fingerprint="f", base_encoder="b", max_length=32, training_config={})
    for task in ("sentiment", "triage"):
        registry.add(task, lambda path: None, card)  # v1, the champion
    registry.add("sentiment", lambda path: None, card)
    registry.promote("sentiment", "v2")
    # Deleted by hand, as a CardMismatch tells one to: sentiment falls back to v1; triage has nothing left.
    shutil.rmtree(registry.task_dir("sentiment") / "v2")
    shutil.rmtree(registry.task_dir("triage") / "v1")
    monkeypatch.setenv("VIGIL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VIGIL_CLICKHOUSE_URL", "")
    monkeypatch.delenv("VIGIL_KAFKA_BROKERS", raising=False)

    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 1, result.output
    sentiment, triage = json.loads(result.stdout)["models"]
    assert (sentiment["champion"], sentiment["accuracy"]) == ("v1", 0.8)
    assert "the champion pointer names v2, which is not in the registry" in sentiment["registry_error"]
    assert "`vigil models promote sentiment v1`" in sentiment["registry_error"]
    assert triage["champion"] is None and "no earlier champion is left" in triage["registry_error"]
    said = " ".join(CliRunner().invoke(app, ["status"]).output.split())
    assert "needs attention: sentiment: the champion pointer names v2" in said
    assert "workers fall back to v1" in said and "no model" not in said


@pytest.mark.parametrize(("ca_text", "said"), [(None, "is not a readable file."),
                                               ("not a certificate", "could not be loaded as PEM CA certificates")])
def test_a_wrong_kafka_security_setting_is_reported_and_the_rest_still_shows(tiny_registry: Path, tmp_path: Path,
                                                                             monkeypatch, ca_text, said) -> None:
    copy_registry(tiny_registry, tmp_path / "models")
    ca = tmp_path / "ca.pem"
    if ca_text is not None:
        ca.write_text(ca_text)
    for name, value in {"VIGIL_DATA_DIR": str(tmp_path), "VIGIL_CLICKHOUSE_URL": "",
                        "VIGIL_KAFKA_BROKERS": "127.0.0.1:9", "VIGIL_KAFKA_SECURITY_PROTOCOL": "SSL",
                        "VIGIL_KAFKA_SSL_CAFILE": str(ca)}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    report = json.loads(result.stdout)
    assert [m["champion"] for m in report["models"]] == ["v1", "v1"]
    assert report["consumer_lag"] is None
    assert report["kafka_error"].startswith(f"VIGIL_KAFKA_SSL_CAFILE={ca} {said}"), report["kafka_error"]


def test_messages_waiting_with_nothing_scored_need_attention(tmp_path: Path, kafka_broker, monkeypatch) -> None:
    _card_only_registry(tmp_path)
    for name, value in {"VIGIL_DATA_DIR": str(tmp_path), "VIGIL_KAFKA_BROKERS": kafka_broker.bootstrap,
                        "VIGIL_CLICKHOUSE_URL": "", "VIGIL_CONSUMER_GROUP": f"g-{tmp_path.name}",
                        "VIGIL_TOPIC_NEWS": f"lag{tmp_path.name}.news",
                        "VIGIL_TOPIC_SUPPORT": f"lag{tmp_path.name}.support"}.items():
        monkeypatch.setenv(name, value)
    settings = VigilSettings()
    ensure_topics(settings.kafka_brokers, settings.raw_topics.values(), 1)
    asyncio.run(produce_one_batch(settings.kafka_brokers, settings.topic_news, [b"m0", b"m1", b"m2"]))

    result = CliRunner().invoke(app, ["status"])  # no worker has run: nothing scored, 3 waiting
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "needs attention: 3 messages wait in Kafka and nothing was scored since" in said
    assert "no worker is consuming" in said

    with open_store(settings) as store:  # a worker scored one in the window: slow, not absent
        store.write_scored([scored_news("a", NOW, "positive")])
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0 and "needs attention" not in result.output, result.output


async def _produce_and_commit(settings: VigilSettings, sent_and_committed: dict[str, tuple[int, int]]) -> None:
    """topic -> (messages sent, offset the workers' group commits) on partition 0. Each topic's
    messages go in one record batch, as a producer that lingers sends them: the embedded broker
    answers ListOffsets with the last batch's first offset + 1, which read 12 messages as 1."""
    for topic, (sent, _) in sent_and_committed.items():
        await produce_one_batch(settings.kafka_brokers, topic, [f"m{i}".encode() for i in range(sent)])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_brokers, group_id=settings.consumer_group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        offsets = {TopicPartition(topic, 0): OffsetAndMetadata(done, "")
                   for topic, (_, done) in sent_and_committed.items()}
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def test_status_reports_a_refused_champion_activity_lag_and_queue(tiny_registry: Path, tmp_path: Path,
                                                                  kafka_broker, monkeypatch) -> None:
    copy_registry(tiny_registry, tmp_path / "models")
    for name, value in {"VIGIL_DATA_DIR": str(tmp_path), "VIGIL_KAFKA_BROKERS": kafka_broker.bootstrap,
                        "VIGIL_CLICKHOUSE_URL": "", "VIGIL_CONSUMER_GROUP": f"g-{tmp_path.name}",
                        "VIGIL_TOPIC_NEWS": f"st{tmp_path.name}.news",
                        "VIGIL_TOPIC_SUPPORT": f"st{tmp_path.name}.support",
                        "VIGIL_TOPIC_SCORED": f"st{tmp_path.name}.scored"}.items():
        monkeypatch.setenv(name, value)
    settings = VigilSettings()
    ensure_topics(settings.kafka_brokers, [*settings.raw_topics.values(), settings.topic_scored], 1)
    # the scored topic stands for the workers' internal hops: known only from the group's commits
    asyncio.run(_produce_and_commit(settings, {settings.topic_news: (12, 5), settings.topic_scored: (3, 1)}))
    with open_store(settings) as store:
        store.write_scored([scored_news("a", NOW, "positive"), scored_news("b", NOW, "negative")])
        store.write_dead_letters([DeadLetter(source_topic=settings.topic_news, partition=0, offset=3, raw=b"{",
                                             reason=DeadLetterReason.bad_json, detail="not JSON")])
        FeedbackStore(store).write_model_events([
            _event(ModelEventKind.champion_refused, "v1", 1, "worker-7 refused v1 at start: NaN scores"),
        ])

    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 1, result.output  # the refusal needs attention
    report = json.loads(result.stdout)
    sentiment, triage = report["models"]
    assert (sentiment["champion"], sentiment["refusals"]) == ("v1", ["worker-7 refused v1 at start: NaN scores"])
    assert (triage["champion"], triage["refusals"]) == ("v1", [])
    assert report["consumer_lag"] == {settings.topic_news: 7, settings.topic_support: 0, settings.topic_scored: 2}
    assert [(c["kind"], c["model_version"], c["rows"]) for c in report["activity"]["scored"]] == [("news", "test-1", 2)]
    assert report["activity"]["dead_letters_by_reason"] == {"bad_json": 1}
    assert report["label_queue"]["sentiment"]["open"] == 0
    assert (report["clickhouse_error"], report["kafka_error"]) == (None, None)

    shown = CliRunner().invoke(app, ["status"])
    said = " ".join(shown.output.split())
    assert "needs attention: sentiment: the champion v1 was refused by a worker" in said
    assert f"{settings.topic_news} 7" in said and "bad_json 1" in said


def test_status_still_shows_the_models_when_kafka_cannot_be_reached(tiny_registry: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:
    copy_registry(tiny_registry, tmp_path / "models")
    monkeypatch.setenv("VIGIL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VIGIL_KAFKA_BROKERS", "127.0.0.1:9")
    monkeypatch.setenv("VIGIL_CLICKHOUSE_URL", "")
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert [m["champion"] for m in report["models"]] == ["v1", "v1"]
    assert report["consumer_lag"] is None and "could not reach Kafka at 127.0.0.1:9" in report["kafka_error"]
