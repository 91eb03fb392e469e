"""``mipo run``: options -> pipeline file -> run_pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipo_engine.commands.shared import call_stage


def command(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML file (see configs/).")],
    from_stage: Annotated[
        str | None, typer.Option("--from", help="Start at this stage (earlier ones must exist).")
    ] = None,
    to_stage: Annotated[str | None, typer.Option("--to", help="Stop after this stage.")] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            help="Repeat generate-score-export-train N times, each round with the "
            "previous round's policy (overrides the file's 'rounds')."
        ),
    ] = None,
) -> None:
    """Run the stages a YAML file declares, skipping those already up to date."""
    from mipo_engine.pipeline import load_pipeline, run_pipeline

    def run() -> None:
        pipeline = load_pipeline(config)
        run_pipeline(pipeline, from_stage=from_stage, to_stage=to_stage, rounds=rounds)

    call_stage(run)
