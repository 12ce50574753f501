"""The commands end an expected failure with one `error:` line and exit code 1, never a traceback:
ClickHouse unreachable or the embedded one held by another process, the labelling UI's port taken,
`vigil produce` given a file it cannot read or a broker it cannot reach, an unknown task name."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from streams.cli import app
from streams.clickhouse import open_store
from streams.settings import VigilSettings
from tests.fixtures.models import copy_registry

UNREACHABLE_CLICKHOUSE = "clickhouse://u:pw@127.0.0.1:1/vigil"


def _vigil(args: list[str], **env: str) -> Result:
    return CliRunner().invoke(app, args, env={"VIGIL_DEVICE": "cpu", **env})


def _said(result: Result) -> str:
    return " ".join(result.output.split())  # rich folds long lines


def _ended_with_a_message(result: Result, *expected: str) -> None:
    # An uncaught exception reaches CliRunner as itself; a handled one as the SystemExit of typer.Exit(1).
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.exception, result.output)
    assert "Traceback" not in result.output
    assert all(e in _said(result) for e in expected), result.output


@pytest.mark.parametrize("args", [["dead-letters", "list"], ["triage", "status"], ["db", "migrate"], ["db", "prune"]])
def test_an_unreachable_clickhouse_is_one_line(args: list[str], tmp_path: Path) -> None:
    result = _vigil(args, VIGIL_DATA_DIR=str(tmp_path), VIGIL_CLICKHOUSE_URL=UNREACHABLE_CLICKHOUSE)
    _ended_with_a_message(result, "error: cannot reach ClickHouse at", "Check the server is up")


@pytest.mark.parametrize("args", [["dead-letters", "list"], ["triage", "status"]])
def test_an_embedded_clickhouse_held_elsewhere_is_one_line(args: list[str], chdb_settings: VigilSettings) -> None:
    # chdb admits one open directory per process: this store stands for the one `vigil up` holds.
    with open_store(chdb_settings):
        result = _vigil(args, VIGIL_DATA_DIR=str(chdb_settings.data_dir), VIGIL_CLICKHOUSE_URL="")
    _ended_with_a_message(result, "error:", "embedded ClickHouse")


def test_backtest_on_an_unreachable_clickhouse_is_one_line(tiny_registry: Path, tmp_path: Path) -> None:
    copy_registry(tiny_registry, tmp_path / "models")
    result = _vigil(["models", "backtest", "v1"], VIGIL_DATA_DIR=str(tmp_path),
                    VIGIL_CLICKHOUSE_URL=UNREACHABLE_CLICKHOUSE, VIGIL_MAX_LENGTH="32")
    _ended_with_a_message(result, "error: cannot reach ClickHouse at")


def test_label_ui_on_a_taken_port_is_one_line(kafka_broker, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _vigil(["label-ui", "--host", "127.0.0.1", "--port", str(port)], VIGIL_DATA_DIR=str(tmp_path),
                        VIGIL_CLICKHOUSE_URL="", VIGIL_KAFKA_BROKERS=kafka_broker.bootstrap)
    _ended_with_a_message(result, f"error: the labelling UI cannot listen on 127.0.0.1:{port}", "--port")


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("messages.txt", '{"id": "a"}\n', "expected a .jsonl, .ndjson or .csv file, got '.txt'"),
    ("messages.csv", "id,text\n1,hello\n", "column(s) ['text'] are not NewsItem fields"),
])
def test_produce_names_what_is_wrong_with_the_file(name: str, content: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = _vigil(["produce", str(path), "--kind", "news"], VIGIL_KAFKA_BROKERS="127.0.0.1:9")
    _ended_with_a_message(result, "error:", expected)


def test_produce_refuses_a_negative_rate_and_says_when_kafka_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    path.write_text('{"id": "a"}\n')
    negative = _vigil(["produce", str(path), "--kind", "news", "--rate", "-1"], VIGIL_KAFKA_BROKERS="127.0.0.1:9")
    assert negative.exit_code == 2 and "Invalid value for '--rate'" in _said(negative)
    unreachable = _vigil(["produce", str(path), "--kind", "news"], VIGIL_KAFKA_BROKERS="127.0.0.1:9")
    _ended_with_a_message(unreachable, "error: could not start a producer on 127.0.0.1:9", "VIGIL_KAFKA_BROKERS")


@pytest.mark.parametrize("args", [["models", "show", "bogus"], ["models", "promote", "bogus", "v1"],
                                  ["models", "rollback", "bogus"], ["bench", "scoring", "--task", "bogus"],
                                  ["train", "--task", "bogus"], ["retrain", "--task", "bogus"],
                                  ["eval", "--task", "bogus", "--data", __file__]])
def test_an_unknown_task_is_named_with_the_known_ones(args: list[str], tmp_path: Path) -> None:
    result = _vigil(args, VIGIL_DATA_DIR=str(tmp_path))
    _ended_with_a_message(result, "error: unknown task 'bogus'; choose from sentiment, triage")
    assert "vigil train" not in result.output  # the advice for a known task without a model
    assert not (tmp_path / "models" / "bogus").exists()
