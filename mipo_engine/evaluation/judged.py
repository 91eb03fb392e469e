"""Judge scores and win rate of personalization responses against a reference eval.

Seed 004 sec. 5.4: a judge scores each response once per rubric item of the user's context,
the item scores are averaged per response (App. C.2), and the result is reported as the win
rate *including ties* against reference responses. ``mipo eval`` delegates the judging to the
``mipo judge`` stage (``run_judge``) and keeps its files beside the eval output, so a killed
judge resumes like any stage:

- ``E.judge-responses.parquet``: the responses to judge (a ``responses`` artifact);
- ``E.rubrics.parquet``: one rubric per preference item, made by ``mipo rubrics`` with the
  judge model when no rubrics file is given (rubric mode only);
- ``E.judgments.parquet`` (+ summary): one judge score per (response, item), for the
  responses and for the reference eval's responses to the same items.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from mipo_engine.artifacts.schemas import EVAL
from mipo_engine.artifacts.store import read_artifact, write_parquet_atomic
from mipo_engine.errors import InputError

JudgeMode = Literal["rubric", "rlaif", "verify"]


def _side_file(output: Path, suffix: str) -> Path:
    """``E.parquet`` -> ``E.<suffix>.parquet``."""
    return output.with_name(f"{output.stem}.{suffix}.parquet")


def _check_reference(reference: Path, frame: pl.DataFrame) -> None:
    """The reference must be an eval of the same task sharing response ids with ``frame``."""
    reference_frame = read_artifact(reference, EVAL)
    task = frame["task"][0]
    if reference_frame.height and reference_frame["task"][0] != task:
        raise InputError(
            f"reference evaluates {reference_frame['task'][0]!r}, not {task!r}",
            file=reference,
            field="task",
        )
    shared = set(reference_frame["id"].to_list()) & set(frame["id"].to_list())
    if not shared:
        raise InputError(
            "reference shares no response id with this eval; evaluate the same items "
            "(same --data, --limit, --seed, --samples)",
            file=reference,
            field="id",
        )


def _rubrics_file(
    output: Path,
    responses: Path,
    *,
    backend: str,
    model: str | None,
    base_url: str | None,
    batch_size: int,
) -> Path:
    """Rubrics for every preference item of the responses, made with the judge model."""
    from mipo_engine.stages.rubrics import RubricsConfig, run_rubrics

    config = RubricsConfig.from_options(
        contexts=responses,
        out=_side_file(output, "rubrics"),
        backend=backend,
        model=model,
        base_url=base_url,
        batch_size=batch_size,
    )
    return run_rubrics(config)


def judge_against_reference(
    frame: pl.DataFrame,
    *,
    output: Path,
    reference: Path,
    mode: JudgeMode,
    backend: str,
    model: str | None,
    base_url: str | None,
    rubrics: Path | None,
    batch_size: int,
) -> pl.DataFrame:
    """``frame`` with ``judge_score``, ``reference_score`` and ``win`` filled in.

    ``win`` is 1.0 when the response's aggregated score is at least the reference's (ties
    win, seed 004 sec. 5.4), 0.0 when lower, and null when either has no score (no judged
    item, or no usable judge reply), so failures never count for or against a model.
    """
    from mipo_engine.artifacts.schemas import JUDGMENTS
    from mipo_engine.stages.judge import JudgeConfig, aggregate_judgments, run_judge

    _check_reference(reference, frame)
    responses = _side_file(output, "judge-responses")
    write_parquet_atomic(
        frame.select("id", "prompt", "context", "context_items", "response", "task"), responses
    )
    if mode == "rubric" and rubrics is None:
        rubrics = _rubrics_file(
            output,
            responses,
            backend=backend,
            model=model,
            base_url=base_url,
            batch_size=batch_size,
        )
    config = JudgeConfig.from_options(
        responses=responses,
        out=_side_file(output, "judgments"),
        rubrics=rubrics,
        reference=reference,
        mode=mode,
        backend=backend,
        model=model,
        base_url=base_url,
        batch_size=batch_size,
    )
    judgments = read_artifact(run_judge(config), JUDGMENTS)
    scores = aggregate_judgments(judgments)
    by_role = {
        role: dict(scores.filter(pl.col("role") == role).select("id", "score").iter_rows())
        for role in ("response", "reference")
    }
    return frame.with_columns(
        pl.col("id")
        .replace_strict(by_role["response"], default=None, return_dtype=pl.Float64)
        .alias("judge_score"),
        pl.col("id")
        .replace_strict(by_role["reference"], default=None, return_dtype=pl.Float64)
        .alias("reference_score"),
    ).with_columns(
        pl.when(pl.col("judge_score").is_null() | pl.col("reference_score").is_null())
        .then(None)
        .otherwise((pl.col("judge_score") >= pl.col("reference_score")).cast(pl.Float64))
        .alias("win")
    )
