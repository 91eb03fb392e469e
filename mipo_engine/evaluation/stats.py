"""Small statistics for evaluation reports: answer entropy and bootstrap intervals.

``answer_entropy`` is the confidence measure of seed 004 Figs. 2-3: the entropy of the model's
next-token distribution over the answer letters, renormalised over those letters. Bootstrap
intervals put error bars on accuracies and win rates computed from a few hundred items, the
sample sizes seed 004 evaluates on (App. C.1: 200-500 items per benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _finite_values(values: Sequence[float], name: str) -> np.ndarray:
    """``values`` as a 1-D float array; ValueError if empty or not all finite."""
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers")
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{name}[{bad}] is {array[bad]}; every value must be finite")
    return array


def letter_probabilities(logprobs: Mapping[str, float]) -> dict[str, float]:
    """Softmax over the answer letters' next-token log-probs: P(letter | letter is next).

    Backends return log-probs of the letter tokens among the whole vocabulary; restricting to
    the letters and renormalising (a log-sum-exp, stable for log-probs down to -1e4) gives the
    distribution whose entropy seed 004 Figs. 2-3 plot. ``-inf`` means the letter has
    probability 0.
    """
    if not logprobs:
        raise ValueError("logprobs is empty; pass one log-prob per answer letter")
    values = np.asarray(list(logprobs.values()), dtype=float)
    if np.any(np.isnan(values)) or np.any(values == np.inf):
        raise ValueError(f"log-probs must be finite or -inf, got {dict(logprobs)}")
    top = values.max()
    if top == -np.inf:
        raise ValueError("every answer letter has log-prob -inf; the distribution is undefined")
    weights = np.exp(values - top)
    probabilities = weights / weights.sum()
    return dict(zip(logprobs.keys(), probabilities.tolist(), strict=True))


def answer_entropy(probs: Sequence[float] | Mapping[str, float]) -> float:
    """Entropy in nats of a distribution over answer letters, renormalised first.

    ``probs`` are probabilities (or any non-negative weights) of each answer letter, as a
    sequence or a ``{letter: probability}`` mapping. They are divided by their sum, because
    next-token probabilities restricted to the letters do not sum to 1. Zero entries
    contribute nothing (0 log 0 = 0). Uniform over 4 letters gives ln 4; a one-hot gives 0.
    """
    values = probs.values() if isinstance(probs, Mapping) else probs
    array = _finite_values(values, "probs")
    if np.any(array < 0):
        raise ValueError(f"probs must be non-negative, got {array.tolist()}")
    total = array.sum()
    if total <= 0:
        raise ValueError("probs sum to 0; at least one answer letter needs positive probability")
    normalised = array[array > 0] / total
    return float(-(normalised * np.log(normalised)).sum())


def _validate_bootstrap_settings(n_resamples: int, confidence: float) -> None:
    """Raise ValueError for settings that cannot give an interval."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(
            f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}"
        )


def bootstrap_ci(
    values: Sequence[float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile-bootstrap confidence interval: (mean, low, high).

    Resamples ``values`` with replacement ``n_resamples`` times (numpy's PCG64 generator
    seeded with ``seed``, so the interval is reproducible) and takes the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means.
    For accuracy pass 0/1 correctness values.
    """
    _validate_bootstrap_settings(n_resamples, confidence)
    array = _finite_values(values, "values")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, array.size, size=(n_resamples, array.size))
    resampled_means = array[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled_means, [tail, 1.0 - tail])
    mean = float(array.mean())
    # The percentile interval can miss the sample mean by rounding when all values are equal.
    return mean, min(float(low), mean), max(float(high), mean)


def win_values(
    scores: Sequence[float], baseline_scores: Sequence[float], *, tie_credit: float = 0.5
) -> list[float]:
    """Per-item outcome of ``scores`` against ``baseline_scores``: 1 win, ``tie_credit`` tie, 0.

    Seed 004 reports win rates "including ties" against reference responses (sec. 5.4); a
    tie counts as half a win by default. Set ``tie_credit=1.0`` to count ties as wins, or 0.0
    to count only strict wins.
    """
    if len(scores) != len(baseline_scores):
        raise ValueError(
            f"scores has {len(scores)} items but baseline_scores has {len(baseline_scores)}; "
            "pass one baseline score per item, in the same order"
        )
    if not 0.0 <= tie_credit <= 1.0:
        raise ValueError(f"tie_credit must lie in [0, 1], got {tie_credit}")
    ours = _finite_values(scores, "scores")
    theirs = _finite_values(baseline_scores, "baseline_scores")
    outcomes = np.where(ours > theirs, 1.0, np.where(ours == theirs, tie_credit, 0.0))
    return outcomes.tolist()


def paired_win_rate_ci(
    scores: Sequence[float],
    baseline_scores: Sequence[float],
    *,
    tie_credit: float = 0.5,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Win rate of ``scores`` over paired ``baseline_scores`` with a bootstrap interval.

    Items are resampled as pairs (the per-item outcomes of ``win_values``), which keeps the
    pairing that makes the comparison fair. Returns (win rate, low, high).
    """
    outcomes = win_values(scores, baseline_scores, tie_credit=tie_credit)
    return bootstrap_ci(outcomes, n_resamples=n_resamples, confidence=confidence, seed=seed)
