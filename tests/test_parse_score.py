"""parse_score on realistic judge replies, adversarial ones, and fuzzed strings.

Expected values are read off each reply by a person: the number the judge clearly committed to,
or None when there is no single valid 1-5 answer.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mipo_engine.judging.scores import parse_score

PROMETHEUS_FEEDBACK = (
    "Feedback: The response addresses the user's wish for brevity, keeping to three short "
    "sentences, but it drops the concrete example the user asked for. According to the "
    "rubric, a score of 5 requires both, so this is closer to the middle of the scale. "
    "[RESULT] 3"
)
QUOTED_RUBRIC = (
    "Score 1: The response ignores the user's preference for concise answers.\n"
    "Score 2: The response is mostly verbose with occasional concise parts.\n"
    "Score 3: The response is partly concise.\n"
    "Score 4: The response is concise with minor lapses.\n"
    "Score 5: The response fully follows the preference for concise answers."
)

CASES: list[tuple[str, int | None]] = [
    # Plain and labelled answers.
    ("4", 4),
    ("1", 1),
    ("5\n", 5),
    ("  3  ", 3),
    ("4.", 4),
    ("Score: 4", 4),
    ("score:4", 4),
    ("SCORE: 2", 2),
    ("Score = 5", 5),
    ("Final score: 2", 2),
    ("Overall rating: 5", 5),
    ("Score (1-5): 4", 4),
    ("The score is 2.", 2),
    ("Rating: 4 out of 5", 4),
    ("Rating: 4/5.", 4),
    ("Verdict: 1", 1),
    # Markdown and punctuation around the answer.
    ("**Score:** 4", 4),
    ("**Score: 4**", 4),
    ("Score: **3**", 3),
    ("**4**", 4),
    ("## 5", 5),
    ("Score: 4!", 4),
    ("`3`", 3),
    # Fractions and explicit markers.
    ("4/5", 4),
    ("4 out of 5", 4),
    ("[RESULT] 4", 4),
    ("[RESULT]: 2", 2),
    ("[RESULT] 5/5", 5),
    (PROMETHEUS_FEEDBACK, 3),
    ("Rating: [[4]]", 4),
    ('{"score": 4}', 4),
    ('{"score": "5", "reason": "covers every preference"}', 5),
    ('```json\n{"rating": 2}\n```', 2),
    ("{'score': 3}", 3),
    ('{"score": 4.0}', 4),
    # Numbers that end a line of reasoning.
    ("The reply is short and direct, so I give it a 4.", 4),
    ("It follows the tone preference but ignores the length limit. I would rate it 3", 3),
    ("Clear and well organised; it deserves a 5!", 5),
    ("4\n\nThe response keeps to the requested format and stays brief.", 4),
    ("Looking at the rubric, this matches the level-4 description.\n\n4", 4),
    # A marker outranks loose numbers elsewhere in the reply.
    ("Score 5 would need examples, and there are none.\n[RESULT] 3", 3),
    (QUOTED_RUBRIC + "\n\nScore: 4", 4),
    ("score: 4\n[RESULT] 2", 2),
    # Out of range or not whole numbers.
    ("0", None),
    ("6", None),
    ("4.5", None),
    ("Score: 4.5", None),
    ("[RESULT] 0", None),
    ("[RESULT] 6", None),
    ("Score: -1", None),
    ("10/10", None),
    ("I rate it 8/10.", None),
    ('{"score": 7}', None),
    ('{"score": null}', None),
    ("Score: 40", None),
    # Empty, missing or conflicting answers.
    ("", None),
    ("   \n\t", None),
    ("The response is fine.", None),
    ("Score: 3\n\nOn reflection, Score: 4", None),
    ("[RESULT] 3\n[RESULT] 5", None),
    ("I'd give it a 3 or 4.", None),
    ("Score: 3-4", None),
    ("3\n\nActually, maybe 5/5 is fairer.", None),
    ("The response covers points 1, 2 and 3", None),
    (QUOTED_RUBRIC, None),
    ("Score 5: The response fully addresses the user's preference.", None),
    ("Score 4: mostly good.\nScore 5: perfect.", None),
    # Digits from other scripts are not scores.
    ("\u0664", None),
]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(("reply", "expected"), CASES)
def test_parse_score_table(reply: str, expected: int | None) -> None:
    assert parse_score(reply) == expected


def test_non_string_input_gives_none() -> None:
    assert parse_score(None) is None  # type: ignore[arg-type]
    assert parse_score(4) is None  # type: ignore[arg-type]


def test_huge_numbers_do_not_raise() -> None:
    assert parse_score("9" * 10_000) is None
    assert parse_score("Score: " + "1" * 10_000) is None
    assert parse_score('{"score": ' + "2" * 10_000 + "}") is None


FRAGMENTS = [
    "Score",
    "score",
    "Score:",
    "[RESULT]",
    "[[",
    "]]",
    "/5",
    "/10",
    " out of 5",
    "**",
    ":",
    " ",
    "\n",
    ".",
    "-",
    " or ",
    "{",
    "}",
    '"score": ',
    "'",
    "give it a ",
    "Rating",
    "is ",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "4.5",
    "10",
    "\u0664",
]


def _check_contract(text: str) -> None:
    result = parse_score(text)
    assert result is None or (type(result) is int and 1 <= result <= 5)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_fuzz_any_text(text: str) -> None:
    _check_contract(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join))
def test_fuzz_judge_like_fragments(text: str) -> None:
    _check_contract(text)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-100, max_value=100))
def test_labelled_integer_is_kept_only_in_range(value: int) -> None:
    expected = value if 1 <= value <= 5 else None
    assert parse_score(f"Score: {value}") == expected
    assert parse_score(f"Some feedback.\n[RESULT] {value}") == expected


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=5))
def test_two_labelled_answers_agree_or_give_none(first: int, second: int) -> None:
    expected = first if first == second else None
    assert parse_score(f"Score: {first}\nFinal score: {second}") == expected


@pytest.mark.parametrize(
    "text",
    [
        "**" * 50_000,
        "[RESULT]" + " " * 100_000,
        "Score" + " " * 100_000 + "x",
        "1 " * 50_000,
        "1/" * 50_000,
        "4 or " * 20_000,
    ],
    ids=["stars", "result-spaces", "label-spaces", "numbers", "slashes", "hedges"],
)
def test_long_adversarial_text_is_parsed_quickly(text: str) -> None:
    """Regression guard against regex backtracking blow-ups (each took minutes when it hit)."""
    start = time.perf_counter()
    parse_score(text)
    assert time.perf_counter() - start < 5.0
