"""Helpers for CLI commands: turn library errors into clear messages and exit codes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from mipo_engine.errors import MipoError

T = TypeVar("T")
err_console = Console(stderr=True)


def call_stage(function: Callable[[], T]) -> T:
    """Run a stage; a MipoError becomes a one-line message and its exit code."""
    try:
        return function()
    except MipoError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted; rerun the same command to resume[/]")
        raise typer.Exit(130) from None


def done(path: object, what: str) -> None:
    err_console.print(f"[green]wrote[/] {what}: {path}")


# The engine options of every model-calling command (the settings' fields carry the same help).
EngineOption = Annotated[
    str,
    typer.Option(
        help="Where the chunks run: local (this process) or ray (Ray actors, one backend "
        "instance each; the journal stays with this process)."
    ),
]
WorkersOption = Annotated[
    int, typer.Option(help="Ray actors, each hosting one backend instance (--engine ray).")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join (host:port or auto); default: start a local Ray instance "
        "(--engine ray)."
    ),
]


def engine_options(engine: str, workers: int, ray_address: str | None) -> dict[str, object]:
    """The engine options as settings keys."""
    return {"engine": engine, "workers": workers, "ray_address": ray_address}
