"""win_rate, critic_accuracy and score aggregation against hand-worked numbers."""

from __future__ import annotations

import math

import pytest

from mipo_engine.judging.scores import (
    aggregate_by_response,
    aggregate_scores,
    critic_accuracy,
    win_rate,
)

# --------------------------------------------------------------------------------------------
# win_rate
# --------------------------------------------------------------------------------------------


def test_win_rate_counts_ties_as_wins() -> None:
    """Items: (5 vs 3) win, (2 vs 4) loss, (3 vs 3) tie -> win, (1 vs 2) loss.

    Wins = 2 of 4 -> 0.5.
    """
    assert win_rate([5, 2, 3, 1], [3, 4, 3, 2]) == pytest.approx(0.5)


def test_win_rate_on_aggregated_float_scores() -> None:
    """(4.25 vs 4.0) win, (3.5 vs 3.75) loss, (4.0 vs 4.0) tie -> win: 2/3."""
    assert win_rate([4.25, 3.5, 4.0], [4.0, 3.75, 4.0]) == pytest.approx(2 / 3)


def test_win_rate_skips_items_with_a_missing_score() -> None:
    """Items 2 (None vs 5) and 4 (3 vs None) are left out; NaN counts as missing too.

    Remaining: (4 vs 4) tie -> win, (1 vs 3) loss, (5 vs 2) win -> 2/3.
    """
    scores = [4, None, 1, 3, 5, math.nan]
    reference = [4, 5, 3, None, 2, 1]
    assert win_rate(scores, reference) == pytest.approx(2 / 3)


def test_win_rate_all_losses_and_all_wins() -> None:
    assert win_rate([1, 1], [2, 5]) == 0.0
    assert win_rate([5, 5], [5, 1]) == 1.0


def test_win_rate_length_mismatch() -> None:
    with pytest.raises(ValueError, match="3 items but reference_scores has 2"):
        win_rate([1, 2, 3], [1, 2])


def test_win_rate_no_comparable_items() -> None:
    with pytest.raises(ValueError, match="no item has both"):
        win_rate([None, 3], [2, None])
    with pytest.raises(ValueError, match="no item has both"):
        win_rate([], [])


def test_win_rate_rejects_unparsed_text() -> None:
    with pytest.raises(ValueError, match=r"scores\[1\] is '4'"):
        win_rate([3, "4"], [2, 2])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------
# critic_accuracy
# --------------------------------------------------------------------------------------------


def test_critic_accuracy_strict_and_tie_tolerant() -> None:
    """Pairs (chosen, rejected): (5,3) right, (4,4) tie, (2,3) wrong, (3,1) right, (1,1) tie.

    Strict (chosen > rejected): 2 of 5 = 0.4. Tie-tolerant (>=): 2 + 2 ties = 4 of 5 = 0.8.
    """
    strict, tolerant = critic_accuracy([5, 4, 2, 3, 1], [3, 4, 3, 1, 1])
    assert strict == pytest.approx(0.4)
    assert tolerant == pytest.approx(0.8)


def test_critic_that_always_gives_the_same_score() -> None:
    """Seed 004 Table 6 discussion: a judge that scores everything 5 is 0 strict, 1 tolerant."""
    assert critic_accuracy([5, 5, 5], [5, 5, 5]) == (0.0, 1.0)


def test_critic_accuracy_missing_counts_as_incorrect_by_default() -> None:
    """Pairs: (5,2) right, (None,3) missing, (3,3) tie, (4,None) missing.

    Default: missing pairs stay in the denominator as wrong -> strict 1/4, tolerant 2/4.
    """
    chosen = [5, None, 3, 4]
    rejected = [2, 3, 3, None]
    assert critic_accuracy(chosen, rejected) == (pytest.approx(0.25), pytest.approx(0.5))


def test_critic_accuracy_missing_excluded_on_request() -> None:
    """Same pairs, missing ones dropped: (5,2) right, (3,3) tie -> strict 1/2, tolerant 2/2."""
    chosen = [5, None, 3, 4]
    rejected = [2, 3, 3, None]
    result = critic_accuracy(chosen, rejected, missing="exclude")
    assert result == (pytest.approx(0.5), pytest.approx(1.0))


def test_critic_accuracy_errors() -> None:
    with pytest.raises(ValueError, match="2 items but rejected_scores has 1"):
        critic_accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="missing must be"):
        critic_accuracy([1], [1], missing="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no pair can be counted"):
        critic_accuracy([None], [3], missing="exclude")
    with pytest.raises(ValueError, match="no pair can be counted"):
        critic_accuracy([], [])


def test_critic_accuracy_all_missing_with_default_is_zero() -> None:
    assert critic_accuracy([None, None], [1, 2]) == (0.0, 0.0)


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------


def test_aggregate_scores_mean_over_present_items() -> None:
    """(4 + 5 + 2) / 3 = 11/3; the None and NaN items are skipped."""
    assert aggregate_scores([4, None, 5, math.nan, 2]) == pytest.approx(11 / 3)


def test_aggregate_scores_all_missing_is_none() -> None:
    assert aggregate_scores([None, None]) is None
    assert aggregate_scores([]) is None


def test_aggregate_scores_rejects_non_numbers() -> None:
    with pytest.raises(ValueError, match=r"item_scores\[0\]"):
        aggregate_scores(["5"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"item_scores\[1\]"):
        aggregate_scores([3, True])


def test_aggregate_by_response_groups_rows() -> None:
    """Response a: (4 + 2) / 2 = 3.0; b: (5 + 4 + None) -> 4.5; c: only None -> None."""
    ids = ["a", "b", "a", "b", "c", "b"]
    scores = [4, 5, 2, 4, None, None]
    result = aggregate_by_response(ids, scores)
    assert list(result) == ["a", "b", "c"]
    assert result["a"] == pytest.approx(3.0)
    assert result["b"] == pytest.approx(4.5)
    assert result["c"] is None


def test_aggregate_by_response_length_mismatch() -> None:
    with pytest.raises(ValueError, match="one response id per item score"):
        aggregate_by_response(["a"], [1, 2])
