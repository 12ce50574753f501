"""`vigil demo`: the whole pipeline on embedded parts, replaying the bundled real data.

broker (Tansu) -> worker process (faust: validate, score, ClickHouse) -> summary read back from
ClickHouse. The live view follows the scored and dead-letter topics, so what it shows has really
made it through the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.registry import ModelRegistry
from streams.clickhouse import open_store
from streams.contracts import Kind
from streams.follow import Tracker, following
from streams.kafka_config import client_kwargs
from streams.replay import OutgoingMessage, bundled_news, bundled_support, interleave, replay
from streams.runtime import Kafka, kafka_bootstrap
from streams.samples import duplicate_id_pair, hostile_samples
from streams.settings import VigilSettings
from streams.summary_view import render_summary
from streams.supervision import on_stop_signals
from streams.worker import TASK_BY_KIND, WorkerProcess

log = logging.getLogger(__name__)


class DemoError(RuntimeError):
    """The demo could not run to the end."""


class DemoStopped(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, the terminal closing) ended the demo; its worker was stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """Outside the event loop (training, starting, the summary) a stop signal raises DemoStopped at
    once. Inside it, it is noted and the waits end the run in order (producer closed, follower
    stopped): raised there, it would come out of whatever await the loop was in."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._noting = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum
        if not self._noting:
            raise DemoStopped(signum)

    @contextmanager
    def noted(self) -> Iterator[None]:
        self._noting = True
        try:
            yield
        finally:
            self._noting = False


@dataclass(frozen=True)
class DemoOptions:
    messages: int = 3000
    rate: float = 150.0
    hostile: bool = True
    timeout_s: float = 600.0
    train_profile: str = "quick"


@dataclass(frozen=True)
class DemoReport:
    produced: int
    scored: int
    dead: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def msgs_per_s(self) -> float:
        return (self.scored + self.dead) / self.seconds if self.seconds else 0.0

    @property
    def missing(self) -> int:
        return max(0, self.produced - self.scored - self.dead)


