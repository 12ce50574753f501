"""One `vigil worker` process on an embedded broker, as the end-to-end benchmarks run it."""

from __future__ import annotations

import os
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, all its threads, so far (Linux ``/proc``)."""
    # The fields after the command name, which is in brackets and may hold spaces: utime, stime are 14, 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
