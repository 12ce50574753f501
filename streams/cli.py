"""The `vigil` command line. Settings are built once here and handed to every command."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from streams.cli_errors import exit_on, fail
from streams.contracts import ALL_SCHEMAS, Kind
from streams.settings import VigilSettings

# Before transformers is imported by any command: weights come from disk, never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = typer.Typer(help="Vigil: streaming NLP monitoring.", no_args_is_help=True, pretty_exceptions_show_locals=False)
db_app = typer.Typer(help="ClickHouse schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()


def _settings(ctx: typer.Context) -> VigilSettings:
    return ctx.obj


def settings_problems(e: ValidationError) -> str:
    """Each refused setting as ``VIGIL_NAME: why``, without the value (it may be a credential)."""
    return "; ".join(
        (f"VIGIL_{'_'.join(map(str, err['loc'])).upper()}: " if err["loc"] else "")
        + err["msg"].removeprefix("Value error, ")
        for err in e.errors(include_input=False, include_url=False)
    )


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    from streams.logs import configure_logging, make_handler

    try:
        settings = VigilSettings()
    except ValidationError as e:
        raise fail(console, settings_problems(e)) from None
    rich = RichHandler(console=Console(stderr=True), show_path=False)
    configure_logging(make_handler(settings, text_handler=rich), logging.DEBUG if verbose else logging.INFO)
    ctx.obj = settings


@app.command()
def demo(
    ctx: typer.Context,
    messages: Annotated[int, typer.Option(help="Valid messages to replay from the bundled data.")] = 3000,
    rate: Annotated[float, typer.Option(help="Messages per second to produce (0: as fast as possible).")] = 150.0,
    hostile: Annotated[bool, typer.Option(help="Mix in malformed and hostile messages.")] = True,
    timeout: Annotated[float, typer.Option(help="Give up waiting for the worker after this many seconds.")] = 600.0,
) -> None:
    """Run everything on embedded parts, replay bundled data, print what ClickHouse holds."""
    from streams.broker import BrokerDied
    from streams.demo import DemoError, DemoOptions, DemoStopped, run_demo

    try:
        with exit_on(console, DemoError, BrokerDied):
            run_demo(_settings(ctx), DemoOptions(messages=messages, rate=rate, hostile=hostile, timeout_s=timeout),
                     console)
    except DemoStopped as e:
        console.print(f"[yellow]stopped by {signal.Signals(e.signum).name}[/]: worker and broker stopped; "
                      "what was written stays in ClickHouse")
        raise typer.Exit(128 + e.signum) from None


@app.command()
def up(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes in the consumer group (several may share one GPU).")] = 1,
    metrics_port: Annotated[int | None, typer.Option(help="Worker i serves Prometheus metrics on this port + i.")] = None,
    label_ui: Annotated[bool, typer.Option(help="Worker 0 serves the labelling UI on VIGIL_UI_HOST:VIGIL_UI_PORT.")] = True,
) -> None:
    """Start the embedded parts (unless configured) and supervised workers; run until Ctrl-C.

    With VIGIL_RETRAIN_CHECK_INTERVAL_S > 0, worker 0 also runs the feedback loop's retraining in
    the background: every that many seconds, per task, a `vigil retrain` round (trigger policy,
    fine-tune in a child process, gate, promote); the workers then hot swap. Rounds are logged and
    appended to <data_dir>/logs/retrain-rounds.jsonl. 0 (the default): retrain from cron instead."""
    from streams.broker import BrokerDied
    from streams.runtime import kafka_bootstrap
    from streams.supervision import on_stop_signals
    from streams.worker import WorkerProcess, cpu_share_env, gpu_share_env, stop_workers

    settings = _settings(ctx)
    if workers > 1 and not settings.clickhouse_url:
        raise typer.BadParameter(
            "several workers cannot share the embedded ClickHouse (one process per chdb directory); "
            "set VIGIL_CLICKHOUSE_URL to a clickhouse-server", param_hint="--workers",
        )
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    on_stop_signals(_stop)
    broker_died = False
    with kafka_bootstrap(settings) as kafka:
        procs = [
            WorkerProcess(
                kafka.bootstrap, settings.data_dir / "logs" / f"worker-{i}.log",
                {"VIGIL_WORKER_ID": f"{settings.worker_id or socket.gethostname()}-w{i}",
                 # worker 0 hosts the labelling UI and the retrain job: they share that worker's
                 # ClickHouse (chdb is one process)
                 **({"VIGIL_UI_IN_WORKER": "1"} if label_ui and i == 0 else {}),
                 **({"VIGIL_RETRAIN_IN_WORKER": "1"} if settings.retrain_check_interval_s > 0 and i == 0 else {}),
                 **gpu_share_env(settings, workers), **cpu_share_env(settings, workers)},
                ("--metrics-port", str(metrics_port + i)) if metrics_port else (),
            )
            for i in range(workers)
        ]
        for p in procs:
            p.start()
        console.print(f"[green]Vigil up[/]: Kafka {kafka.bootstrap}, {workers} worker(s); Ctrl-C stops.")
        if label_ui:
            console.print(
                f"labelling UI: http://{settings.ui_host}:{settings.ui_port}/ once worker 0 is up "
                "(tokens: `vigil annotators add NAME`)"
            )
        if settings.retrain_check_interval_s > 0:
            console.print(f"retraining: worker 0 checks every {settings.retrain_check_interval_s:g}s "
                          f"(rounds: {settings.data_dir / 'logs' / 'retrain-rounds.jsonl'})")
        try:
            while not stopping:
                time.sleep(1.0)
                kafka.check_alive()
                for p in procs:
                    p.restart_if_dead()
        except BrokerDied as e:
            # Nothing can resume the stream (the message says why): workers left running would only
            # log failed connections, a hundred lines a second, and score nothing.
            logging.getLogger("streams.supervisor").critical("stopping the workers: %s", e)
            broker_died = True
        finally:
            # Without the broker a worker has nothing left to commit, yet faust's consumer waits
            # a minute for it (measured); with it, a worker gets the time to finish its batch.
            stop_workers(procs, timeout_s=5.0 if broker_died else 30.0)
    if broker_died:
        raise typer.Exit(1)


@app.command()
def worker(
    ctx: typer.Context,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port.")] = None,
) -> None:
    """Run one worker in the foreground against VIGIL_KAFKA_BROKERS."""
    from models.self_test import ModelBroken
    from streams.clickhouse import ClickHouseError
    from streams.restarts import CANNOT_START
    from streams.tickers import TickerDictionaryError
    from streams.worker import WorkerConfigError, run_worker

    try:
        run_worker(_settings(ctx), metrics_port)
    except (WorkerConfigError, ClickHouseError, ModelBroken, TickerDictionaryError) as e:
        # A log line, not a traceback: with VIGIL_LOG_FORMAT=json every line stays JSON. `vigil up`
        # repeats it when it restarts the worker.
        logging.getLogger("streams.worker").critical("%s%s", CANNOT_START, e)
        raise typer.Exit(1) from None


@app.command()
def produce(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL or CSV file.")],
    kind: Annotated[Kind, typer.Option(help="What the file holds.")],
    topic: Annotated[str | None, typer.Option(help="Target topic (default: the raw topic of KIND).")] = None,
    rate: Annotated[float, typer.Option(min=0, help="Messages per second (0: as fast as possible).")] = 0.0,
) -> None:
    """Replay a file of your own messages into Kafka (invalid lines go too: the worker refuses them)."""
    import asyncio

    from aiokafka.errors import KafkaError

    from streams.kafka_config import client_kwargs
    from streams.replay import ReplayError, read_messages, replay

    settings = _settings(ctx)
    if not settings.kafka_brokers:
        raise typer.BadParameter("set VIGIL_KAFKA_BROKERS to the broker `vigil up` printed", param_hint="env")
    topics = {**settings.raw_topics, kind.value: topic or settings.raw_topics[kind.value]}
    # ValueError: a file that is not JSON lines or a CSV of the kind's fields (ReplayInputError), a bad
    # Kafka security setting; KafkaError: one the producer raised while sending, not wrapped by replay.
    with exit_on(console, ValueError, ReplayError, KafkaError):
        counts = asyncio.run(
            replay(settings.kafka_brokers, topics, list(read_messages(file, kind)), rate_per_s=rate,
                   kafka_kwargs=client_kwargs(settings))
        )
    console.print(f"produced {counts}")


@db_app.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Apply the ClickHouse migrations (idempotent)."""
    from streams.clickhouse import ClickHouseError, open_store

    with exit_on(console, ClickHouseError):
        open_store(_settings(ctx)).close()  # opening migrates
    console.print("[green]migrations applied[/]")


