"""How a CLI command ends on a failure that is the user's to fix: one red line and exit code 1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.text import Text


def fail(console: Console, message: object) -> typer.Exit:
    """Print ``error: <message>``; raise what it returns to end the command with exit code 1."""
    # Text, not markup: messages quote paths and values that may hold brackets.
    console.print(Text.assemble(("error:", "red"), f" {message}"))
    return typer.Exit(1)


@contextmanager
def exit_on(console: Console, *errors: type[BaseException]) -> Iterator[None]:
    """End the command with ``error: <message>`` when the block raises one of ``errors``.

    They are the expected failures (ClickHouse down or held by `vigil up`, a file of the wrong
    kind) and their messages say what to do; a traceback would bury that line under frames."""
    try:
        yield
    except errors as e:
        raise fail(console, e) from None


def known_task(name: str) -> str:
    """A typer callback for every command's task: refuse an unknown one before anything is read,
    where it would be reported as a task without a champion (`vigil train --task NAME`, the advice
    then, cannot work for a name Vigil does not have)."""
    from models.tasks import UnknownTask, get_task

    try:
        return get_task(name).name
    except UnknownTask as e:
        raise fail(Console(), e) from None
