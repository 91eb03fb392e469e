"""The context, rubric and judge prompt templates: placeholders, rendering, built-in examples."""

from __future__ import annotations

import pytest

from mipo_engine.artifacts.schemas import RUBRIC_FIELDS
from mipo_engine.judging.scores import parse_score
from mipo_engine.judging.validation import parse_json_object, validate_rubric, validate_user_context
from mipo_engine.templates import load_template, placeholders, render

EXPECTED_PLACEHOLDERS = {
    "context_extraction.txt": {"prompt", "options", "preferred", "feedback"},
    "system_to_user.txt": {"dimension", "subdimension", "preference", "description"},
    "rubric_generation.txt": {"preference"},
    "judge_rubric.txt": {"prompt", "response", "reference_answer", *RUBRIC_FIELDS},
    "judge_rlaif.txt": {"context", "prompt", "response"},
}
TRICKY = "before {{ 7*7 }} middle {% if x %}yes{% endif %} after ${prompt} end $ {} }}"


@pytest.mark.parametrize("name", sorted(EXPECTED_PLACEHOLDERS))
def test_placeholders_are_the_documented_ones(name: str) -> None:
    assert placeholders(load_template(name)) == EXPECTED_PLACEHOLDERS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_PLACEHOLDERS))
def test_each_value_lands_in_the_rendered_prompt(name: str) -> None:
    values = {key: f"<<value of {key}>>" for key in EXPECTED_PLACEHOLDERS[name]}
    rendered = render(name, **values)
    for value in values.values():
        assert rendered.count(value) == 1
    assert "${" not in rendered


@pytest.mark.parametrize("name", sorted(EXPECTED_PLACEHOLDERS))
def test_template_syntax_in_user_data_stays_verbatim(name: str) -> None:
    values = dict.fromkeys(EXPECTED_PLACEHOLDERS[name], TRICKY)
    rendered = render(name, **values)
    assert rendered.count(TRICKY) == len(values)
    assert "49" not in rendered
    # Only the template's own text outside the inserted values is free of "${".
    assert rendered.replace(TRICKY, "").count("${") == 0


@pytest.mark.parametrize("name", sorted(EXPECTED_PLACEHOLDERS))
def test_missing_value_is_an_error(name: str) -> None:
    values = dict.fromkeys(EXPECTED_PLACEHOLDERS[name], "x")
    values.pop(sorted(values)[0])
    with pytest.raises(ValueError, match="template needs values"):
        render(name, **values)


def test_context_extraction_example_passes_validation() -> None:
    example = parse_json_object(load_template("context_extraction.txt"))
    assert example is not None
    assert validate_user_context(example) == example


def test_rubric_generation_example_passes_validation() -> None:
    example = parse_json_object(load_template("rubric_generation.txt"))
    assert example is not None
    assert tuple(validate_rubric(example)) == RUBRIC_FIELDS
    assert set(example) == set(RUBRIC_FIELDS)


@pytest.mark.parametrize("name", ["judge_rubric.txt", "judge_rlaif.txt"])
def test_judge_templates_ask_for_the_result_marker_parse_score_reads(name: str) -> None:
    template = load_template(name)
    assert "[RESULT] N" in template
    assert "1 to 5" in template
    assert parse_score("The reply follows every preference.\n[RESULT] 4") == 4


def _judge_rubric_values() -> dict[str, str]:
    return {
        "prompt": "Suggest a weekend activity.",
        "response": "Try a short hike followed by a picnic.",
        "reference_answer": "",
        "criteria": "Is the reply brief?",
        "score1_description": "Rambling and long.",
        "score2_description": "Long with some focus.",
        "score3_description": "Moderately brief.",
        "score4_description": "Brief with a little padding.",
        "score5_description": "Brief and to the point.",
    }


def test_an_echoed_judge_prompt_is_not_read_as_a_score() -> None:
    """A judge that repeats the prompt (or only its rubric lines) has given no answer."""
    rendered = render("judge_rubric.txt", **_judge_rubric_values())
    assert parse_score(rendered) is None
    rubric_lines = rendered[rendered.index("Criterion:") : rendered.index("Feedback:")]
    assert parse_score(rubric_lines) is None
    rlaif = render(
        "judge_rlaif.txt", context="I like short replies.", prompt="Hi?", response="Hello!"
    )
    assert parse_score(rlaif) is None
