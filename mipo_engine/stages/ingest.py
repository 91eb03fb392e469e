"""``mipo ingest``: user files, built-in sets and benchmark files -> one prompts artifact.

Inputs are read completely and checked before anything is written: one bad row anywhere
stops the stage with its file, row and field, and no output appears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import polars as pl
from pydantic import Field

from mipo_engine.artifacts.run import StageConfig, StageRun, check_output_path
from mipo_engine.artifacts.schemas import PROMPTS, first_repeat
from mipo_engine.commandline import Cli
from mipo_engine.errors import InputError
from mipo_engine.resources import resource_dir
from mipo_engine.sources.builtin import BUILTIN_SETS, in_split
from mipo_engine.sources.files import normalise_record, read_records

Task = Literal["general", "personalization", "math", "mcq"]
FileFormat = Literal["auto", "jsonl", "csv", "parquet", "gsm8k", "svamp", "arc", "mmlu"]

BENCHMARK_FORMATS = ("gsm8k", "svamp", "arc", "mmlu")
# Training-side files of the shared benchmark folder, for ``bench:NAME:SPLIT``.
BENCHMARK_SPLITS = {
    "gsm8k:train": ("gsm8k", "gsm8k/train_subsample_2000_seed0.jsonl"),
    "gsm8k:test": ("gsm8k", "gsm8k/test.jsonl"),
    "arc_easy:train": ("arc", "arc/ARC-Easy/ARC-Easy-Train_subsample_2000_seed0.jsonl"),
    "arc_challenge:train": ("arc", "arc/ARC-Challenge/ARC-Challenge-Train.jsonl"),
    "mmlu:dev": ("mmlu", "mmlu/dev"),
    "mmlu:val": ("mmlu", "mmlu/val"),
}


class IngestConfig(StageConfig):
    inputs: Annotated[list[str], Cli(argument=True)] = Field(
        min_length=1,
        description="Files (.jsonl/.csv/.parquet), built-in sets (builtin:personalization, builtin:personalization-train, builtin:personalization-heldout, builtin:general) or benchmarks from the shared data folder (bench:gsm8k, bench:svamp, bench:arc_easy, bench:arc_challenge, bench:mmlu).",
    )
    out: Annotated[Path, Cli("--out", "-o")] = Field(description="Output prompts .parquet file.")
    task: Task | None = Field(
        None, description="Force the task of every row: general|personalization|math|mcq."
    )
    format: Annotated[FileFormat, Cli("--format", param="file_format")] = Field(
        "auto",
        description="auto (from the extension), jsonl, csv, parquet, or a benchmark layout: gsm8k, svamp, arc, mmlu.",
    )
    id_column: str = Field("id", description="Column holding the row id.")
    prompt_column: str = Field("prompt", description="Column holding the prompt.")
    context_column: str = Field("context", description="Column holding the user context.")
    answer_column: str = Field("answer", description="Column holding the gold answer.")
    limit: int | None = Field(None, ge=1, description="Keep only the first N rows.")


def _builtin_rows(name: str, config: IngestConfig) -> tuple[list[dict], Path]:
    if name not in BUILTIN_SETS:
        raise InputError(
            f"unknown built-in set {name!r}; available: {', '.join(sorted(BUILTIN_SETS))}",
            file=f"builtin:{name}",
        )
    file_name, split = BUILTIN_SETS[name]
    path = resource_dir("data") / file_name
    rows = _file_rows(path, config.model_copy(update={"format": "jsonl"}))
    rows = [r for r in rows if in_split(r["id"], split)]
    return rows, path


def _benchmark_rows(kind: str, spec: str) -> tuple[list[dict], Path | None]:
    from mipo_engine.sources import benchmarks

    if kind in BENCHMARK_FORMATS:  # a file in that layout
        loader = {
            "gsm8k": benchmarks.load_gsm8k,
            "svamp": benchmarks.load_svamp,
            "arc": benchmarks.load_arc,
            "mmlu": benchmarks.load_mmlu,
        }[kind]
        return loader(spec), Path(spec)
    if spec in BENCHMARK_SPLITS:
        layout, relative = BENCHMARK_SPLITS[spec]
        try:
            path = benchmarks.shared_data_dir() / relative
        except FileNotFoundError as error:
            raise InputError(str(error), file=f"bench:{spec}") from None
        return _benchmark_rows(layout, str(path))
    try:
        return benchmarks.load_benchmark(spec), None
    except (KeyError, ValueError, FileNotFoundError) as error:
        choices = ", ".join(sorted([*benchmarks.BENCHMARKS, *BENCHMARK_SPLITS]))
        raise InputError(f"{error}; available: {choices}", file=f"bench:{spec}") from None


def _file_rows(path: Path, config: IngestConfig) -> list[dict]:
    columns = {
        "id": config.id_column,
        "prompt": config.prompt_column,
        "context": config.context_column,
        "answer": config.answer_column,
    }
    records = read_records(path, config.format)
    return [
        normalise_record(
            record, path=path, row=number, columns=columns, task=config.task, source=path.name
        )
        for number, record in records
    ]


def _read_input(spec: str, config: IngestConfig) -> tuple[list[dict], str, Path | None]:
    """Rows of one input, a display name for errors, and the file to hash (if any)."""
    if spec.startswith("builtin:"):
        rows, path = _builtin_rows(spec.removeprefix("builtin:"), config)
        return rows, spec, path
    if spec.startswith("bench:"):
        rows, path = _benchmark_rows("bench", spec.removeprefix("bench:"))
        return rows, spec, path
    path = Path(spec)
    if config.format in BENCHMARK_FORMATS:
        rows, _ = _benchmark_rows(config.format, spec)
        return rows, spec, path
    return _file_rows(path, config), spec, path


def run_ingest(config: IngestConfig) -> Path:
    """Read every input, check ids are unique across them, write the prompts artifact."""
    output = check_output_path(config.out)
    rows: list[dict] = []
    origins: list[str] = []  # the input each row came from
    hashed: dict[str, Path | None] = {}
    for index, spec in enumerate(config.inputs):
        input_rows, name, path = _read_input(spec, config)
        hashed[f"input{index}"] = path if path is not None and path.exists() else None
        ids = [row["id"] for row in (*rows, *input_rows)]
        repeat = first_repeat(ids)
        if repeat is not None:
            position, first = repeat
            where = [*origins, *[name] * len(input_rows)]
            raise InputError(
                f"duplicate id {ids[position - 1]!r} (first seen in {where[first - 1]})",
                file=name,
                row=position - len(rows),
                field="id",
            )
        for row in input_rows:
            if config.task is not None:
                row["task"] = config.task
            rows.append(row)
            origins.append(name)
    if config.limit is not None:
        rows = rows[: config.limit]
    if not rows:
        raise InputError("no rows to ingest", file=", ".join(config.inputs))
    frame = pl.DataFrame(rows, schema=PROMPTS.polars_schema())
    run = StageRun("ingest", output, config.model_dump(mode="json"), hashed)
    task_counts = frame["task"].value_counts().sort("task").to_dicts()
    return run.write(frame, PROMPTS, stats={"rows": frame.height, "tasks": task_counts})
