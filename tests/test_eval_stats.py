"""Self-BLEU, answer entropy and bootstrap intervals against hand-worked numbers and sacrebleu."""

from __future__ import annotations

import math
import random

import pytest
import sacrebleu

from mipo_engine.evaluation import (
    answer_entropy,
    bootstrap_ci,
    letter_probabilities,
    paired_win_rate_ci,
    self_bleu,
    self_bleu_scores,
    win_values,
)
from mipo_engine.evaluation.diversity import tokenize

# --------------------------------------------------------------------------------------------
# self-BLEU


def test_identical_texts_score_one_and_disjoint_texts_zero() -> None:
    assert self_bleu(["the cat sat on the mat ."] * 3) == pytest.approx(1.0)
    assert self_bleu(["alpha beta gamma delta", "one two three four", "red green blue"]) == 0.0


def test_self_bleu_two_texts_by_hand() -> None:
    """ "the cat sat" vs "the cat ran", each the other's only reference, equal lengths (BP = 1).

    unigrams: the, cat match, sat/ran do not -> 2/3; bigrams: "the cat" matches -> 1/2.
    BLEU-2 = sqrt(2/3 * 1/2) = sqrt(1/3) = 0.57735 for both texts.
    BLEU-4: trigram precision 0/1 floored to 0.1/1; no 4-grams in a 3-token text, so order 4
    is left out: (2/3 * 1/2 * 0.1) ** (1/3) = (1/30) ** (1/3) = 0.32183.
    """
    texts = ["the cat sat", "the cat ran"]
    assert self_bleu(texts, n=2) == pytest.approx(math.sqrt(1 / 3))
    assert self_bleu(texts, n=4) == pytest.approx((1 / 30) ** (1 / 3))


def test_self_bleu_brevity_penalty_by_hand() -> None:
    """BLEU-1 of "a b c d" vs "a b": precision 2/4, hypothesis longer so BP = 1 -> 0.5.

    "a b" vs "a b c d": precision 2/2, BP = exp(1 - 4/2) = exp(-1) -> 0.36788.
    Mean = (0.5 + exp(-1)) / 2 = 0.43394.
    """
    assert self_bleu_scores(["a b c d", "a b"], n=1) == pytest.approx([0.5, math.exp(-1)])
    assert self_bleu(["a b c d", "a b"], n=1) == pytest.approx((0.5 + math.exp(-1)) / 2)


def test_self_bleu_clips_counts_by_hand() -> None:
    """ "the the the" vs "the cat": "the" occurs once in the reference, so 1/3 (BP = 1).

    "the cat" vs "the the the": 1/2, BP = exp(1 - 3/2) = exp(-0.5) -> 0.30327.
    """
    scores = self_bleu_scores(["the the the", "the cat"], n=1)
    assert scores == pytest.approx([1 / 3, 0.5 * math.exp(-0.5)])


def test_self_bleu_clip_uses_best_single_reference() -> None:
    """ "a a b" against {"a a", "b"}: "a" clipped at 2 (from "a a"), "b" at 1 -> 3/3.

    Closest reference length to 3 is 2, shorter than the hypothesis, so BP = 1 -> 1.0.
    """
    assert self_bleu_scores(["a a b", "a a", "b"], n=1)[0] == pytest.approx(1.0)


def test_tokenize_splits_words_and_punctuation() -> None:
    assert tokenize("Hello, world! It's 3.5") == [
        "Hello",
        ",",
        "world",
        "!",
        "It",
        "'",
        "s",
        "3",
        ".",
        "5",
    ]


def test_self_bleu_matches_sacrebleu_on_random_sets() -> None:
    """Each text against the others with sacrebleu's floor smoothing and effective order."""
    rng = random.Random(0)
    vocabulary = [
        "the",
        "a",
        "cat",
        "dog",
        "sat",
        "on",
        "mat",
        ",",
        ".",
        "ran",
        "quickly",
        "slowly",
        "big",
        "red",
    ]
    for _ in range(60):
        texts = [
            " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 14)))
            for _ in range(rng.randint(2, 6))
        ]
        tokenized = [" ".join(tokenize(text)) for text in texts]
        expected = [
            sacrebleu.sentence_bleu(
                hypothesis,
                tokenized[:index] + tokenized[index + 1 :],
                smooth_method="floor",
                smooth_value=0.1,
                tokenize="none",
                use_effective_order=True,
            ).score
            / 100
            for index, hypothesis in enumerate(tokenized)
        ]
        assert self_bleu_scores(texts) == pytest.approx(expected, abs=1e-12)


