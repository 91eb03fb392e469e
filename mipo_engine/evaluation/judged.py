"""Judge scores and win rate of personalization responses against a reference eval.

Seed 004 sec. 5.4: a judge scores each response once per rubric item of the user's context,
the item scores are averaged per response (App. C.2), and the result is reported as the win
rate *including ties* against reference responses. ``mipo eval`` judges with what the
``mipo judge`` and ``mipo rubrics`` stages run (``judge_responses``, ``write_rubrics``), with
the same settings and identities, and keeps their files beside the eval output, so a killed
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

from mipo_engine.artifacts.schemas import EVAL, JUDGMENTS
from mipo_engine.artifacts.store import read_artifact, write_parquet_atomic
from mipo_engine.errors import InputError
from mipo_engine.judging.judge import judge_identity, judge_responses
from mipo_engine.judging.rubric_writing import MAX_NEW_TOKENS as RUBRIC_MAX_NEW_TOKENS
from mipo_engine.judging.rubric_writing import rubrics_identity, write_rubrics
from mipo_engine.judging.summary import aggregate_judgments
from mipo_engine.modelcalls.settings import AskingConfig

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
    settings = AskingConfig.from_options(
        backend=backend,
        model=model,
        base_url=base_url,
        batch_size=batch_size,
        max_new_tokens=RUBRIC_MAX_NEW_TOKENS,
    )
    return write_rubrics(
        settings,
        contexts=responses,
        out=_side_file(output, "rubrics"),
        limit=None,
        identity=rubrics_identity(settings, contexts=responses, limit=None),
    )


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
    settings = AskingConfig.from_options(
        backend=backend, model=model, base_url=base_url, batch_size=batch_size
    )
    where = {"responses": responses, "rubrics": rubrics, "reference": reference}
    judged = judge_responses(
        settings,
        out=_side_file(output, "judgments"),
        mode=mode,
        limit=None,
        identity=judge_identity(settings, mode=mode, limit=None, **where),
        **where,
    )
    judgments = read_artifact(judged, JUDGMENTS)
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
