"""Self-BLEU, the output-diversity measure of seed 004 (sec. 6 R2, Tables 3-4).

Self-BLEU (Zhu et al. 2018, "Texygen") scores each generated text with BLEU against all the
*other* texts of the same set as references and averages over texts. Texts that repeat each
other's n-grams score high; a diverse set scores low. Seed 004 reports it on a 0-1 scale
(e.g. 0.420 -> 0.393 after MIPO), and so does this module.

Choices, all documented so that numbers can be compared across runs:

- **Tokenisation**: words (``\\w+``) and single punctuation marks, case kept. This is close
  to the NLTK word tokenizer used by Texygen without needing NLTK's data files.
- **BLEU-n** (Papineni et al. 2002): uniform weights ``1/n`` over orders 1..n; clipped n-gram
  counts, where the clip is the largest count of that n-gram in any single reference;
  brevity penalty against the reference length closest to the hypothesis length (ties go to
  the shorter reference).
- **Smoothing**: an order with no matching n-gram gets precision ``0.1 / (number of
  hypothesis n-grams)``: Chen & Cherry's (2014) method 1, the same as NLTK's
  ``SmoothingFunction().method1`` that Texygen uses and sacrebleu's ``smooth_method="floor"``.
  A text without a single matching unigram scores 0.
- **Short texts**: orders for which the hypothesis has no n-gram at all (a text shorter than
  n tokens) are left out of the geometric mean, like sacrebleu's sentence-level
  ``effective_order``; otherwise every short text would score near 0.

With this tokenisation, ``sacrebleu.sentence_bleu(hyp, refs, smooth_method="floor",
smooth_value=0.1, tokenize="none", use_effective_order=True).score / 100`` on the
space-joined tokens gives the same per-text value; the tests check that.

The implementation is linear in the total number of n-grams: for every n-gram it keeps the
largest and second-largest count over all texts, which gives the clip for "all texts but i"
without building a reference set per text.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")

_FLOOR_SMOOTHING = 0.1


def tokenize(text: str) -> list[str]:
    """Split text into words and single punctuation marks, keeping case."""
    return _TOKEN.findall(text)


def ngram_counts(tokens: Sequence[str], max_order: int) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of orders 1..max_order."""
    counts: Counter[tuple[str, ...]] = Counter()
    for order in range(1, max_order + 1):
        # zip of the list shifted by 0..order-1 yields each n-gram of this order once.
        counts.update(zip(*(tokens[shift:] for shift in range(order)), strict=False))
    return counts


def _top_two_counts(
    counts_per_text: Sequence[Counter[tuple[str, ...]]],
) -> dict[tuple[str, ...], list[int]]:
    """For every n-gram: [largest count, index of the text with it, second-largest count].

    The largest count among all texts but ``i`` is then the second-largest when ``i`` holds
    the largest, else the largest: the clip of BLEU's modified precision (ties make the two
    counts equal, so either text may be recorded as the holder).
    """
    top: dict[tuple[str, ...], list[int]] = {}
    for text_index, counts in enumerate(counts_per_text):
        for ngram, count in counts.items():
            entry = top.get(ngram)
            if entry is None:
                top[ngram] = [count, text_index, 0]
            elif count > entry[0]:
                entry[2], entry[0], entry[1] = entry[0], count, text_index
            elif count > entry[2]:
                entry[2] = count
    return top


def _closest_other_length(sorted_lengths: list[int], own_length: int) -> int:
    """Reference length closest to ``own_length`` among the other texts (ties: shorter).

    ``sorted_lengths`` holds every text's length, including one copy of ``own_length``.
    """
    left = bisect.bisect_left(sorted_lengths, own_length)
    right = bisect.bisect_right(sorted_lengths, own_length)
    if right - left >= 2:  # another text has exactly this length
        return own_length
    neighbours = []
    if left > 0:
        neighbours.append(sorted_lengths[left - 1])  # longest text shorter than this one
    if right < len(sorted_lengths):
        neighbours.append(sorted_lengths[right])  # shortest text longer than this one
    return min(neighbours, key=lambda length: (abs(length - own_length), length))


def _bleu_from_statistics(
    matches: list[int], totals: list[int], hypothesis_length: int, reference_length: int
) -> float:
    """Smoothed sentence BLEU on a 0-1 scale from per-order match and total counts."""
    if hypothesis_length == 0 or matches[0] == 0:
        return 0.0
    log_precisions = []
    for matched, total in zip(matches, totals, strict=True):
        if total == 0:  # the text is shorter than this order: leave the order out
            break
        numerator = matched if matched > 0 else _FLOOR_SMOOTHING
        log_precisions.append(math.log(numerator / total))
    brevity = 1.0
    if hypothesis_length < reference_length:
        brevity = math.exp(1.0 - reference_length / hypothesis_length)
    return brevity * math.exp(sum(log_precisions) / len(log_precisions))


def self_bleu_scores(texts: Sequence[str], n: int = 4) -> list[float]:
    """BLEU-n of each text against all the other texts as references (0-1 scale).

    See the module docstring for tokenisation, smoothing and short-text handling.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer (the BLEU order, 4 for BLEU-4), got {n!r}")
    if len(texts) < 2:
        raise ValueError(
            f"self-BLEU needs at least 2 texts (each is scored against the others), got {len(texts)}"
        )
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{index}] is {type(text).__name__}, expected str")

    token_lists = [tokenize(text) for text in texts]
    counts_per_text = [ngram_counts(tokens, n) for tokens in token_lists]
    top_two = _top_two_counts(counts_per_text)
    sorted_lengths = sorted(len(tokens) for tokens in token_lists)

    scores = []
    for text_index, counts in enumerate(counts_per_text):
        matches, totals = [0] * n, [0] * n
        for ngram, count in counts.items():
            best, holder, second = top_two[ngram]
            clip = second if holder == text_index else best
            order = len(ngram) - 1
            totals[order] += count
            matches[order] += min(count, clip)
        length = len(token_lists[text_index])
        reference_length = _closest_other_length(sorted_lengths, length)
        scores.append(_bleu_from_statistics(matches, totals, length, reference_length))
    return scores


def self_bleu(texts: Sequence[str], n: int = 4) -> float:
    """Self-BLEU-n of a set of texts: mean BLEU-n of each text against the others (0-1).

    Seed 004 Tables 3-4 report self-BLEU-4 (``n=4``) over a model's generations for a task;
    lower means more diverse. Identical texts give 1.0; texts sharing no word give 0.0.
    """
    scores = self_bleu_scores(texts, n)
    return sum(scores) / len(scores)
