"""The ``mipo`` command line: one command per stage, built from the stage registry.

Each stage's options are the fields of its settings class (``mipo_engine.commandline``); the
few commands with code of their own live in ``mipo_engine.commands``. A stage's command is
built when it is used, so ``mipo --help`` imports no stage and stays fast.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from mipo_engine import __version__
from mipo_engine.commands import eval as eval_command
from mipo_engine.commands import lab as lab_command
from mipo_engine.commands import models as models_command
from mipo_engine.commands import publish as publish_command
from mipo_engine.commands import report as report_command
from mipo_engine.commands import run as run_command
from mipo_engine.commands.stages import lazy_stage_command

# The stage commands in the order ``mipo --help`` lists them; eval and publish add their own.
STAGE_COMMANDS = {
    "ingest": None,
    "generate": None,
    "contexts": None,
    "rubrics": None,
    "judge": None,
    "revise": None,
    "score": None,
    "train": None,
    "eval": eval_command.build,
    "export": None,
    "publish": publish_command.build,
}


class MipoGroup(TyperGroup):
    """The ``mipo`` group: the stage commands first, then the commands registered below."""

    def __init__(self, *args: Any, commands: dict[str, Any] | None = None, **kwargs: Any) -> None:
        stages = {name: lazy_stage_command(name, build) for name, build in STAGE_COMMANDS.items()}
        super().__init__(*args, commands={**stages, **(commands or {})}, **kwargs)


app = typer.Typer(
    name="mipo",
    help="Preference data without human labels, and mutual-information trainers (MIPO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=MipoGroup,
)

app.add_typer(lab_command.app, name="lab")
app.command("run")(run_command.command)
app.command("report")(report_command.command)
app.command("models")(models_command.command)


@app.command("version")
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
