"""`vigil triage ...`: the live support triage as ClickHouse has it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.cli_errors import exit_on
from streams.clickhouse.triage_store import QueueSla

triage_app = typer.Typer(help="Live support triage.", no_args_is_help=True)
console = Console()


def sla_table(rows: list[QueueSla], at: datetime) -> Table:
    table = Table(title=f"Triage tickets by queue, priority and SLA state at {at:%Y-%m-%d %H:%M:%S} UTC")
    for name in ("queue", "priority", "open", "acked", "breached", "of them acked late", "total"):
        table.add_column(name, justify="left" if name in ("queue", "priority") else "right")
    for r in rows:
        breached = f"[red]{r.breached}[/]" if r.breached else "0"
        table.add_row(r.queue, r.priority, str(r.open), str(r.acked), breached, str(r.acked_late), str(r.total))
    if rows:
        table.add_section()
        table.add_row("all", "", *(str(sum(getattr(r, f) for r in rows))
                                   for f in ("open", "acked", "breached", "acked_late", "total")))
    return table


@triage_app.command("status")
def status(
    ctx: typer.Context,
    at: Annotated[
        datetime | None,
        typer.Option(help="Judge SLAs as of this UTC time (default: now), e.g. for a replay of old traffic."),
    ] = None,
) -> None:
    """Tickets per queue and priority: open (not yet due), acked by their due time, and breached
    (not acked by their due time; those acked since are shown too)."""
    from streams.clickhouse import ClickHouseError, open_store
    from streams.clickhouse.triage_store import TriageStore

    when = (at.replace(tzinfo=UTC) if at.tzinfo is None else at) if at else datetime.now(UTC)
    with exit_on(console, ClickHouseError), open_store(ctx.obj) as store:
        rows = TriageStore(store).sla_summary(when)
    if not rows:
        console.print("no triage tickets stored yet: start a worker (`vigil up`) and send support messages")
        return
    console.print(sla_table(rows, when))


def register(app: typer.Typer) -> None:
    app.add_typer(triage_app, name="triage")
