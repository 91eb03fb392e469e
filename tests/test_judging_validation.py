"""Validation of LLM JSON replies: inferred user contexts and generated rubrics."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mipo_engine.artifacts.schemas import RUBRIC_FIELDS
from mipo_engine.judging.constraints import count_sentences
from mipo_engine.judging.validation import (
    MAX_CONTEXT_VALUE_CHARS,
    parse_json_object,
    validate_rubric,
    validate_user_context,
)

GOOD_CONTEXT = {
    "response_length": "Keep replies short and lead with the main answer.",
    "tone": "  Use a warm, encouraging tone.  ",
    "examples": "Give one concrete example, e.g. a short scenario. Avoid long lists.",
}

GOOD_RUBRIC = {
    "criteria": "Does the reply use plain language?",
    "score1_description": "Full of jargon.",
    "score2_description": "Mostly jargon.",
    "score3_description": "Mixed.",
    "score4_description": "Mostly plain.",
    "score5_description": "Entirely plain and clear.",
}

# --------------------------------------------------------------------------------------------
# parse_json_object
# --------------------------------------------------------------------------------------------


def test_parse_bare_object() -> None:
    assert parse_json_object('{"a": "b"}') == {"a": "b"}


def test_parse_fenced_object() -> None:
    reply = 'Here you go:\n```json\n{"tone": "Be direct."}\n```\nLet me know!'
    assert parse_json_object(reply) == {"tone": "Be direct."}


def test_parse_object_with_prose_around_it() -> None:
    reply = 'Based on the choice, the user likes brevity. {"brevity": "Be brief."} Hope it helps.'
    assert parse_json_object(reply) == {"brevity": "Be brief."}


def test_parse_skips_braces_that_are_not_json() -> None:
    reply = 'The format is {key: value}, so: {"format": "Use bullet points."}'
    assert parse_json_object(reply) == {"format": "Use bullet points."}


def test_fenced_block_wins_over_braces_in_prose() -> None:
    reply = 'I considered {"draft": "x"} first.\n```\n{"final": "Use headings."}\n```'
    assert parse_json_object(reply) == {"final": "Use headings."}


def test_nested_object_is_returned_whole() -> None:
    reply = 'Result: {"criteria": "c", "score_descriptions": {"1": "a"}}'
    assert parse_json_object(reply) == {"criteria": "c", "score_descriptions": {"1": "a"}}


@pytest.mark.parametrize(
    "reply",
    ["", "no json here", "[1, 2, 3]", '"just a string"', "{'single': 'quotes'}", "{broken"],
)
def test_parse_returns_none_without_an_object(reply: str) -> None:
    assert parse_json_object(reply) is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('{}[]":,` \nabc1json'))))
def test_parse_never_raises(text: str) -> None:
    result = parse_json_object(text)
    assert result is None or isinstance(result, dict)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4),
    st.text(alphabet=st.characters(blacklist_characters="{}`"), max_size=30),
)
def test_parse_recovers_any_object_after_prose(obj: dict[str, str], prose: str) -> None:
    assert parse_json_object(prose + json.dumps(obj) + prose) == obj


# --------------------------------------------------------------------------------------------
# validate_user_context
# --------------------------------------------------------------------------------------------


def test_good_context_is_returned_stripped() -> None:
    result = validate_user_context(GOOD_CONTEXT)
    assert result == {
        "response_length": "Keep replies short and lead with the main answer.",
        "tone": "Use a warm, encouraging tone.",
        "examples": "Give one concrete example, e.g. a short scenario. Avoid long lists.",
    }


def test_context_from_fenced_reply() -> None:
    reply = 'Sure!\n```json\n{"detail_level": "Explain the reasoning behind each step."}\n```'
    assert validate_user_context(parse_json_object(reply)) == {
        "detail_level": "Explain the reasoning behind each step."
    }


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"responseLength": "Be brief."}, "'responseLength' is not snake_case"),
        ({"Tone": "Be warm."}, "'Tone' is not snake_case"),
        ({"response length": "Be brief."}, "not snake_case"),
        ({"tone_": "Be warm."}, "not snake_case"),
        ({"_tone": "Be warm."}, "not snake_case"),
        ({"x" * 41: "Be warm."}, "at most 40"),
        ({"tone": "Be warm. Be kind. Be brief."}, "'tone' has 3 sentences"),
        ({"tone": "Be warm!\nBe kind?\nBe brief"}, "3 sentences"),
        ({"tone": 3}, "'tone' is a int, not a string"),
        ({"tone": ["Be warm."]}, "is a list"),
        ({"tone": None}, "is a NoneType"),
        ({"tone": "   "}, "'tone' is empty"),
        ({"tone": "a" * (MAX_CONTEXT_VALUE_CHARS + 1)}, "at most 400"),
        ({}, "empty object"),
        (["tone"], "must be a JSON object"),
        (None, "must be a JSON object"),
        ('{"tone": "Be warm."}', "must be a JSON object"),
    ],
)
def test_bad_context_raises(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_user_context(obj)


def test_bad_key_anywhere_fails_the_whole_context() -> None:
    with pytest.raises(ValueError, match="'userTone'"):
        validate_user_context({"tone": "Be warm.", "userTone": "Be kind."})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Be brief.", 1),
        ("Be brief", 1),
        ("Be brief. Use lists.", 2),
        ("Use examples, e.g. code, i.e. runnable ones. Avoid jargon, etc. when possible.", 2),
        ("Answer in 2.5 pages or less.", 1),
        ('Say "hello." Then stop.', 2),
        ("One!  Two?  Three.", 3),
        ("Line one\nLine two", 2),
        ("", 0),
    ],
)
def test_count_sentences(text: str, expected: int) -> None:
    assert count_sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "response_rule", "reply_rule"),
    [
        # Counted by hand: the response rule skips initials and "No." / "Fig." before a
        # number; the reply rule ends a sentence at each of those periods.
        ("See No. 5 and Fig. 2 today.", 1, 3),
        ("Use the U.S. spelling. Ok.", 2, 3),
        ("A.B. test", 1, 2),
        ("Be brief. Use lists.", 2, 2),
    ],
)
def test_sentence_rules_differ_only_on_initials_and_numbering(
    text: str, response_rule: int, reply_rule: int
) -> None:
    assert count_sentences(text) == response_rule
    assert count_sentences(text, rule="response") == response_rule
    assert count_sentences(text, rule="reply") == reply_rule


def test_context_values_are_counted_with_the_reply_rule() -> None:
    # Two sentences by the response rule, three by the reply rule: over the limit of two.
    with pytest.raises(ValueError, match="has 3 sentences"):
        validate_user_context({"spelling": "Use the U.S. spelling. Be brief."})


def test_unknown_sentence_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown sentence rule"):
        count_sentences("One.", rule="other")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# validate_rubric
# --------------------------------------------------------------------------------------------


def test_good_rubric_keeps_exactly_the_six_fields() -> None:
    rubric = validate_rubric({**GOOD_RUBRIC, "notes": "extra", "criteria": " Plain? "})
    assert tuple(rubric) == RUBRIC_FIELDS
    assert rubric["criteria"] == "Plain?"
    assert rubric["score5_description"] == "Entirely plain and clear."


def test_nested_score_descriptions_are_flattened() -> None:
    nested = {
        "criteria": "Is it plain?",
        "score_descriptions": {"1": "a", "2": "b", "3": "c", "4": "d", "5": "e"},
    }
    rubric = validate_rubric(nested)
    assert [rubric[f"score{level}_description"] for level in range(1, 6)] == list("abcde")


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_rubric_missing_a_level_names_it(level: int) -> None:
    field = f"score{level}_description"
    broken = {key: value for key, value in GOOD_RUBRIC.items() if key != field}
    with pytest.raises(ValueError, match=f"missing '{field}'"):
        validate_rubric(broken)


def test_nested_rubric_missing_a_level_names_it() -> None:
    nested = {"criteria": "c", "score_descriptions": {"1": "a", "2": "b", "3": "c", "5": "e"}}
    with pytest.raises(ValueError, match="missing 'score4_description'"):
        validate_rubric(nested)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"criteria": ""}, "'criteria' is empty"),
        ({"score3_description": "  "}, "'score3_description' is empty"),
        ({"score2_description": 2}, "'score2_description' is a int"),
        ({"criteria": None}, "'criteria' is a NoneType"),
    ],
)
def test_rubric_bad_values(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_rubric({**GOOD_RUBRIC, **change})


def test_rubric_missing_criteria_and_not_an_object() -> None:
    without_criteria = {key: value for key, value in GOOD_RUBRIC.items() if key != "criteria"}
    with pytest.raises(ValueError, match="missing 'criteria'"):
        validate_rubric(without_criteria)
    with pytest.raises(ValueError, match="must be a JSON object"):
        validate_rubric("criteria: x")
