"""Judge scores: read a 1-5 score out of an LLM judge's reply, and turn scores into metrics.

Personalization is judged with rubrics on a 1-5 scale; the scores of one response over its
rubric items are averaged, compared with a reference response's (win rate, ties count as wins),
and a judge itself is checked against known preferences with strict and tie-tolerant accuracy
(seed 004 sec. 5.4 and Table 6).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Iterable, Sequence
from typing import Literal

MIN_SCORE = 1
MAX_SCORE = 5

Score = float | int | None
"""One judge score: a number, or None when the judge gave no usable answer."""

# --------------------------------------------------------------------------------------------
# parse_score
# --------------------------------------------------------------------------------------------

# A number with an optional scale: "4", "4.5", "4/5", "4 out of 5". Digits are ASCII only (so
# other scripts' digits are not read as scores), and a number never starts or ends in the
# middle of another number ("14", "4.5" are not read as "4").
_NUMBER = (
    r"(?<![0-9.])(?P<num>[-+]?[0-9]+(?:\.[0-9]+)?)(?![0-9]|\.[0-9])"
    r"(?:\s*(?:/|out\s+of)\s*(?P<den>[0-9]+(?:\.[0-9]+)?)(?![0-9]|\.[0-9]))?"
)
# Whitespace plus the markdown emphasis and quotes judges wrap around labels and numbers. One
# character class per gap (never two adjacent starred groups) keeps matching linear-time.
_GAP = r"[\s*_`\"']*"

# Tier 1: explicit result markers.
_RESULT_MARKER = re.compile(r"\[\s*RESULT\s*\](?:\s*:)?" + _GAP + _NUMBER, re.I)
_DOUBLE_BRACKET = re.compile(r"\[\[\s*" + _NUMBER + r"\s*\]\]")
_JSON_SCORE = re.compile(
    r"[\"'](?:score|rating|result)[\"']\s*:\s*[\"']?(?P<raw>[^\"',}\s]*)", re.I
)

# Tier 2: a label, then a separator, then the number ("Score: 4", "**Rating:** 4 out of 5",
# "Final score = 4", "Score (1-5): 4", "The score is 4"). The separator must come *before*
# the number, so copied rubric headers such as "Score 5: The response ..." never match.
_LABEL = (
    r"(?<![a-z])(?:final\s+|overall\s+|total\s+)?(?:score|rating|grade|verdict|result)"
    r"(?:\s*\([^()\n]{0,20}\))?"
)
_LABELLED = re.compile(_LABEL + _GAP + r"(?::|=|\bis\b)" + _GAP + _NUMBER, re.I)

# Tier 3: loose forms.
_BARE = re.compile(r"^" + _NUMBER + r"$", re.I)
_FRACTION = re.compile(
    r"(?<![0-9.])(?P<num>[-+]?[0-9]+(?:\.[0-9]+)?)\s*(?:/|out\s+of)\s*"
    r"(?P<den>5|10|100)(?![0-9]|\.[0-9])",
    re.I,
)
_TRAILING_NUMBER = re.compile(_NUMBER + r"\W*$", re.I)
_SCORING_CUE = re.compile(
    r"\b(?:scor(?:e|es|ed|ing)|rat(?:e|es|ed|ing)|grad(?:e|es|ed|ing)|giv(?:e|es|ing)|gave"
    r"|award|assign|deserv|verdict|result|mark(?:s|ed)?\b)",
    re.I,
)
# "3 or 4", "3-4", "between 3 and 4": a hedge, not an answer.
_HEDGE_AFTER = re.compile(r"^\s*(?:or|to|and|-|–|~)\s*[0-9]", re.I)
_HEDGE_BEFORE = re.compile(r"[0-9]\s*(?:or|to|and|-|–|~)\s*$", re.I)
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")
_PLAIN_NUMBER = re.compile(r"[-+]?[0-9]+(?:\.[0-9]+)?")
# Longest number text worth converting; anything longer is out of range anyway and int() on a
# very long digit string can raise.
_MAX_NUMBER_CHARS = 12

_INVALID = object()
"""Stand-in for a found-but-unusable answer (0, 6, 4.5, 10/10), so it can conflict."""


def _score_value(num: str | None, den: str | None = None) -> int | object:
    """Convert a matched number (and optional scale) to a score, or ``_INVALID``.

    Integral values such as "4.0" count as 4; anything outside 1..5, fractional, or on a
    scale other than 5 ("8/10") is invalid.
    """
    if num is None or len(num) > _MAX_NUMBER_CHARS or not _PLAIN_NUMBER.fullmatch(num):
        return _INVALID
    if den is not None and (len(den) > _MAX_NUMBER_CHARS or float(den) != MAX_SCORE):
        return _INVALID
    value = float(num)
    if not value.is_integer() or not MIN_SCORE <= value <= MAX_SCORE:
        return _INVALID
    return int(value)


def _is_hedged(text: str, match: re.Match[str]) -> bool:
    """True when the number is one end of a range or alternative ("3 or 4", "3-4")."""
    before = text[max(0, match.start("num") - 8) : match.start("num")]
    after = text[match.end() : match.end() + 8]
    return bool(_HEDGE_AFTER.match(after) or _HEDGE_BEFORE.search(before))


def _candidates(pattern: re.Pattern[str], text: str) -> list[int | object]:
    """All scores a number-bearing pattern finds in ``text`` (hedged ones are invalid)."""
    found: list[int | object] = []
    for match in pattern.finditer(text):
        if _is_hedged(text, match):
            found.append(_INVALID)
        else:
            found.append(_score_value(match.group("num"), match.group("den")))
    return found


def _json_candidates(text: str) -> list[int | object]:
    """Scores from JSON-style ``"score": 4`` fields (values that are not 1..5 are invalid)."""
    return [_score_value(match.group("raw")) for match in _JSON_SCORE.finditer(text)]


def _undecorate(line: str) -> str:
    """Strip markdown emphasis, quotes, headings and end punctuation around a short answer."""
    return line.strip().strip("*_`\"'#>").strip().rstrip(".!").strip("*_`\"' ")


def _bare_line_candidates(text: str) -> list[int | object]:
    """Scores from a first or last line that holds nothing but a number ("4", "**4/5**")."""
    lines = [line for line in text.splitlines() if line.strip()]
    ends = {0, len(lines) - 1} if lines else set()
    return [
        value for index in sorted(ends) for value in _candidates(_BARE, _undecorate(lines[index]))
    ]


def _trailing_candidates(text: str) -> list[int | object]:
    """Score from a number that ends the reply after a scoring word ("... I give it a 4.")."""
    match = _TRAILING_NUMBER.search(text)
    if match is None:
        return []
    sentence_starts = [end.end() for end in _SENTENCE_END.finditer(text, 0, match.start())]
    last_sentence = text[sentence_starts[-1] if sentence_starts else 0 : match.start()]
    if not _SCORING_CUE.search(last_sentence):
        return []
    if _is_hedged(text, match):
        return [_INVALID]
    return [_score_value(match.group("num"), match.group("den"))]


def _decide(candidates: list[int | object]) -> int | None:
    """The one score all candidates agree on; None when they disagree or it is invalid."""
    distinct = set(candidates)
    if len(distinct) != 1:
        return None
    (value,) = distinct
    return value if isinstance(value, int) else None


def _explicit_candidates(text: str) -> list[int | object]:
    """Tier 1: ``[RESULT] N``, ``[[N]]`` and JSON score fields."""
    return (
        _candidates(_RESULT_MARKER, text)
        + _candidates(_DOUBLE_BRACKET, text)
        + _json_candidates(text)
    )


def _labelled_candidates(text: str) -> list[int | object]:
    """Tier 2: "Score: N" and its variants."""
    return _candidates(_LABELLED, text)


def _loose_candidates(text: str) -> list[int | object]:
    """Tier 3: bare first/last line, N/5 anywhere, trailing number after a scoring word."""
    return _bare_line_candidates(text) + _candidates(_FRACTION, text) + _trailing_candidates(text)


_TIERS = (_explicit_candidates, _labelled_candidates, _loose_candidates)


def parse_score(text: str) -> int | None:
    """Read a 1-5 judge score from ``text``; None when there is no single valid answer.

    Precedence (the first tier that finds anything decides, later tiers are not consulted):

    1. Explicit result markers: ``[RESULT] 4`` (Prometheus), ``[[4]]`` (MT-Bench) and JSON
       fields ``"score"``/``"rating"``/``"result"``.
    2. Labelled answers: a label (score, rating, grade, verdict, result, optionally "final",
       "overall", "total") followed by ``:``, ``=`` or "is" and the number: ``Score: 4``,
       ``**Score:** 4``, ``Rating: 4 out of 5``. The separator must precede the number, so a
       copied rubric header ("Score 5: The response fully ...") is not an answer.
    3. Loose forms: a first or last line that is only a number (``4``, ``**4**``, ``4/5``);
       ``N/5`` or ``N out of 5`` anywhere; a number ending the reply whose last sentence
       has a scoring word ("... so I give it a 4.").

    Within the deciding tier every candidate must agree: two different answers ("Score: 3"
    then "Score: 4"), a hedge ("3 or 4", "3-4"), or any unusable value (0, 6, 4.5, 10/10,
    8/10) gives None rather than a guess. Empty text, and text with no answer at all (e.g.
    only quoted rubric lines), give None. Never raises.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    for find_candidates in _TIERS:
        candidates = find_candidates(text)
        if candidates:
            return _decide(candidates)
    return None


