"""Numbers about a run's generated pairs (lengths, finish reasons, diversity, PMI) and the
sample pairs the report shows, everything redacted."""

from __future__ import annotations

import math
import random
from typing import Any

import polars as pl

from mipo_engine.artifacts.manifest import redact
from mipo_engine.artifacts.schemas import ArtifactSchema
from mipo_engine.artifacts.store import read_artifact
from mipo_engine.errors import MipoError
from mipo_engine.report.data import Artifact, PairStats

MAX_DIVERSITY_TEXTS = 400
"""Responses per side that self-BLEU is computed on (a seeded subsample beyond that)."""
SAMPLE_TEXT_LIMIT = 1500
"""Characters of a sample response shown before it is cut."""


# --------------------------------------------------------------------------------------------
# Pairs: statistics and samples
# --------------------------------------------------------------------------------------------


def read_frame(artifact: Artifact | None, schema: ArtifactSchema, problems: list[str]) -> Any:
    """The validated frame of an artifact, or None (with a problem line) if unreadable."""
    if artifact is None or artifact.data_file is None:
        return None
    try:
        return read_artifact(artifact.data_file, schema)
    except MipoError as error:
        problems.append(str(error))
        return None


def _subsample(texts: list[str], limit: int, seed: int) -> list[str]:
    if len(texts) <= limit:
        return texts
    return random.Random(seed).sample(texts, limit)


def distinct_n(texts: list[str], n: int = 2) -> float | None:
    """Distinct-n: unique n-grams over all n-grams of a set of texts (Li et al. 2016).

    Tokenised like self-BLEU (``evaluation.diversity.tokenize``); None without any n-gram.
    """
    from mipo_engine.evaluation.diversity import tokenize

    total, unique = 0, set()
    for text in texts:
        tokens = tokenize(text)
        grams = list(zip(*(tokens[shift:] for shift in range(n)), strict=False))
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else None


def _finish_reasons(column: pl.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in column.value_counts(sort=True).iter_rows()}


def build_pair_stats(generations: Any, scores: Any, seed: int) -> PairStats:
    """Lengths, finish reasons, diversity (self-BLEU-4, distinct-2) and reference PMI."""
    from mipo_engine.evaluation.diversity import self_bleu

    bleu, distinct = {}, {}
    for side in ("chosen", "rejected"):
        texts = _subsample(generations[side].to_list(), MAX_DIVERSITY_TEXTS, seed)
        bleu[side] = self_bleu(texts, 4) if len(texts) >= 2 else None
        distinct[side] = distinct_n(texts, 2)
    stats = PairStats(
        pairs=generations.height,
        chosen_tokens=generations["chosen_tokens"].to_list(),
        rejected_tokens=generations["rejected_tokens"].to_list(),
        finish_reasons={
            side: _finish_reasons(generations[f"{side}_finish_reason"])
            for side in ("chosen", "rejected")
        },
        self_bleu=bleu,
        distinct_2=distinct,
    )
    if scores is not None:
        stats.pmi = [v for v in scores["pmi_chosen"].to_list() if finite_number(v)]
        margins = (scores["ref_chosen_logps"] - scores["ref_rejected_logps"]).to_list()
        stats.ref_margin = [v for v in margins if finite_number(v)]
    return stats


def finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _clip(text: Any) -> str:
    """Redacted text, cut at ``SAMPLE_TEXT_LIMIT`` with a note of how much was left out."""
    text = redact("" if text is None else str(text))
    if len(text) <= SAMPLE_TEXT_LIMIT:
        return text
    hidden = len(text) - SAMPLE_TEXT_LIMIT
    return f"{text[:SAMPLE_TEXT_LIMIT]}… [{hidden} more characters]"


def pick_samples(
    generations: Any,
    *,
    scores: Any = None,
    kept_ids: set[str] | None = None,
    judge_scores: dict[tuple[str, str], float] | None = None,
    count: int,
    seed: int,
) -> list[dict[str, Any]]:
    """``count`` pairs drawn with ``seed`` (in file order), with everything known about them."""
    if count <= 0 or generations.height == 0:
        return []
    chosen_rows = sorted(
        random.Random(seed).sample(range(generations.height), min(count, generations.height))
    )
    score_by_id = {}
    if scores is not None:
        score_by_id = {row["id"]: row for row in scores.to_dicts()}
    samples = []
    for index in chosen_rows:
        row = generations.row(index, named=True)
        score = score_by_id.get(row["id"], {})
        sample = {
            "id": redact(str(row["id"])),
            "prompt": _clip(row["prompt"]),
            "context": _clip(row["context"]) if row["context"] else "",
            "strategy": redact(str(row["strategy"])),
            "chosen": _clip(row["chosen"]),
            "rejected": _clip(row["rejected"]),
            "chosen_finish_reason": redact(str(row["chosen_finish_reason"])),
            "rejected_finish_reason": redact(str(row["rejected_finish_reason"])),
            "chosen_tokens": row["chosen_tokens"],
            "rejected_tokens": row["rejected_tokens"],
            "pmi": score.get("pmi_chosen"),
            "ref_chosen_logps": score.get("ref_chosen_logps"),
            "ref_rejected_logps": score.get("ref_rejected_logps"),
            "kept": None if kept_ids is None else row["id"] in kept_ids,
        }
        if judge_scores is not None:
            sample["judge_chosen"] = judge_scores.get((row["id"], "chosen"))
            sample["judge_rejected"] = judge_scores.get((row["id"], "rejected"))
        samples.append(sample)
    return samples


def exported_ids(artifact: Artifact | None, problems: list[str]) -> set[str] | None:
    if artifact is None or artifact.data_file is None:
        return None
    try:
        return set(pl.read_parquet(artifact.data_file, columns=["id"])["id"].to_list())
    except Exception as error:  # polars raises several types for corrupt or foreign files
        problems.append(f"{artifact.data_file.name}: cannot read ids ({error})")
        return None


def judge_scores_by_pair(
    artifacts: list[Artifact], problems: list[str]
) -> dict[tuple[str, str], float]:
    """Aggregated judge score per (pair id, role), from judgments of the generations."""
    from mipo_engine.artifacts.schemas import JUDGMENTS
    from mipo_engine.judging.summary import aggregate_judgments

    found: dict[tuple[str, str], float] = {}
    for artifact in artifacts:
        if artifact.stage != "judge":
            continue
        frame = read_frame(artifact, JUDGMENTS, problems)
        if frame is None:
            continue
        for row in aggregate_judgments(frame).iter_rows(named=True):
            if row["role"] in ("chosen", "rejected") and row["score"] is not None:
                found[(row["id"], row["role"])] = row["score"]
    return found
