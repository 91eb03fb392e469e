"""``mipo report``: RUN_DIR -> REPORT_DIR/index.html (self-contained) and the figure PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipo_engine.commands.shared import call_stage, done


def command(
    run_dir: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_DIR",
            help="Run directory: the folder of mipo run, or where the stages wrote.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Report folder (index.html and PNG figures).")
    ],
    samples: Annotated[int, typer.Option(help="Sample pairs shown side by side.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed that picks the sample pairs.")] = 0,
) -> None:
    """Write an HTML report of a run: pipeline, filters, training curves, evals, samples."""
    from mipo_engine.report import write_report

    done(call_stage(lambda: write_report(run_dir, out, samples=samples, seed=seed)), "report")
