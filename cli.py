"""The ``mipo`` command line: one command per stage; each parses options and calls the stage.

The stage code lives in ``mipo_engine.stages``; the option parsing of each command in
``mipo_engine.commands``. Imports of heavy libraries happen inside the commands, so
``mipo --help`` is fast.
"""

from __future__ import annotations

import typer

from mipo_engine import __version__
from mipo_engine.commands import contexts as contexts_command
from mipo_engine.commands import eval as eval_command
from mipo_engine.commands import export as export_command
from mipo_engine.commands import generate, ingest
from mipo_engine.commands import judge as judge_command
from mipo_engine.commands import lab as lab_command
from mipo_engine.commands import models as models_command
from mipo_engine.commands import publish as publish_command
from mipo_engine.commands import report as report_command
from mipo_engine.commands import revise as revise_command
from mipo_engine.commands import rubrics as rubrics_command
from mipo_engine.commands import run as run_command
from mipo_engine.commands import score as score_command
from mipo_engine.commands import train as train_command

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
app.command("rubrics")(rubrics_command.command)
app.command("judge")(judge_command.command)
app.command("revise")(revise_command.command)
app.command("score")(score_command.command)
app.command("train")(train_command.command)
app.command("eval")(eval_command.command)
app.command("export")(export_command.command)
app.command("publish")(publish_command.command)
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
