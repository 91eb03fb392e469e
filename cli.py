"""The ``mipo`` command line: one command per stage; each parses options and calls the stage.

The stage code lives in ``mipo_engine.stages``; the option parsing of each command in
``mipo_engine.commands``. Imports of heavy libraries happen inside the commands, so
``mipo --help`` is fast.
"""

from __future__ import annotations

import typer

from mipo_engine import __version__
from mipo_engine.commands import contexts as contexts_command
from mipo_engine.commands import generate, ingest

app = typer.Typer(
    name="mipo",
    help="Preference data without human labels, and mutual-information trainers (MIPO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("ingest")(ingest.command)
app.command("generate")(generate.command)
app.command("contexts")(contexts_command.command)


@app.command("version")
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