# --------------------------------------------------------------------------------------------
# Metrics over scores
# --------------------------------------------------------------------------------------------


def _is_missing(score: Score) -> bool:
    """None and NaN both mean "no usable score" (NaN is how a null float often arrives)."""
    return score is None or (isinstance(score, float) and math.isnan(score))


def _check_number(score: Score, what: str, index: int) -> None:
    """Reject values that are not numbers (a string score is a caller bug, not a 'missing')."""
    if _is_missing(score):
        return
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ValueError(
            f"{what}[{index}] is {score!r} ({type(score).__name__}); scores must be numbers "
            "or None (parse judge replies with parse_score first)"
        )


def _check_pairs(
    left: Sequence[Score], right: Sequence[Score], left_name: str, right_name: str
) -> None:
    """Same length, numbers or None only."""
    if len(left) != len(right):
        raise ValueError(
            f"{left_name} has {len(left)} items but {right_name} has {len(right)}; "
            "pass one score per item to each"
        )
    for index, (a, b) in enumerate(zip(left, right, strict=True)):
        _check_number(a, left_name, index)
        _check_number(b, right_name, index)


def win_rate(scores: Sequence[Score], reference_scores: Sequence[Score]) -> float:
    """Fraction of items where a response scores at least as high as the reference response.

    Seed 004 sec. 5.4: win rates *including ties* against ground-truth chosen (or GPT-4o)
    responses, computed on aggregated rubric scores. Item ``i`` is a win when
    ``scores[i] >= reference_scores[i]``. Items where either score is None (or NaN) are left
    out of both numerator and denominator: a judge failure says nothing about either response.

    Returns a fraction in [0, 1]. Raises ValueError when the lengths differ, a score is not a
    number, or no item has both scores.
    """
    _check_pairs(scores, reference_scores, "scores", "reference_scores")
    comparable = [
        (score, reference)
        for score, reference in zip(scores, reference_scores, strict=True)
        if not _is_missing(score) and not _is_missing(reference)
    ]
    if not comparable:
        raise ValueError(
            f"no item has both a score and a reference score (of {len(scores)} items); "
            "check that the judge replies were parsed"
        )
    wins = sum(score >= reference for score, reference in comparable)
    return wins / len(comparable)


