"""`vigil up` and `vigil demo` as supervisors: their workers go when they go (killed, hung up on,
terminated), they stop them together, and they stop when the embedded broker or the demo's worker
dies instead of running on with nothing being scored.

Where the worker is not what is tested, it is a stand-in child (a few lines of Python, started
where `vigil worker` would be): the supervisors, the embedded broker and chdb are the real ones.
A supervisor that a signal killed, where it should have stopped in order, shows as a negative exit
code; one that never noticed a death runs until the bound of ``_finished`` fails the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import streams.worker
from streams.restarts import CANNOT_START
from streams.worker import WorkerProcess, stop_workers
from tests.e2e_stack import free_port, stack_env
from tests.fixtures.models import copy_registry
from tests.processes import children, wait_dead

REPO = Path(__file__).resolve().parents[1]

# Started where `vigil worker` would be: the supervisor's command line with the stand-in's code.
SUPERVISOR = (
    "import sys\nimport streams.worker\nstreams.worker.WORKER_COMMAND = ('-c', sys.argv.pop(1))\n"
    "from streams.cli import app\napp(prog_name='vigil')\n"
)
STANDIN = """
import os, signal, sys, time
def stop(signum, frame):
    print("stand-in got", signal.Signals(signum).name, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("stand-in up", os.getpid(), flush=True)
while True:
    time.sleep(1)
"""
# Stops only once every stand-in of the run has had its SIGTERM: stopped one after another, the
# first never does, and is killed at the deadline.
WAITS_FOR_SIBLINGS = """
import os, signal, sys, time
from pathlib import Path
marks, n = Path(sys.argv[1]), int(sys.argv[2])
def stop(signum, frame):
    (marks / str(os.getpid())).touch()
    while len(list(marks.iterdir())) < n:
        time.sleep(0.05)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("stand-in up", flush=True)
while True:
    time.sleep(1)
"""
DEAF = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("stand-in up", flush=True)
while True:
    time.sleep(1)
"""
CANNOT = f"""
import sys
print("CRITICAL streams.worker {CANNOT_START}the stand-in has no model", flush=True)
sys.exit(1)
"""
# Publishes one scored record, again and again, whatever the demo sends: the demo sees its worker
# ready, and then nothing more comes out of it.
SCORES_ONE = """
import json, os, signal, sys, time
from datetime import UTC, datetime
from kafka import KafkaProducer
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
producer = KafkaProducer(bootstrap_servers=os.environ["VIGIL_KAFKA_BROKERS"])
print("stand-in up", flush=True)
while True:
    record = {"kind": "news", "id": "stand-in", "ingest_time": datetime.now(UTC).isoformat()}
    producer.send(os.environ["VIGIL_TOPIC_SCORED"], json.dumps(record).encode())
    producer.flush()
    time.sleep(0.5)
"""


def _until(what: str, done, timeout_s: float, proc: subprocess.Popen | None = None, output: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while not done():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {what}:\n{output.read_text() if output else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s:.0f}s:\n{output.read_text() if output else ''}")
        time.sleep(0.1)


def _said(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def _finished(proc: subprocess.Popen, output: Path, timeout_s: float = 90) -> tuple[int, str]:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running {timeout_s:.0f}s on:\n{output.read_text()}")
    return proc.returncode, " ".join(output.read_text(errors="replace").split())  # rich wraps its lines


@pytest.fixture
def run(tmp_path: Path, tiny_registry: Path):
    """Start ``vigil ARGS`` on embedded parts and a data dir with the tiny models; its workers are
    ``standin`` when given. Every process left at the end is killed."""
    env = {**os.environ, **stack_env(tmp_path, "", partitions=2), "VIGIL_UI_PORT": str(free_port()),
           "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    copy_registry(tiny_registry, Path(env["VIGIL_DATA_DIR"]) / "models")
    started: list[subprocess.Popen] = []

    def start(*args: str, standin: str | None = None) -> tuple[subprocess.Popen, Path, Path]:
        output = tmp_path / "supervisor.out"
        command = [sys.executable, "-m", "streams.cli", *args] if standin is None else [
            sys.executable, "-c", SUPERVISOR, standin, *args]
        with output.open("wb") as out:
            proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc, output, Path(env["VIGIL_DATA_DIR"]) / "logs"

    yield start
    for proc in started:
        for pid in children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _worker_pid(supervisor: subprocess.Popen) -> int:
    (pid,) = [pid for pid, cmd in children(supervisor.pid).items() if "tansu" not in cmd]
    return pid


@pytest.mark.slow
def test_a_real_worker_stops_when_vigil_up_is_killed(run):
    """SIGKILL (the OOM killer, kill -9) leaves the supervisor no chance: the kernel sends the worker
    SIGTERM, and faust stops in order. It ran on as an orphan before, holding chdb and the UI port.
    The embedded broker goes at the same moment, and faust's consumer may wait 60 s for it."""
    up, output, logs = run("up")
    worker_log = logs / "worker-0.log"
    _until("worker ready", lambda: _said(worker_log, "Ready"), 240, up, output)
    worker = _worker_pid(up)
    up.kill()
    up.wait()
    assert wait_dead(worker, 120), f"the worker (pid {worker}) outlived its SIGKILLed supervisor"
    assert "Gathering service tasks" in worker_log.read_text(), "faust did not stop in order"


def test_vigil_up_stops_its_worker_when_its_terminal_closes(run):
    up, output, logs = run("up", "--no-label-ui", standin=STANDIN)
    _until("stand-in", lambda: _said(logs / "worker-0.log", "stand-in up"), 60, up, output)
    up.send_signal(signal.SIGHUP)
    code, _ = _finished(up, output)
    assert code == 0, "SIGHUP killed vigil up instead of stopping it"
    assert "stand-in got SIGTERM" in (logs / "worker-0.log").read_text()


def test_vigil_up_stops_when_the_embedded_broker_dies(run):
    up, output, logs = run("up", "--no-label-ui", standin=STANDIN)
    _until("stand-in", lambda: _said(logs / "worker-0.log", "stand-in up"), 60, up, output)
    (broker,) = [pid for pid, cmd in children(up.pid).items() if "tansu" in cmd]
    os.kill(broker, signal.SIGKILL)
    code, said = _finished(up, output)
    assert code == 1
    assert "exited with code -9" in said and "in memory" in said and "VIGIL_KAFKA_BROKERS" in said
    assert "stand-in got SIGTERM" in (logs / "worker-0.log").read_text()


def test_vigil_demo_stops_its_worker_on_sigterm(run):
    """What `timeout vigil demo` sends (SIGHUP goes the same way, as for `vigil up`)."""
    demo, output, logs = run("demo", "--messages", "20", standin=STANDIN)
    _until("stand-in", lambda: _said(logs / "worker.log", "stand-in up"), 60, demo, output)
    demo.send_signal(signal.SIGTERM)
    code, said = _finished(demo, output)
    assert code == 128 + signal.SIGTERM, said
    assert "stopped by SIGTERM" in said
    assert "stand-in got SIGTERM" in (logs / "worker.log").read_text()


def test_vigil_demo_stops_with_the_reason_its_worker_died(run):
    demo, output, _ = run("demo", "--messages", "20", "--timeout", "120", standin=CANNOT)
    code, said = _finished(demo, output)
    assert code == 1
    assert "the worker exited with code 1 (the stand-in has no model)" in said


def test_vigil_demo_fails_when_messages_did_not_come_out(run):
    demo, output, _ = run("demo", "--messages", "20", "--rate", "0", "--no-hostile", "--timeout", "5",
                          standin=SCORES_ONE)
    code, said = _finished(demo, output)
    assert code == 1, said
    assert "19 of 20 messages did not come out of the worker within --timeout 5s" in said


def _standins(tmp_path: Path, monkeypatch, code: str, n: int, *args: str) -> list[WorkerProcess]:
    monkeypatch.setattr(streams.worker, "WORKER_COMMAND", ("-c", code))
    workers = [WorkerProcess("127.0.0.1:9", tmp_path / f"worker-{i}.log", {}, args) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        _until("stand-in", lambda w=w: _said(w.log_path, "stand-in up"), 60)
    return workers


def test_workers_are_stopped_together(tmp_path, monkeypatch):
    """Each stand-in stops only once all have had SIGTERM: one at a time, the first never would."""
    marks = tmp_path / "marks"
    marks.mkdir()
    workers = _standins(tmp_path, monkeypatch, WAITS_FOR_SIBLINGS, 3, str(marks), "3")
    assert stop_workers(workers, timeout_s=60) == [0, 0, 0]


def test_workers_that_do_not_stop_are_killed_with_their_process_groups(tmp_path, monkeypatch):
    workers = _standins(tmp_path, monkeypatch, DEAF, 2)
    pids = [w.proc.pid for w in workers]
    assert stop_workers(workers, timeout_s=1) == [-signal.SIGKILL, -signal.SIGKILL]
    assert all(wait_dead(pid, 10) for pid in pids)
