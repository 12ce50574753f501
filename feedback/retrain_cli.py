"""`vigil retrain`, and the model events that `vigil models promote|rollback` record (mounted by models/cli.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

from feedback.contracts import ModelEvent, ModelEventKind
from streams.cli_errors import exit_on, known_task
from streams.settings import VigilSettings

log = logging.getLogger(__name__)
console = Console()


def _settings(ctx: typer.Context) -> VigilSettings:
    return ctx.obj if isinstance(ctx.obj, VigilSettings) else VigilSettings()


def retrain_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option(help="sentiment or triage", callback=known_task)],
    force: Annotated[bool, typer.Option(help="Retrain whatever the trigger policy says, even while another round has not "
                                            "ended (needs new corrections).")] = False,
) -> None:
    """Fine-tune TASK's champion on the human corrections if the trigger policy says so, gate the
    result and promote it. Exit 0: promoted or nothing to do; 3: the gate kept the champion; 1: error
    (a round that failed after it started is recorded as a retrain_failed model event)."""
    from feedback.retrain_job import run_retrain
    from feedback.store import open_feedback_store
    from streams.clickhouse.errors import ClickHouseError

    settings = _settings(ctx)
    with exit_on(console, ValueError, RuntimeError, ClickHouseError), open_feedback_store(settings) as store:
        report = run_retrain(settings, task, store, force=force)
    colour = {"promoted": "green", "refused": "yellow", "skipped": "dim"}[report.outcome.value]
    console.print(f"[{colour}]{report.summary}[/]")
    for who, why in report.dropped_annotators.items():
        console.print(f"  dropped annotator {who}: {why}")
    if report.figures:
        console.print("  " + ", ".join(f"{k} {v:.4g}" for k, v in report.figures.items()))
    raise typer.Exit(report.exit_code)


def record_champion_change(settings: VigilSettings, kind: ModelEventKind, task: str, version: str, detail: str) -> None:
    """Best effort: a promotion made by a person must not fail because ClickHouse or Kafka is away
    (workers follow the registry pointer, not this event), so problems are only reported."""
    from feedback.events import record_model_events

    event = ModelEvent(kind=kind, task=task, model_version=version, detail=detail, created_at=datetime.now(UTC))
    try:
        record_model_events(settings, [event])
    except Exception as e:  # noqa: BLE001 - reported, never fatal: see the docstring
        console.print(f"[yellow]warning:[/] the {kind.value} event was not recorded ({e})")
