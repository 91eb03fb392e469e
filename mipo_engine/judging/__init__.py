"""Judging: read judge scores, turn them into metrics, check verifiable items, load rubrics.

The stages that call a judge model live in ``mipo_engine.stages`` (``contexts``, ``rubrics``,
``judge``); this package holds the model-free pieces they share.
"""

from mipo_engine.judging.constraints import check_constraint, constraint_adherence, constraint_type
from mipo_engine.judging.rubric_sets import load_rubric_set
from mipo_engine.judging.scores import aggregate_scores, critic_accuracy, parse_score, win_rate

__all__ = [
    "aggregate_scores",
    "check_constraint",
    "constraint_adherence",
    "constraint_type",
    "critic_accuracy",
    "load_rubric_set",
    "parse_score",
    "win_rate",
]
