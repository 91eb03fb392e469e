"""What a set of judgments says: per-response scores and the metrics ``mipo judge`` reports.

Seed 004 sec. 5.4 and App. C.2: item scores are averaged per response
(``aggregate_judgments``); responses are compared with reference responses by win rate with
ties counted as wins; a judge's reliability is its strict and tie-tolerant accuracy at ranking
known chosen responses above rejected ones (Table 6). ``mipo export`` (judge margins),
``mipo eval`` (win rates) and ``mipo report`` read judgments through these functions too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl

from mipo_engine.judging.scores import critic_accuracy, win_rate
from mipo_engine.modelcalls.running import console

AGREEMENT_THRESHOLD = 4.0
"""A judge score at or above this counts as "adheres" when compared with the checker."""


def aggregate_judgments(judgments: pl.DataFrame) -> pl.DataFrame:
    """Per-response score: the mean of its item scores, nulls skipped (seed 004 App. C.2).

    Returns columns ``id`` (the response id: generation pair id or responses id), ``role``
    and ``score`` (null when every item's score is null), in first-seen order.
    """
    return (
        judgments.group_by("response_id", "role", maintain_order=True)
        .agg(pl.col("score").mean())
        .rename({"response_id": "id"})
    )


def _paired(aggregated: pl.DataFrame, left: str, right: str) -> pl.DataFrame:
    """Ids judged in both roles: columns id, ``left``, ``right`` (scores may be null)."""

    def scores(role: str) -> pl.DataFrame:
        return aggregated.filter(pl.col("role") == role).select("id", pl.col("score").alias(role))

    return scores(left).join(scores(right), on="id", how="inner", maintain_order="left")


def critic_summary(aggregated: pl.DataFrame) -> dict[str, Any] | None:
    """Strict and tie-tolerant accuracy of chosen over rejected (seed 004 Table 6).

    A pair with a missing aggregate score counts as wrong (``critic_accuracy`` default).
    """
    pairs = _paired(aggregated, "chosen", "rejected")
    if pairs.height == 0:
        return None
    chosen, rejected = pairs["chosen"].to_list(), pairs["rejected"].to_list()
    strict, tolerant = critic_accuracy(chosen, rejected)
    missing = sum(c is None or r is None for c, r in zip(chosen, rejected, strict=True))
    return {"pairs": pairs.height, "strict": strict, "tie_tolerant": tolerant, "missing": missing}


def _win_rate_entry(pairs: pl.DataFrame) -> dict[str, Any]:
    scores, references = pairs["response"].to_list(), pairs["reference"].to_list()
    try:
        rate = win_rate(scores, references)
    except ValueError:
        rate = None  # no pair with both scores
    comparable = sum(
        s is not None and r is not None for s, r in zip(scores, references, strict=True)
    )
    return {"win_rate": rate, "pairs": comparable}


def win_rate_summary(
    aggregated: pl.DataFrame, tasks: dict[str, str | None]
) -> dict[str, Any] | None:
    """Win rate of responses over references, ties counted as wins (seed 004 sec. 5.4)."""
    pairs = _paired(aggregated, "response", "reference")
    if pairs.height == 0:
        return None
    pairs = pairs.with_columns(
        pl.col("id").replace_strict(tasks, default=None, return_dtype=pl.String()).alias("task")
    )
    by_task = {
        task or "unspecified": _win_rate_entry(group)
        for (task,), group in pairs.group_by("task", maintain_order=True)
    }
    return {"overall": _win_rate_entry(pairs), "by_task": by_task}


def adherence_summary(judgments: pl.DataFrame) -> dict[str, Any] | None:
    """Share of verifiable items the checker passed: overall, per role and per type."""
    checked = judgments.filter(pl.col("passed").is_not_null())
    if checked.height == 0:
        return None

    def rates(column: str) -> dict[str, float]:
        grouped = checked.group_by(column, maintain_order=True).agg(pl.col("passed").mean())
        return {str(key): round(value, 4) for key, value in grouped.iter_rows()}

    return {
        "checked": checked.height,
        "rate": round(float(checked["passed"].mean()), 4),
        "by_role": rates("role"),
        "by_type": rates("checker"),
    }


def checker_agreement(judgments: pl.DataFrame) -> dict[str, Any] | None:
    """How often "judge score >= 4" agrees with the checker on verifiable items.

    ``items`` counts verifiable items the judge scored; ``unscored`` those it gave no usable
    score (left out of the agreement, which is None when nothing was scored).
    """
    verifiable = judgments.filter(pl.col("passed").is_not_null() & (pl.col("mode") != "verify"))
    if verifiable.height == 0:
        return None
    both = verifiable.filter(pl.col("score").is_not_null())
    says_pass = both["score"] >= AGREEMENT_THRESHOLD
    passed = both["passed"]
    return {
        "items": both.height,
        "unscored": verifiable.height - both.height,
        "threshold": AGREEMENT_THRESHOLD,
        "agreement": round(float((says_pass == passed).mean()), 4) if both.height else None,
        "true_pass": int((says_pass & passed).sum()),
        "true_fail": int((~says_pass & ~passed).sum()),
        "false_pass": int((says_pass & ~passed).sum()),
        "false_fail": int((~says_pass & passed).sum()),
    }


def summarize(judgments: pl.DataFrame, tasks: dict[str, str | None], mode: str) -> dict[str, Any]:
    """Every metric the stage reports, from the judgments alone (plus the responses' tasks)."""
    aggregated = aggregate_judgments(judgments)
    reasons = Counter(e for e in judgments["error"].to_list() if e is not None)
    means = aggregated.group_by("role", maintain_order=True).agg(pl.col("score").mean())
    return {
        "mode": mode,
        "judgments": judgments.height,
        "responses": aggregated.height,
        "null_scores": int(judgments["score"].null_count()),
        "null_reasons": dict(reasons.most_common(10)),
        "mean_score": {role: score for role, score in means.iter_rows()},
        "critic_accuracy": critic_summary(aggregated),
        "win_rate": win_rate_summary(aggregated, tasks),
        "adherence": adherence_summary(judgments),
        "judge_vs_checker": checker_agreement(judgments),
    }


def print_summary(summary: dict[str, Any]) -> None:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    console.print(
        f"judged {summary['responses']} responses, {summary['judgments']} items "
        f"({summary['null_scores']} without a score)"
    )
    for role, score in summary["mean_score"].items():
        console.print(f"  mean score ({role}): {fmt(score)}")
    if critic := summary["critic_accuracy"]:
        console.print(
            f"  critic accuracy over {critic['pairs']} pairs: strict {fmt(critic['strict'])}, "
            f"tie-tolerant {fmt(critic['tie_tolerant'])}"
        )
    if wins := summary["win_rate"]:
        overall = wins["overall"]
        console.print(
            f"  win rate vs reference (ties win): {fmt(overall['win_rate'])} "
            f"over {overall['pairs']} pairs"
        )
        for task, entry in wins["by_task"].items():
            console.print(f"    {task}: {fmt(entry['win_rate'])} over {entry['pairs']} pairs")
    if adherence := summary["adherence"]:
        console.print(f"  verifiable adherence: {fmt(adherence['rate'])} of {adherence['checked']}")
    if (agreement := summary["judge_vs_checker"]) and agreement["items"]:
        console.print(
            f"  judge (score >= 4) agrees with checker on {fmt(agreement['agreement'])} "
            f"of {agreement['items']} verifiable items"
        )
