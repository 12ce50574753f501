"""One `vigil worker` process on an embedded broker, as the end-to-end benchmarks run it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streams.broker import EmbeddedBroker
from streams.runtime import all_topics
from streams.settings import VigilSettings
from streams.topics import ensure_topics
from streams.worker import WorkerProcess


@contextmanager
def running_worker(broker: EmbeddedBroker, env: dict[str, str], log_path: Path, *,
                   stop_timeout_s: float) -> Iterator[tuple[VigilSettings, WorkerProcess]]:
    """The worker's settings (its ``VIGIL_*`` ``env``), with their topics created on ``broker``, and
    the started worker; it is stopped (SIGTERM, then SIGKILL after ``stop_timeout_s``) on exit."""
    settings = VigilSettings(**{k.removeprefix("VIGIL_").lower(): v for k, v in env.items()})
    ensure_topics(broker.bootstrap, all_topics(settings), settings.topic_partitions)
    worker = WorkerProcess(broker.bootstrap, log_path, env)
    worker.start()
    try:
        yield settings, worker
    finally:
        worker.stop(timeout_s=stop_timeout_s)
