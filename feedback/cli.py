"""`vigil label-ui` and `vigil annotators add|list`, mounted on the main CLI by ``register``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.cli_errors import exit_on, fail
from streams.settings import VigilSettings

console = Console()
annotators_app = typer.Typer(help="Annotator tokens for the labelling UI and API.", no_args_is_help=True)


def _settings(ctx: typer.Context) -> VigilSettings:
    return ctx.obj


@annotators_app.command("add")
def annotators_add(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Who labels.")]) -> None:
    """Create an annotator and print its token ONCE (only its SHA-256 is stored)."""
    from feedback.auth import AnnotatorError, TokenBook, tokens_path

    book = TokenBook(tokens_path(_settings(ctx).data_dir))
    try:
        token = book.add(name)
    except AnnotatorError as e:
        raise typer.BadParameter(str(e), param_hint="NAME") from None
    console.print(f"annotator [bold]{name}[/] added; token (shown only now, keep it secret):")
    typer.echo(token)


@annotators_app.command("list")
def annotators_list(ctx: typer.Context) -> None:
    """The annotators (names and when they were added; tokens are not kept)."""
    from feedback.auth import TokenBook, tokens_path

    book = TokenBook(tokens_path(_settings(ctx).data_dir))
    table = Table("annotator", "added")
    for a in book.list():
        table.add_row(a.name, a.created_at)
    console.print(table)
    if not book.list():
        console.print(f"none yet in {book.path}: add one with `vigil annotators add NAME`")


def label_ui(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Listen address (default VIGIL_UI_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default VIGIL_UI_PORT).")] = None,
) -> None:
    """Serve the labelling UI and API against VIGIL_KAFKA_BROKERS and ClickHouse."""
    import asyncio
    import contextlib
    import signal

    from feedback.web import serve
    from streams.clickhouse import ClickHouseError, open_store

    settings = _settings(ctx)
    overrides = {k: v for k, v in (("ui_host", host), ("ui_port", port)) if v is not None}
    settings = settings.model_copy(update=overrides)
    if not settings.kafka_brokers:
        raise typer.BadParameter(
            "set VIGIL_KAFKA_BROKERS to the broker `vigil up` printed (or run `vigil up`, which serves the UI too)",
            param_hint="env",
        )
    with exit_on(console, ClickHouseError):
        store = open_store(settings)

    async def run() -> None:
        # SIGTERM (docker compose stop) ends it like Ctrl-C: the site and the producer close, exit 0.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(settings, store, settings.kafka_brokers,
                        ready=lambda url: console.print(f"[green]labelling UI[/] on {url} (Ctrl-C stops)"))

    try:
        with store, contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except OSError as e:  # the port is taken, or the address is not this host's
        raise fail(console, f"the labelling UI cannot listen on {settings.ui_host}:{settings.ui_port} ({e}); "
                            "stop what holds the port or choose another with --port (VIGIL_UI_PORT)") from None


def register(app: typer.Typer) -> None:
    app.command("label-ui")(label_ui)
    app.add_typer(annotators_app, name="annotators")
