"""Running workers: one in this process (`vigil worker`), or child processes of a supervisor:
`vigil up` restarts them when they die, `vigil demo` stops with the reason its worker gave. Either
way a child goes when its supervisor does (SIGTERM from the kernel), and they are stopped together."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import faust

from models.engine import load_scorer, usable_cores
from models.registry import CHAMPION, ModelRegistry
from models.scoring import Scorer
from models.self_test import FALLBACK_DEPTH, ModelBroken, first_working, load_tested
from streams.app import create_app
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.hotswap import ScorerSlot, follows_champion, register_hot_swap
from streams.logs import (
    configure_logging,
    default_worker_id,
    faust_logging_config,
    make_handler,
    settings_summary,
)
from streams.metrics import Metrics
from streams.restarts import RestartBackoff, last_words
from streams.settings import VigilSettings
from streams.supervision import die_with_parent

log = logging.getLogger(__name__)

TASK_BY_KIND = {Kind.news: "sentiment", Kind.support: "triage"}
# What a WorkerProcess runs, after the interpreter and before its own options.
WORKER_COMMAND: tuple[str, ...] = ("-m", "streams.cli", "worker")


class WorkerConfigError(RuntimeError):
    pass


def run_worker(settings: VigilSettings, metrics_port: int | None = None) -> None:
    """Run one worker in this process until SIGTERM/SIGINT (blocking)."""
    if not settings.kafka_brokers:
        raise WorkerConfigError(
            "a worker needs VIGIL_KAFKA_BROKERS; use `vigil up` to start one with the embedded broker"
        )
    level = logging.getLogger().getEffectiveLevel()
    handler = make_handler(settings, stream=sys.stderr)
    configure_logging(handler, level)
    log.info("worker starting", extra={"config": settings_summary(settings)})
    versions = {Kind.news: settings.sentiment_model, Kind.support: settings.triage_model}
    slots: dict[Kind, ScorerSlot] = {}
    refused: dict[tuple[str, str], str] = {}
    for kind in Kind:
        task = TASK_BY_KIND[kind]
        scorer, refused_here = load_working_scorer(settings, task, versions[kind])
        slots[kind] = ScorerSlot(task, scorer, follows_champion=follows_champion(versions[kind]))
        refused |= {(task, version): why for version, why in refused_here.items()}
    shadow_versions = {Kind.news: settings.shadow_sentiment_model, Kind.support: settings.shadow_triage_model}
    shadows = {
        kind: load_scorer(settings, TASK_BY_KIND[kind], version)
        for kind, version in shadow_versions.items() if version
    }
    store = open_store(settings)
    metrics = Metrics()
    metrics.model.info({s.task: s.get().model_version for s in slots.values()})
    if metrics_port:
        metrics.serve(metrics_port)
    app = create_app(
        settings,
        settings.kafka_brokers,
        {kind: slot.get for kind, slot in slots.items()},
        store,
        metrics,
        shadows,
    )
    register_hot_swap(app, settings, slots, store, metrics, load_scorer, settings.worker_id or default_worker_id(),
                      refused)
    if settings.ui_in_worker:
        from feedback.web import attach_to_worker

        attach_to_worker(app, settings, store)
    if settings.retrain_in_worker and settings.retrain_check_interval_s > 0:
        from feedback.retrain_runner import attach_to_worker as attach_retrain_job

        attach_retrain_job(app, settings, store)
    try:
        # mode's Worker replaces the root handlers; hand it ours so its lines are formatted alike.
        app.conf.loghandlers = [handler]
        # What exists by now (the imported libraries, the models: ~450k objects) lives as long as
        # the worker. Frozen, it is left out of the collector's full passes, each of which took
        # ~0.3 s with every thread stopped, every few seconds under load ("Startup objects frozen
        # out of the garbage collector" in benchmarks/RESULTS.md). A scorer that a hot swap drops
        # is still freed, by reference counting: it must hold no reference cycles (a test checks).
        gc.freeze()
        faust.Worker(
            app, loglevel=level, redirect_stdouts=False, logging_config=faust_logging_config(level),
        ).execute_from_commandline()
    finally:
        store.close()


def load_working_scorer(settings: VigilSettings, task: str, configured: str) -> tuple[Scorer, dict[str, str]]:
    """The scorer a worker starts with, and the versions it refused (version -> reason).

    A pinned version must pass its self test, or the worker does not start. A worker that follows
    the champion falls back to the newest earlier champion that passes, so a broken promotion costs
    a fallback instead of a restart loop."""
    load = partial(load_scorer, settings, task)
    if not follows_champion(configured):
        try:
            return load_tested(load, configured), {}
        except ModelBroken as exc:
            raise ModelBroken(f"{exc}. It is pinned by VIGIL_{task.upper()}_MODEL: pin a version that works, "
                              "or unset it to follow the champion") from exc
    candidates = ModelRegistry(settings.registry_dir).champions(task)[: 1 + FALLBACK_DEPTH] or [CHAMPION]
    scorer, refused = first_working(task, candidates, load)
    if refused:
        log.critical("%s: scoring with %s, not the champion %s, which was refused: %s. Make a version that "
                     "works the champion, e.g. `vigil models promote %s %s`",
                     task, scorer.model_version, candidates[0], refused[candidates[0]], task, scorer.model_version)
    return scorer, refused


def gpu_share_env(settings: VigilSettings, workers: int) -> dict[str, str]:
    """Each of ``workers`` processes on one node gets an equal cap of GPU memory (0.9 of it in all,
    leaving room for the CUDA contexts), unless VIGIL_GPU_MEMORY_FRACTION sets one."""
    if settings.gpu_memory_fraction is not None or workers == 1:
        return {}
    return {"VIGIL_GPU_MEMORY_FRACTION": f"{0.9 / workers:.4f}"}


def cpu_share_env(settings: VigilSettings, workers: int) -> dict[str, str]:
    """Each of ``workers`` processes on one node scores on an equal share of its cores (at least
    one), unless VIGIL_CPU_THREADS sets one."""
    if settings.cpu_threads is not None or workers == 1:
        return {}
    return {"VIGIL_CPU_THREADS": str(max(1, usable_cores() // workers))}


@dataclass
class WorkerProcess:
    """A worker child process with its log file; `restart_if_dead` starts it again once it has died."""

    bootstrap: str
    log_path: Path
    extra_env: dict[str, str]
    args: tuple[str, ...] = ()  # extra `vigil worker` options, e.g. ("--metrics-port", "9108")
    proc: subprocess.Popen[bytes] | None = None
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    started_at: float = 0.0
    restart_at: float | None = None
    log_offset: int = 0  # where this run's lines start in the log, which runs append to

    def start(self) -> None:
        self.started_at = time.monotonic()
        env = {**os.environ, **self.extra_env, "VIGIL_KAFKA_BROKERS": self.bootstrap}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.log_offset = log_file.tell()
            self.proc = subprocess.Popen(
                [sys.executable, *WORKER_COMMAND, *self.args],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal goes to us; we stop it in order
                # A supervisor killed without that stop still takes its worker along: an orphan kept
                # the embedded ClickHouse's lock and the UI's port, and the next start restart-looped.
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only prctl and getppid, no locks taken
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Its exit code once stopped as `stop_workers` stops several; None if it never started."""
        return stop_workers([self], timeout_s)[0]

    def last_words(self) -> str | None:
        """Why this run said it could not start or stopped itself, from the end of its part of the log."""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(max(self.log_offset, log_file.seek(0, os.SEEK_END) - 65536))
                return last_words(log_file.read().decode("utf-8", "replace"))
        except OSError:
            return None

    def restart_if_dead(self) -> bool:
        """Start a dead worker again once its back-off has passed; True when it was started."""
        if self.alive():
            return False
        now = time.monotonic()
        if self.restart_at is None:
            ran_for = now - self.started_at
            delay = self.backoff.delay(ran_for)
            self.restart_at = now + delay
            said = self.last_words()
            log.error("worker exited with %s after %.0fs%s; restarting it in %.0fs (log: %s)",
                      self.proc.returncode if self.proc else None, ran_for, f" ({said})" if said else "",
                      delay, self.log_path)
        if now < self.restart_at:
            return False
        self.restart_at = None
        self.start()
        return True


def stop_workers(workers: Sequence[WorkerProcess], timeout_s: float = 30.0) -> list[int | None]:
    """SIGTERM to every worker (faust shuts down cleanly and commits acked offsets), then one deadline
    for them all, then SIGKILL to the process groups still there; their exit codes (None: never started).

    Stopped one after another, N workers took N stops, and each stop moved its partitions onto
    workers about to stop: a service manager's stop timeout then killed the supervisor half way."""
    running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not stop in %.0fs; killing it", proc.pid, timeout_s)
            # its whole process group (it leads one): a background retrain process goes with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return [w.proc.returncode if w.proc is not None else None for w in workers]