@db_app.command("prune")
def db_prune(
    ctx: typer.Context,
    wait: Annotated[bool, typer.Option("--wait", help="Return once the deletes have finished.")] = False,
) -> None:
    """Delete rows older than VIGIL_CLICKHOUSE_TTL_DAYS on a legacy-18 schema (18.16 has no TTL;
    the worker's group leader also runs this every VIGIL_CLICKHOUSE_PRUNE_INTERVAL_S). Cron-friendly."""
    from streams.clickhouse import ClickHouseError, CompatLevel, open_store
    from streams.clickhouse.migrations import load_migrations
    from streams.clickhouse.retention import expiries, prune_expired, wait_for_deletes

    settings = _settings(ctx)
    expiring = expiries(load_migrations(), settings.clickhouse_ttl_days)
    with exit_on(console, ClickHouseError), open_store(settings) as store:
        if store.level is CompatLevel.modern:
            console.print(f"{store.database} has the modern schema: its tables' TTL deletes expired rows")
            return
        where = dict(database=store.database, expiring=expiring, cluster=settings.clickhouse_cluster)
        for result in prune_expired(store.backend, level=store.level, **where):
            state = "deleting" if result.deleting else "nothing to delete"
            console.print(f"{result.table}: {result.expired_rows} expired rows, {state}")
        if wait:
            wait_for_deletes(store.backend, **where)
            console.print("[green]deletes finished[/]")


@app.command()
def schema() -> None:
    """Print the JSON Schema of every message type."""
    from feedback.contracts import FEEDBACK_SCHEMAS
    from streams.alerting.contracts import Alert, AlertVerdict, TickerEvent, TicketAck, TriageTicket

    every = {**ALL_SCHEMAS, "Alert": Alert, "AlertVerdict": AlertVerdict, "TicketAck": TicketAck,
             "TriageTicket": TriageTicket, "TickerEvent": TickerEvent, **FEEDBACK_SCHEMAS}
    console.print_json(json.dumps({name: m.model_json_schema() for name, m in every.items()}))


def _mount_model_commands() -> None:
    from models.cli import register

    register(app)


def _mount_triage_commands() -> None:
    from streams.triage_cli import register

    register(app)


def _mount_dead_letter_commands() -> None:
    from streams.dead_letters_cli import register

    register(app)


def _mount_status_command() -> None:
    from streams.status_cli import register

    register(app)


def _mount_labelling_commands() -> None:
    from feedback.cli import register

    register(app)


_mount_model_commands()
_mount_triage_commands()
_mount_dead_letter_commands()
_mount_status_command()
_mount_labelling_commands()

if __name__ == "__main__":
    app()
