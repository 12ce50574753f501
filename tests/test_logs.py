"""Structured logs: the JSON line format, and secrets that never reach the output.

The end-to-end check runs the real `vigil worker` in a subprocess with a Kafka SASL password and a
password in VIGIL_CLICKHOUSE_URL: it logs its configuration at start-up, loads the tiny real
models, then fails to reach ClickHouse (nothing listens on the port) and reports that. Neither
secret may appear anywhere in what it printed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from streams.cli import app
from streams.logs import (
    JsonFormatter,
    ScrubbingFormatter,
    make_handler,
    scrub,
    secrets_of,
    settings_summary,
)
from streams.settings import REPO_ROOT, VigilSettings
from tests.fixtures.models import copy_registry

KAFKA_SECRET = "kafka-s3cret-Xq9v"
CH_SECRET = "ch-p@ss:w0rd/Zk7"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _secret_env(tmp_path: Path) -> dict[str, str]:
    return {
        "VIGIL_DATA_DIR": str(tmp_path / "vigil"),
        "VIGIL_KAFKA_BROKERS": f"127.0.0.1:{_closed_port()}",
        "VIGIL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "VIGIL_KAFKA_SASL_MECHANISM": "PLAIN",
        "VIGIL_KAFKA_SASL_USERNAME": "vigil",
        "VIGIL_KAFKA_SASL_PASSWORD": KAFKA_SECRET,
        "VIGIL_CLICKHOUSE_URL": f"clickhouse://vigil:{quote(CH_SECRET, safe='')}@127.0.0.1:{_closed_port()}",
        "VIGIL_DEVICE": "cpu",
    }


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("vigil.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_carries_time_level_logger_message_worker_and_extras():
    line = JsonFormatter("node-a-w0").format(_record("batch of %d", 64, partition=3, topic="news"))
    doc = json.loads(line)
    assert "\n" not in line
    assert doc["level"] == "WARNING" and doc["logger"] == "vigil.test" and doc["message"] == "batch of 64"
    assert doc["worker"] == "node-a-w0"
    assert doc["partition"] == 3 and doc["topic"] == "news"
    assert doc["time"].endswith("+00:00")


def test_exception_stays_inside_one_json_line():
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = JsonFormatter("w").format(record)
    assert len(line.splitlines()) == 1
    assert "ValueError: first" in json.loads(line)["exc"]


def test_scrub_masks_configured_secrets_and_any_url_password(tmp_path: Path, monkeypatch):
    for k, v in _secret_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    settings = VigilSettings()
    secrets = secrets_of(settings)
    assert KAFKA_SECRET in secrets and CH_SECRET in secrets
    text = f"url={settings.clickhouse_url} pw={KAFKA_SECRET} raw={CH_SECRET} other=http://u:hunter2@h:1/x"
    out = scrub(text, secrets)
    for secret in (KAFKA_SECRET, CH_SECRET, quote(CH_SECRET, safe=""), "hunter2"):
        assert secret not in out
    assert "clickhouse://vigil:***@127.0.0.1" in out


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_handler_masks_secrets_in_message_args_and_extras(fmt: str, tmp_path: Path, monkeypatch):
    for k, v in {**_secret_env(tmp_path), "VIGIL_LOG_FORMAT": fmt}.items():
        monkeypatch.setenv(k, v)
    settings = VigilSettings()
    stream = io.StringIO()
    handler = make_handler(settings, worker_id="w1", stream=stream)
    assert isinstance(handler.formatter, ScrubbingFormatter)
    handler.emit(_record("connecting to %s", settings.clickhouse_url, config=settings.model_dump(mode="json"),
                         password=KAFKA_SECRET))
    out = stream.getvalue()
    assert KAFKA_SECRET not in out and CH_SECRET not in out and quote(CH_SECRET, safe="") not in out
    assert "***" in out and "w1" in out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_worker_start_up_and_clickhouse_failure_never_print_secrets(fmt: str, tmp_path: Path, tiny_registry: Path):
    # max_length 32: the tiny registry's ONNX export and parity figures are cached at that length, so
    # the worker gets to ClickHouse (and fails) without a parity check of its own first
    env = {**os.environ, **_secret_env(tmp_path), "VIGIL_LOG_FORMAT": fmt, "VIGIL_WORKER_ID": "secret-test-w0",
           "VIGIL_MAX_LENGTH": "32"}
    copy_registry(tiny_registry, tmp_path / "vigil" / "models")
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300, check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, "the worker should have failed: nothing listens on the ClickHouse port"
    assert "cannot reach ClickHouse at clickhouse://vigil:***@127.0.0.1" in out, out[-3000:]
    for secret in (KAFKA_SECRET, CH_SECRET, quote(CH_SECRET, safe="")):
        assert secret not in out, f"{secret!r} was printed"
    if fmt == "json":
        lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]  # all JSON
        start, last = lines[0], lines[-1]
        assert last["level"] == "CRITICAL" and "cannot reach ClickHouse" in last["message"]
        assert start["message"] == "worker starting" and start["worker"] == "secret-test-w0"
        assert start["config"]["kafka_sasl_password"] == "**********"
        assert start["config"]["clickhouse_url"].startswith("clickhouse://vigil:***@")
    else:
        assert "[secret-test-w0] worker starting" in done.stderr


# clickhouse-driver reads a raw "@" in the password as urlsplit does: up to the last "@" is the user part.
RAW_AT_URL = "clickhouse://vigil:ab@cd-Secret9@ch-host:9000/vigil"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_clickhouse_password_holding_a_raw_at_sign_is_masked_whole(fmt: str, tmp_path: Path):
    from clickhouse_driver.util.helpers import parse_url

    assert parse_url(RAW_AT_URL) == ("ch-host", {"port": 9000, "database": "vigil", "user": "vigil",
                                                 "password": "ab@cd-Secret9"})
    settings = VigilSettings(data_dir=tmp_path, clickhouse_url=RAW_AT_URL, log_format=fmt)
    stream = io.StringIO()
    # the worker's start-up line, and a connection error quoting the URL
    make_handler(settings, worker_id="w", stream=stream).emit(
        _record("worker starting: %s", RAW_AT_URL, config=settings_summary(settings)))
    out = stream.getvalue()
    assert "Secret9" not in out and "ab@cd" not in out, out
    assert "clickhouse://vigil:***@ch-host:9000/vigil" in out


def test_a_url_password_is_masked_up_to_the_host_and_no_further():
    # Not configured, so only the URL pattern can mask these.
    said = "a http://u:p@ss@db:1/x@y b ftp://v:pw@h?to=me@x c"
    assert scrub(said, []) == "a http://u:***@db:1/x@y b ftp://v:***@h?to=me@x c"



# Hostile words a log line may quote (a message's text in a dead-letter warning): a long word, URL
# heads without a host after them, and a head followed by nothing but "@"s.
_HOSTILE_WORDS = {
    "letters": lambda n: "a" * n,
    "heads": lambda n: ("x://y:" * n)[:n],
    "at signs": lambda n: "a://b:" + "@" * n,
}


@pytest.mark.parametrize("shape", sorted(_HOSTILE_WORDS))
def test_scrubbing_a_hostile_word_takes_time_linear_in_its_length(shape: str) -> None:
    """Every log line is scrubbed. The URL pattern once tried a scheme at every letter of a word and
    read the rest of the word from each (20,000 letters took 0.4 s: a line per bad message would
    hold the worker). Compared between sizes of one shape, so what is checked is growth: 4 times
    the length takes about 4 times as long (under 10 times, for noise), not 16 times."""
    small, large = (_HOSTILE_WORDS[shape](n) for n in (5_000, 20_000))
    best = {small: float("inf"), large: float("inf")}
    for _ in range(5):
        for text in (small, large):
            started = time.perf_counter()
            scrub(text, [])
            best[text] = min(best[text], time.perf_counter() - started)
    growth = best[large] / best[small]
    print(f"hostile {shape!r}: 4x longer took {growth:.2f}x the time")
    assert growth < 10, growth

SPECIAL_SECRET = 'Qx7"kR\\vZ9'  # a quote and a backslash: JSON and repr escape both


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_password_holding_a_quote_or_a_backslash_is_masked_in_every_spelling(fmt: str, tmp_path: Path):
    settings = VigilSettings(
        data_dir=tmp_path, kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u", kafka_sasl_password=SPECIAL_SECRET,
        clickhouse_url=f"clickhouse://vigil:{quote(SPECIAL_SECRET, safe='')}@ch-host:9000/vigil", log_format=fmt)
    stream = io.StringIO()
    handler = make_handler(settings, worker_id="w", stream=stream)
    handler.emit(_record("sasl login failed with %s", SPECIAL_SECRET))
    handler.emit(_record("client arguments %r", {"sasl_plain_password": SPECIAL_SECRET}))
    handler.emit(_record("connecting", password=SPECIAL_SECRET))  # an extra: only the JSON line has it
    out = stream.getvalue()
    assert "kR" not in out and "vZ9" not in out, out
    assert out.count("***") == (3 if fmt == "json" else 2)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_clickhouse_password_given_apart_is_a_secret(fmt: str, tmp_path: Path):
    password = "Tr0ub4dor#3/x%41?"
    settings = VigilSettings(data_dir=tmp_path, clickhouse_url="clickhouse://vigil@ch-host:9000",
                             clickhouse_password=password, log_format=fmt)
    stream = io.StringIO()
    handler = make_handler(settings, worker_id="w", stream=stream)
    handler.emit(_record("worker starting", config=settings_summary(settings)))
    # as a driver's error may quote it: in the URL it connects to, or as it is
    handler.emit(_record("cannot connect to %s with %r", settings.clickhouse_server_url, password))
    out = stream.getvalue()
    assert "Tr0ub4dor" not in out, out
    if fmt == "json":
        assert json.loads(out.splitlines()[0])["config"]["clickhouse_password"] == "**********"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_alert_webhook_url_is_a_secret(fmt: str, tmp_path: Path):
    url = "https://hooks.slack.com/services/T0VIGIL00/B0VIGIL00/s3cretWebhookTokenXYZ"
    settings = VigilSettings(data_dir=tmp_path, alert_webhook_url=url, log_format=fmt)
    assert settings.alert_webhook_url.get_secret_value() == url
    stream = io.StringIO()
    handler = make_handler(settings, worker_id="w", stream=stream)
    handler.emit(_record("worker starting", config=settings_summary(settings)))
    handler.emit(_record("cannot post to %s", url))  # an HTTP client's error that quotes it
    out = stream.getvalue()
    assert "s3cretWebhookTokenXYZ" not in out, out
    if fmt == "json":
        assert json.loads(out.splitlines()[0])["config"]["alert_webhook_url"] == "**********"
    with pytest.raises(ValidationError, match="VIGIL_ALERT_WEBHOOK_URL|must start with http") as refused:
        VigilSettings(data_dir=tmp_path, alert_webhook_url="ftp://hooks.example/s3cretWebhookTokenXYZ")
    assert "s3cretWebhookTokenXYZ" not in str(refused.value)


@pytest.mark.parametrize("delimiter", ["#", "?", "/"])
def test_a_clickhouse_url_whose_password_ends_its_host_part_early_is_refused_redacted(
        delimiter: str, tmp_path: Path):
    url = f"clickhouse://vigil:Pr1vate{delimiter}Rest@ch-host:9000/vigil"
    with pytest.raises(ValidationError) as refused:
        VigilSettings(data_dir=tmp_path, clickhouse_url=url)
    said = str(refused.value)
    assert "Pr1vate" not in said and "Rest" not in said, said
    assert "clickhouse://***@ch-host:9000/vigil" in said and "percent-encode" in said

    # `vigil status` says so in one line, instead of a traceback quoting the password's first part.
    result = CliRunner().invoke(app, ["status"], env={"VIGIL_DATA_DIR": str(tmp_path), "VIGIL_CLICKHOUSE_URL": url})
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.exception, result.output)
    said = " ".join(result.output.split())
    assert "Pr1vate" not in said and "Traceback" not in said, said
    assert "error: VIGIL_CLICKHOUSE_URL: clickhouse://***@ch-host:9000/vigil does not read as" in said
