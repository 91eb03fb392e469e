"""``mipo ingest``: options -> IngestConfig -> run_ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipo_engine.commands.shared import call_stage, done


def command(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Files (.jsonl/.csv/.parquet), built-in sets (builtin:personalization, "
            "builtin:personalization-train, builtin:personalization-heldout, builtin:general) "
            "or benchmarks from the shared data folder (bench:gsm8k, bench:svamp, "
            "bench:arc_easy, bench:arc_challenge, bench:mmlu).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output prompts .parquet file.")],
    task: Annotated[
        str | None,
        typer.Option(help="Force the task of every row: general|personalization|math|mcq."),
    ] = None,
    file_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="auto (from the extension), jsonl, csv, parquet, or a benchmark layout: "
            "gsm8k, svamp, arc, mmlu.",
        ),
    ] = "auto",
    id_column: Annotated[str, typer.Option(help="Column holding the row id.")] = "id",
    prompt_column: Annotated[str, typer.Option(help="Column holding the prompt.")] = "prompt",
    context_column: Annotated[
        str, typer.Option(help="Column holding the user context.")
    ] = "context",
    answer_column: Annotated[str, typer.Option(help="Column holding the gold answer.")] = "answer",
    limit: Annotated[int | None, typer.Option(help="Keep only the first N rows.")] = None,
) -> None:
    """Normalise prompt files and built-in sets into a prompts artifact."""
    from mipo_engine.stages.ingest import IngestConfig, run_ingest

    def run() -> Path:
        config = IngestConfig.from_options(
            inputs=inputs,
            out=out,
            task=task,
            format=file_format,
            id_column=id_column,
            prompt_column=prompt_column,
            context_column=context_column,
            answer_column=answer_column,
            limit=limit,
        )
        return run_ingest(config)

    done(call_stage(run), "prompts")