def demo_messages(settings: VigilSettings, options: DemoOptions) -> Iterator[OutgoingMessage]:
    """Bundled news and support messages interleaved, with the hostile samples spread through."""
    news = (OutgoingMessage.of(Kind.news, m) for m in bundled_news(settings.bundled_data_dir))
    support = (OutgoingMessage.of(Kind.support, m) for m in bundled_support(settings.bundled_data_dir))
    valid = itertools.islice(interleave(news, support, ratio=(2, 1)), options.messages)
    if not options.hostile:
        yield from valid
        return
    run = datetime.now(UTC).strftime("%H%M%S")
    bad: list[OutgoingMessage] = []
    for kind in Kind:
        bad += [OutgoingMessage.raw(kind, f"bad-{kind}-{i}", s.raw) for i, s in enumerate(hostile_samples(kind, f"demo{run}", settings.max_message_bytes))]
        first, second = duplicate_id_pair(kind, f"demo{run}-{kind}")
        bad += [OutgoingMessage.raw(kind, f"demo{run}-{kind}-dup", first), OutgoingMessage.raw(kind, f"demo{run}-{kind}-dup", second)]
    every = max(1, options.messages // (len(bad) + 1))
    for i, message in enumerate(valid):
        yield message
        if bad and i % every == every - 1:
            yield bad.pop()
    yield from bad


def ensure_models(settings: VigilSettings, profile: str, console: Console) -> None:
    """Train a small model per task if the registry has none (the first run of the demo)."""
    from models.train import train_task  # heavy import, only when training

    registry = ModelRegistry(settings.registry_dir)
    for task in TASK_BY_KIND.values():
        if registry.has_any(task):
            continue
        console.print(f"[bold]No {task} model yet[/]: training one ({profile} profile) on the bundled data…")
        entry = train_task(settings, task, profile=profile, console=console)
        console.print(f"  trained {entry.card.version}: {entry.card.metrics}")


def _raise_if_dead(worker: WorkerProcess) -> None:
    if worker.alive():
        return
    said = worker.last_words()
    code = worker.proc.returncode if worker.proc else None
    raise DemoError(f"the worker exited with code {code}{f' ({said})' if said else ''} before its messages came out; "
                    f"see its log {worker.log_path}")


async def _wait(done: Callable[[], bool], deadline: float, stop: _StopSignals, check: Callable[[], None],
                every: Callable[[], None] = lambda: None) -> None:
    """Until ``done()``, the deadline or a stop signal; ``check()`` raises when the worker or broker died."""
    while not done() and time.monotonic() < deadline and stop.received is None:
        check()
        every()
        await asyncio.sleep(0.25)


async def _drive(settings: VigilSettings, kafka: Kafka, worker: WorkerProcess, options: DemoOptions,
                 console: Console, stop: _StopSignals) -> DemoReport | None:
    """The run's report; None when a stop signal ended it."""
    tracker = Tracker()
    bootstrap = kafka.bootstrap

    def check() -> None:
        kafka.check_alive()
        _raise_if_dead(worker)
        tracker.raise_if_stopped()

    async with following(settings, bootstrap, tracker):
        messages = list(demo_messages(settings, options))
        # The first message goes alone, so that loading the models and joining the consumer group are
        # not counted as pipeline latency.
        with console.status("waiting for the worker to load its models and join the consumer group…"):
            await replay(bootstrap, settings.raw_topics, messages[:1], kafka_kwargs=client_kwargs(settings))
            await _wait(lambda: tracker.done >= 1, time.monotonic() + options.timeout_s, stop, check)
        if stop.received:
            return None
        if not tracker.done:
            raise DemoError(f"the worker processed nothing in {options.timeout_s:.0f}s; see its log {worker.log_path}")
        tracker.latencies_ms.clear()
        progress = Progress(
            TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), console=console,
        )
        sent_task = progress.add_task("produced", total=len(messages), info="")
        done_task = progress.add_task("processed", total=len(messages), info="")
        started = time.perf_counter()

        def on_progress(sent: int) -> None:
            rate = sent / max(time.perf_counter() - started, 1e-9)
            progress.update(sent_task, completed=sent, info=f"{rate:7.0f} msg/s")

        with Live(progress, console=console, refresh_per_second=8):
            producing = asyncio.create_task(
                replay(bootstrap, settings.raw_topics, messages[1:], rate_per_s=options.rate,
                       on_progress=lambda n: on_progress(n + 1), kafka_kwargs=client_kwargs(settings))
            )

            def show_progress() -> None:
                elapsed = time.perf_counter() - started
                progress.update(
                    done_task, completed=tracker.done,
                    info=f"{tracker.done / elapsed:7.0f} msg/s  p50 {tracker.quantile(0.5):6.0f} ms  "
                    f"p99 {tracker.quantile(0.99):6.0f} ms  refused {tracker.dead}",
                )
                if producing.done() and producing.exception():
                    raise producing.exception()  # type: ignore[misc]

            try:
                await _wait(lambda: tracker.done >= len(messages), time.monotonic() + options.timeout_s, stop, check,
                            show_progress)
            finally:
                ended = stop.received is not None or not producing.done()
                if ended:
                    producing.cancel()
                await asyncio.gather(producing, return_exceptions=ended)
        seconds = time.perf_counter() - started
    if stop.received:
        return None
    return DemoReport(len(messages), len(tracker.scored), tracker.dead, seconds,
                      tracker.quantile(0.5), tracker.quantile(0.99))


def run_demo(settings: VigilSettings, options: DemoOptions, console: Console) -> DemoReport:
    """Raises DemoStopped on a stop signal, BrokerDied when the embedded broker died, DemoError when
    the worker did or messages were missing at the timeout (then after the summary)."""
    stop = _StopSignals()
    on_stop_signals(stop)
    ensure_models(settings, options.train_profile, console)
    with kafka_bootstrap(settings) as kafka:
        worker = WorkerProcess(kafka.bootstrap, settings.data_dir / "logs" / "worker.log", {})
        worker.start()
        console.print(f"worker started (pid {worker.proc.pid}, log {worker.log_path})")
        try:
            with stop.noted():
                report = asyncio.run(_drive(settings, kafka, worker, options, console, stop))
        finally:
            code = worker.stop()
            console.print(f"worker stopped (exit {code})")
    if report is None:
        raise DemoStopped(stop.received or signal.SIGINT)
    table = Table(title="Demo run", show_header=False)
    table.add_row("messages produced", str(report.produced))
    table.add_row("scored (seen on the scored topic)", str(report.scored))
    table.add_row("refused (dead-letter topic)", str(report.dead))
    table.add_row("throughput", f"{report.msgs_per_s:,.0f} msg/s over {report.seconds:.1f} s")
    table.add_row("latency to scored topic p50 / p99", f"{report.p50_ms:,.0f} / {report.p99_ms:,.0f} ms")
    console.print(table)
    with open_store(settings) as store:
        render_summary(store.summary(min_ticker_volume=3), console)
    if report.missing:
        raise DemoError(f"{report.missing} of {report.produced} messages did not come out of the worker within "
                        f"--timeout {options.timeout_s:g}s; see its log {worker.log_path}")
    return report
