"""`vigil status`: the champions and what the workers said of them, what was stored in the last
window, the workers' consumer lag and the label queue, in one screen (or JSON)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from feedback.contracts import ModelEvent
from models.tasks import TASKS
from streams.clickhouse.store import Activity
from streams.settings import VigilSettings
from streams.status import ModelStatus, StatusReport, model_status

if TYPE_CHECKING:
    from models.registry import ModelRegistry

console = Console()


def gather_status(settings: VigilSettings, window: timedelta, now: datetime) -> StatusReport:
    champions = _champions(settings)
    events, activity, queue, clickhouse_error = _from_clickhouse(settings, now - window)
    lag, kafka_error = _lag(settings)
    return StatusReport(
        at=now,
        models=[model_status(task, champion, accuracy, events.get(task, []), registry_error=error)
                for task, (champion, accuracy, error) in champions.items()],
        activity=activity, label_queue=queue, consumer_lag=lag,
        clickhouse_error=clickhouse_error, kafka_error=kafka_error,
    )


def _champions(settings: VigilSettings) -> dict[str, tuple[str | None, float | None, str | None]]:
    """task -> (the version workers load, its accuracy on its card's eval set, what is wrong with the
    registry there: a damaged champion pointer, a hand-copied version, a champion since deleted)."""
    from models.registry import ModelNotFound, ModelRegistry, RegistryError

    registry = ModelRegistry(settings.registry_dir)
    out: dict[str, tuple[str | None, float | None, str | None]] = {}
    for task in TASKS:
        try:
            out[task] = _champion(registry, task)
        except ModelNotFound:
            out[task] = (None, None, None)
        except RegistryError as e:
            out[task] = (None, None, str(e))
    return out


def _champion(registry: ModelRegistry, task: str) -> tuple[str | None, float | None, str | None]:
    from models.registry import CHAMPION

    pointer, lineage = registry.champion(task), registry.champions(task)  # lineage: deleted versions left out
    version, problem = CHAMPION, None
    if pointer is not None and lineage[:1] != [pointer]:
        # The pointer names a version whose directory is gone (deleted by hand, as a CardMismatch
        # tells one to): streams.worker starts on the champion before it, and a promotion repairs it.
        gone = f"the champion pointer names {pointer}, which is not in the registry (its directory was deleted)"
        if not lineage:
            return None, None, (f"{gone}, and no earlier champion is left: workers cannot start. Promote a "
                                f"version with `vigil models promote {task} VERSION`, or train one with "
                                f"`vigil train --task {task}`")
        version, problem = lineage[0], (
            f"{gone}; workers fall back to {lineage[0]}, the champion before it, when they start. Promote the "
            f"version to serve, e.g. `vigil models promote {task} {lineage[0]}`")
    card = registry.card(task, version)
    return card.version, card.metrics.accuracy if card.metrics else None, problem


def _from_clickhouse(settings: VigilSettings, since: datetime) -> tuple[dict[str, list[ModelEvent]], Activity | None,
                                                                        dict[str, dict[str, int]] | None, str | None]:
    """Model events per task, the activity since ``since``, the label queue, or why they could not be read."""
    from feedback.store import FeedbackStore
    from streams.clickhouse import ClickHouseError, open_store

    try:
        with open_store(settings) as store:
            feedback = FeedbackStore(store)
            events = {task: feedback.fetch_model_events(task) for task in TASKS}
            return events, store.activity(since), {task: feedback.queue_stats(task) for task in TASKS}, None
    except ClickHouseError as e:
        return {}, None, None, str(e)


def _lag(settings: VigilSettings) -> tuple[dict[str, int] | None, str | None]:
    from streams.kafka_config import KafkaConfigError
    from streams.kafka_lag import LagUnavailable, group_lag

    if not settings.kafka_brokers:
        return None, "VIGIL_KAFKA_BROKERS is not set: give it the broker `vigil up` printed"
    try:
        return group_lag(settings, settings.raw_topics.values()), None
    except (LagUnavailable, KafkaConfigError) as e:  # a wrong security setting: the rest still shows
        return None, str(e)


def _models_table(models: list[ModelStatus]) -> Table:
    table = Table(title="Models")
    for name in ("task", "champion", "accuracy", "latest events (newest first)"):
        table.add_column(name)
    for m in models:
        events = "\n".join(f"{e.created_at:%m-%d %H:%M} {e.kind.value} {e.model_version}" for e in m.recent_events)
        champion = f"[red]{m.champion} (refused)[/]" if m.refusals else (m.champion or "[red]none[/]")
        table.add_row(m.task, champion, "-" if m.accuracy is None else f"{m.accuracy:.3f}", events or "-")
    return table


def render_status(report: StatusReport, window: timedelta) -> None:
    console.print(_models_table(report.models))
    if report.activity is not None:
        a = report.activity
        minutes = f"{window.total_seconds() / 60:g} min"
        if a.scored:
            stored = Table(title=f"Scored in the last {minutes}")
            for name in ("kind", "model version", "messages"):
                stored.add_column(name, justify="right" if name == "messages" else "left")
            for row in a.scored:
                stored.add_row(row.kind, row.model_version, f"{row.rows:,}")
            console.print(stored)
        else:
            console.print(f"nothing scored in the last {minutes}")
        latency = "-" if a.e2e_p50_ms is None else f"p50 {a.e2e_p50_ms:,.0f} ms, p99 {a.e2e_p99_ms:,.0f} ms"
        letters = ", ".join(f"{r} {n}" for r, n in a.dead_letters_by_reason.items()) or "none"
        console.print(f"end-to-end latency: {latency}; dead letters: {letters}")
    if report.consumer_lag is not None:
        lag = ", ".join(f"{topic} {n:,}" for topic, n in report.consumer_lag.items()) or "no topics yet"
        console.print(f"consumer lag (messages not yet committed by the workers): {lag}")
    if report.label_queue is not None:
        queue = "; ".join(f"{task}: " + ", ".join(f"{s} {n}" for s, n in states.items())
                          for task, states in report.label_queue.items())
        console.print(f"label queue: {queue}")
    for line in report.problems():
        console.print(f"[yellow]needs attention:[/] {line}")


def status(
    ctx: typer.Context,
    minutes: Annotated[float, typer.Option("--minutes", min=1, help="The window for what was stored.")] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON, for scripts.")] = False,
) -> None:
    """Champions and workers' refusals, what was stored lately, consumer lag and the label queue.
    Exit code 1 when something needs attention (listed last)."""
    window = timedelta(minutes=minutes)
    report = gather_status(ctx.obj, window, datetime.now(UTC))
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        render_status(report, window)
    if report.problems():
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