def test_more_repetitive_sets_score_higher() -> None:
    similar = ["I like short answers about cats .", "I like short answers about dogs ."]
    different = ["I like short answers about cats .", "Please write long essays on history ."]
    assert self_bleu(similar) > self_bleu(different)


@pytest.mark.parametrize(
    ("texts", "n", "message"),
    [
        (["only one"], 4, "at least 2 texts"),
        ("a single string", 4, "not a single string"),
        (["a", "b"], 0, "positive integer"),
        (["a", 3], 4, "expected str"),
    ],
)
def test_self_bleu_rejects_bad_input(texts: object, n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        self_bleu(texts, n=n)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# answer entropy


def test_answer_entropy_hand_values() -> None:
    """Uniform over 4 -> ln 4; two equal -> ln 2; one-hot -> 0.

    (0.7, 0.2, 0.1): -(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1)
    = 0.24967 + 0.32189 + 0.23026 = 0.80182.
    """
    assert answer_entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert answer_entropy([0.5, 0.5, 0.0, 0.0]) == pytest.approx(math.log(2))
    assert answer_entropy([0.0, 1.0, 0.0]) == 0.0
    assert answer_entropy([0.7, 0.2, 0.1]) == pytest.approx(0.8018186, abs=1e-6)


def test_answer_entropy_renormalises_letter_probabilities() -> None:
    """Letter probabilities from a full vocabulary sum below 1: (0.2, 0.2) is uniform -> ln 2."""
    assert answer_entropy([0.2, 0.2]) == pytest.approx(math.log(2))
    assert answer_entropy({"A": 0.07, "B": 0.02, "C": 0.01}) == pytest.approx(0.8018186, abs=1e-6)


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        ([], "non-empty"),
        ([0.5, -0.1], "non-negative"),
        ([0.0, 0.0], "sum to 0"),
        ([0.5, math.nan], "finite"),
    ],
)
def test_answer_entropy_rejects_bad_input(probs: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        answer_entropy(probs)


def test_letter_probabilities_softmax_is_stable_for_very_negative_logprobs() -> None:
    """log-probs -1e4 and -1e4 - ln 3 differ by ln 3, so the letters get 3/4 and 1/4."""
    probabilities = letter_probabilities({"A": -1e4, "B": -1e4 - math.log(3), "C": -math.inf})
    assert probabilities == pytest.approx({"A": 0.75, "B": 0.25, "C": 0.0})
    with pytest.raises(ValueError, match="-inf"):
        letter_probabilities({"A": -math.inf, "B": -math.inf})


# --------------------------------------------------------------------------------------------
# bootstrap intervals


def test_bootstrap_ci_brackets_mean_and_is_reproducible() -> None:
    values = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
    mean, low, high = bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(0.7)
    assert low <= mean <= high
    assert low < high
    assert bootstrap_ci(values, seed=3) == (mean, low, high)


def test_bootstrap_ci_width_matches_normal_approximation() -> None:
    """400 coin flips with mean 0.5: standard error 0.5 / sqrt(400) = 0.025, so a 95 %
    interval has half-width about 1.96 * 0.025 = 0.049."""
    values = [1.0, 0.0] * 200
    mean, low, high = bootstrap_ci(values, n_resamples=4000, seed=0)
    assert mean == 0.5
    assert (high - low) / 2 == pytest.approx(0.049, rel=0.12)
    assert (mean - low) == pytest.approx(high - mean, abs=0.01)


def test_bootstrap_ci_of_constant_values_is_a_point() -> None:
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": []}, "non-empty"),
        ({"values": [1.0, math.inf]}, "finite"),
        ({"values": [1.0], "confidence": 1.0}, "strictly between 0 and 1"),
        ({"values": [1.0], "n_resamples": 0}, "positive integer"),
    ],
)
def test_bootstrap_ci_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)


def test_win_values_and_paired_win_rate() -> None:
    """Scores (5, 3, 4) against (4, 3, 5): a win, a tie, a loss -> 0.5 with half-credit ties,
    2/3 when ties count as wins, 1/3 when only strict wins count."""
    ours, theirs = [5, 3, 4], [4, 3, 5]
    assert win_values(ours, theirs) == [1.0, 0.5, 0.0]
    assert paired_win_rate_ci(ours, theirs)[0] == pytest.approx(0.5)
    assert paired_win_rate_ci(ours, theirs, tie_credit=1.0)[0] == pytest.approx(2 / 3)
    assert paired_win_rate_ci(ours, theirs, tie_credit=0.0)[0] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="one baseline score per item"):
        win_values([1, 2], [1])
