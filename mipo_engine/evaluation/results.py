"""The ``eval`` artifact (per-item results of ``mipo eval``) and its summary.

One row per evaluated response. Columns a task does not use are null: math and mcq fill
``answer``/``prediction``/``correct`` (mcq also ``letter_logprobs``/``entropy``);
personalization fills the adherence, log-prob, PMI and judge columns; ifeval fills the
instruction ids, their kwargs and the per-instruction strict/loose verdicts, and ``correct``
with the prompt-level strict verdict. ``summarize`` turns the
rows into the numbers ``mipo eval`` prints and writes beside the artifact, with percentile
bootstrap 95% intervals (``bootstrap_ci``) on accuracies, adherence, PMI and win rates;
``mipo eval --compare`` calls the same function, so both always agree.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import polars as pl

from mipo_engine.evaluation.copying import RESTATE_THRESHOLD
from mipo_engine.evaluation.personalization import diversity
from mipo_engine.evaluation.stats import bootstrap_ci

_STR, _I64, _F64, _BOOL = pl.String(), pl.Int64(), pl.Float64(), pl.Boolean()


def interval(values: Sequence[float], *, seed: int = 0) -> dict[str, float | int] | None:
    """Mean with a percentile-bootstrap 95% interval, or None without values."""
    if not values:
        return None
    mean, low, high = bootstrap_ci(values, seed=seed)
    return {"mean": mean, "low": low, "high": high, "n": len(values)}


def _distribution(values: Sequence[float]) -> dict[str, float | int] | None:
    """Mean, standard deviation and median (the statistics of seed 004 Figs. 2-3)."""
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "median": statistics.median(values),
        "n": len(values),
    }


def _present(frame: pl.DataFrame, column: str) -> list[Any]:
    return frame[column].drop_nulls().to_list()


def _graded_summary(frame: pl.DataFrame) -> dict[str, Any]:
    """Accuracy with interval, and the share of responses an answer could be read from."""
    correct = [float(value) for value in frame["correct"].fill_null(False).to_list()]
    return {
        "accuracy": interval(correct),
        "answered": frame["prediction"].is_not_null().mean(),
    }


def _entropy_summary(frame: pl.DataFrame) -> dict[str, Any]:
    """Answer-letter entropy overall, for correct and for incorrect items (seed 004 Fig. 3)."""
    with_entropy = frame.filter(pl.col("entropy").is_not_null())
    right = with_entropy.filter(pl.col("correct").fill_null(False))
    wrong = with_entropy.filter(~pl.col("correct").fill_null(False))
    return {
        "all": _distribution(_present(with_entropy, "entropy")),
        "correct": _distribution(_present(right, "entropy")),
        "incorrect": _distribution(_present(wrong, "entropy")),
        "unavailable": frame.height - with_entropy.height,
    }


def _copying_summary(frame: pl.DataFrame) -> dict[str, Any] | None:
    """How much responses repeat the user's own message (``evaluation.copying``)."""
    overlaps = _present(frame, "copy_overlap") if "copy_overlap" in frame.columns else []
    if not overlaps:
        return None
    return {
        "copy_overlap": interval(overlaps),
        "restates": interval([float(value >= RESTATE_THRESHOLD) for value in overlaps]),
        "threshold": RESTATE_THRESHOLD,
    }


def _personalization_summary(frame: pl.DataFrame) -> dict[str, Any]:
    """Adherence, PMI, self-BLEU and (when judged) scores and win rate."""
    checkable = frame.filter(pl.col("verifiable_items") > 0)
    shares = (checkable["items_met"] / checkable["verifiable_items"]).to_list()
    met, total = int(checkable["items_met"].sum()), int(checkable["verifiable_items"].sum())
    summary: dict[str, Any] = {
        "adherence": interval(shares),
        "adherence_items": {"met": met, "total": total, "rate": met / total if total else None},
        "all_items_met": (
            (checkable["items_met"] == checkable["verifiable_items"]).mean()
            if checkable.height
            else None
        ),
        "pmi": interval(_present(frame, "pmi")),
        "copying": _copying_summary(frame),
        "self_bleu_4": diversity(
            frame["response"].to_list(), frame["item_id"].to_list(), frame["sample"].to_list()
        ),
    }
    if frame["judge_score"].is_not_null().any():
        summary["judge"] = {
            "score": _distribution(_present(frame, "judge_score")),
            "reference_score": _distribution(_present(frame, "reference_score")),
            "win_rate": interval(_present(frame, "win")),
        }
    return summary


def _ifeval_summary(frame: pl.DataFrame) -> dict[str, Any]:
    """IFEval's four metrics with intervals, and accuracy per instruction type.

    Prompt-level intervals resample prompts, instruction-level ones resample instructions.
    """
    from mipo_engine.evaluation.ifeval import metric_values, per_instruction_type

    ids = frame["instruction_ids"].to_list()
    strict = frame["strict_followed"].to_list()
    loose = frame["loose_followed"].to_list()
    summary: dict[str, Any] = {
        name: interval(values) for name, values in metric_values(strict, loose).items()
    }
    summary["instructions"] = sum(len(names) for names in ids)
    summary["per_instruction"] = per_instruction_type(ids, strict, loose)
    return summary


def summarize(frame: pl.DataFrame, kind: str) -> dict[str, Any]:
    """Summary numbers of an eval artifact whose task is of ``kind`` (math, mcq, ...)."""
    if frame.height == 0:
        raise ValueError("no evaluated items to summarize")
    summary: dict[str, Any] = {
        "task": frame["task"][0],
        "kind": kind,
        "items": frame["item_id"].n_unique(),
        "responses": frame.height,
        "mean_response_tokens": frame["response_tokens"].mean(),
        "hit_token_limit": (frame["finish_reason"] == "length").mean(),
    }
    if kind in ("math", "mcq"):
        summary.update(_graded_summary(frame))
    if kind == "mcq":
        summary["entropy"] = _entropy_summary(frame)
    if kind == "personalization":
        summary.update(_personalization_summary(frame))
    if kind == "ifeval":
        summary.update(_ifeval_summary(frame))
    return summary
