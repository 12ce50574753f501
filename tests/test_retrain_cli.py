"""`vigil retrain` and the model events of `vigil models promote|rollback`, through the real CLI, on
chdb and a copy of the tiny registry (the retraining itself is covered by test_feedback_retrain)."""


from typer.testing import CliRunner

from feedback.contracts import ModelEventKind
from feedback.store import open_feedback_store
from models.registry import ModelRegistry
from streams.cli import app
from streams.clickhouse import open_store
from streams.settings import VigilSettings
from tests.fixtures.models import copy_registry, copy_version


def _run(args, data_dir):
    result = CliRunner().invoke(app, args, env={"VIGIL_DATA_DIR": str(data_dir), "VIGIL_DEVICE": "cpu",
                                                "VIGIL_CLICKHOUSE_URL": "", "VIGIL_KAFKA_BROKERS": ""})
    return result.exit_code, " ".join(result.output.split())  # as said, whatever rich's line breaks


def test_retrain_with_nothing_to_do_exits_0_and_promote_rollback_are_recorded(tiny_registry, tmp_path):
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    settings = VigilSettings(data_dir=data_dir, clickhouse_url=None, kafka_brokers=None)
    open_store(settings).close()  # migrates

    code, out = _run(["retrain", "--task", "sentiment"], data_dir)
    assert code == 0, out
    assert "skipped" in out and "no new corrections" in out

    registry = ModelRegistry(settings.registry_dir)
    v2 = copy_version(registry, "sentiment", registry.resolve("sentiment", "champion")).version
    code, out = _run(["models", "promote", "sentiment", v2], data_dir)
    assert code == 0 and f"champion: {v2}" in out, out
    code, out = _run(["models", "rollback", "sentiment"], data_dir)
    assert code == 0 and "rolled back to v1" in out, out
    assert registry.champion("sentiment") == "v1"

    with open_feedback_store(settings) as store:
        events = store.fetch_model_events("sentiment")
    assert [(e.kind, e.model_version) for e in events] == [(ModelEventKind.promoted, v2),
                                                            (ModelEventKind.rolled_back, "v1")]


def test_retrain_without_feedback_tables_says_to_migrate(tiny_registry, tmp_path):
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    code, out = _run(["retrain", "--task", "sentiment"], data_dir)
    assert code == 1 and "vigil db migrate" in out


def test_promote_still_works_when_the_event_cannot_be_recorded(tiny_registry, tmp_path):
    """No migrated ClickHouse: the promotion happens, the missing event is only a warning."""
    data_dir = tmp_path / "vigil"
    copy_registry(tiny_registry, data_dir / "models")
    registry = ModelRegistry(data_dir / "models")
    v2 = copy_version(registry, "triage", registry.resolve("triage", "champion")).version
    code, out = _run(["models", "promote", "triage", v2], data_dir)
    assert code == 0 and "not recorded" in out and "vigil db migrate" in out
    assert registry.champion("triage") == v2