def critic_accuracy(
    chosen_scores: Sequence[Score],
    rejected_scores: Sequence[Score],
    *,
    missing: Literal["incorrect", "exclude"] = "incorrect",
) -> tuple[float, float]:
    """Strict and tie-tolerant accuracy of a judge on pairs with known preferences.

    Seed 004 Table 6: a pair counts for *strict* accuracy when the judge scores the chosen
    response higher than the rejected one (chosen > rejected), and for *tie-tolerant*
    accuracy when it scores it at least as high (chosen >= rejected).

    ``missing`` says what a pair with a None (or NaN) score counts as. ``"incorrect"``
    (default): wrong on both metrics, because here the judge is what is being evaluated and an
    unusable reply is its failure. ``"exclude"``: left out of the denominator.

    Returns ``(strict, tie_tolerant)`` as fractions in [0, 1]. Raises ValueError when the
    lengths differ, a score is not a number, ``missing`` is unknown, or no pair counts.
    """
    if missing not in ("incorrect", "exclude"):
        raise ValueError(f"missing must be 'incorrect' or 'exclude', got {missing!r}")
    _check_pairs(chosen_scores, rejected_scores, "chosen_scores", "rejected_scores")
    strict = tolerant = counted = 0
    for chosen, rejected in zip(chosen_scores, rejected_scores, strict=True):
        if _is_missing(chosen) or _is_missing(rejected):
            counted += missing == "incorrect"
            continue
        counted += 1
        strict += chosen > rejected
        tolerant += chosen >= rejected
    if counted == 0:
        raise ValueError(
            f"no pair can be counted (of {len(chosen_scores)} pairs, all have a missing score "
            "and missing='exclude'); check that the judge replies were parsed"
        )
    return strict / counted, tolerant / counted


def aggregate_scores(item_scores: Iterable[Score]) -> float | None:
    """Mean of one response's rubric-item scores, skipping None/NaN; None when all are missing.

    Seed 004 App. C.2: the judge is run once per rubric item and the item scores are
    aggregated into the response's score.
    """
    present: list[float] = []
    for index, score in enumerate(item_scores):
        _check_number(score, "item_scores", index)
        if not _is_missing(score):
            present.append(float(score))
    if not present:
        return None
    return sum(present) / len(present)


def aggregate_by_response(
    response_ids: Sequence[Hashable], item_scores: Sequence[Score]
) -> dict[Hashable, float | None]:
    """``aggregate_scores`` per response, for rows of (response id, rubric-item score).

    Keys keep the order in which responses first appear.
    """
    if len(response_ids) != len(item_scores):
        raise ValueError(
            f"response_ids has {len(response_ids)} items but item_scores has "
            f"{len(item_scores)}; pass one response id per item score"
        )
    grouped: dict[Hashable, list[Score]] = {}
    for response_id, score in zip(response_ids, item_scores, strict=True):
        grouped.setdefault(response_id, []).append(score)
    return {response_id: aggregate_scores(scores) for response_id, scores in grouped.items()}
