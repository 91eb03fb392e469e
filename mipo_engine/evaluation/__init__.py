"""Evaluation helpers: answer extraction, diversity and statistics (DESIGN.md section 5)."""

from mipo_engine.evaluation.diversity import self_bleu, self_bleu_scores
from mipo_engine.evaluation.extract import extract_choice, extract_number, numbers_equal
from mipo_engine.evaluation.stats import (
    answer_entropy,
    bootstrap_ci,
    letter_probabilities,
    paired_win_rate_ci,
    win_values,
)
from mipo_engine.numbers import canonical_number

__all__ = [
    "answer_entropy",
    "bootstrap_ci",
    "canonical_number",
    "extract_choice",
    "extract_number",
    "letter_probabilities",
    "numbers_equal",
    "paired_win_rate_ci",
    "self_bleu",
    "self_bleu_scores",
    "win_values",
]
