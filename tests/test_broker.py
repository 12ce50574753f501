"""The embedded broker and topic setup, against the real Tansu binary."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from streams.broker import BrokerStartError, EmbeddedBroker
from streams.topics import ensure_topics
from tests.processes import alive, wait_dead

# Also registered by tests/conftest.py; naming it here lets this module run on its own.
pytest_plugins = ["tests.fixtures.broker"]


def test_broker_answers_kafka_and_stops(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path) as broker:
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1" and int(port) > 0
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            assert admin.list_topics() == []
        finally:
            admin.close()
        pid = broker.pid
        assert pid is not None and broker.log_path is not None and broker.log_path.exists()
    assert not broker.running
    assert wait_dead(pid)
    with pytest.raises(BrokerStartError, match="not running"):
        _ = broker.bootstrap
    broker.stop()  # repeated stop is harmless


def test_taken_port_is_a_clear_error(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    port = int(kafka_broker.bootstrap.rsplit(":", 1)[1])
    with pytest.raises(BrokerStartError, match=f"{port} is already in use"):
        EmbeddedBroker(tmp_path, port=port).start()


def test_broker_that_cannot_start_says_why(tmp_path: Path) -> None:
    fake = tmp_path / "not-tansu"
    fake.write_text("#!/bin/sh\necho 'tansu: storage exploded' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerStartError, match=r"(?s)exited with code 3.*storage exploded"):
        EmbeddedBroker(tmp_path, binary=fake, start_timeout_s=10).start()


def test_no_orphan_when_the_parent_is_killed(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from streams.broker import EmbeddedBroker\n"
        "b = EmbeddedBroker(Path(sys.argv[1])).start()\n"
        "print(b.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert alive(broker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_dead(broker_pid), f"Tansu pid {broker_pid} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_ensure_topics_is_idempotent(kafka_broker: EmbeddedBroker) -> None:
    names = ["idem-a", "idem-b"]
    assert ensure_topics(kafka_broker.bootstrap, names, 3) == {"idem-a": 3, "idem-b": 3}
    # Again, plus one new topic: existing ones are kept as they are.
    counts = ensure_topics(kafka_broker.bootstrap, [*names, "idem-c"], 5)
    assert counts == {"idem-a": 3, "idem-b": 3, "idem-c": 5}
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        assert {"idem-a", "idem-b", "idem-c"} <= set(admin.list_topics())
    finally:
        admin.close()
