"""Built-in prompt sets in data/ and rubric sets in rubrics/: schema, coverage, loading."""

from __future__ import annotations

import collections
import importlib.util
import json
import re
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mipo_engine.judging.constraints import CONSTRAINT_TYPES, constraint_type
from mipo_engine.judging.rubric_sets import (
    builtin_rubric_sets,
    load_rubric_set,
    rubric_for_constraint,
)
from mipo_engine.resources import resource_dir

DATA = resource_dir("data")
PROMPTS_COLUMNS = (
    "id",
    "prompt",
    "context",
    "context_items",
    "context_group",
    "task",
    "answer",
    "choices",
    "source",
)
SCORE_FIELDS = tuple(f"score{level}_description" for level in range(1, 6))

# Pairs of verifiable types that cannot (or can barely) both hold, so one context must not
# ask for both.
CONFLICTING_TYPES = {
    frozenset({"max_words", "min_words"}),
    frozenset({"max_sentences", "min_words"}),
    frozenset({"exact_bullets", "no_bullets"}),
    frozenset({"exact_bullets", "max_sentences"}),
    frozenset({"exact_paragraphs", "postscript"}),
    frozenset({"ends_with_question", "ends_with_phrase"}),
    frozenset({"ends_with_question", "postscript"}),
    frozenset({"ends_with_phrase", "postscript"}),
    frozenset({"starts_with_word", "title_heading"}),
}

# Words that only occur in this data's verifiable phrasings; an item using one that the
# checker does not recognise is a misspelt verifiable item.
_VERIFIABLE_MARKERS = re.compile(
    r"\d+ (?:words?|sentences?|bullet points?|paragraphs?)\b|\"|“|lowercase|commas?\b"
    r"|digits|P\.S\.|markdown heading|with a (?:follow-up )?question",
    re.IGNORECASE,
)


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def personalization() -> list[dict[str, Any]]:
    return _read_jsonl("personalization.jsonl")


@pytest.fixture(scope="module")
def general() -> list[dict[str, Any]]:
    return _read_jsonl("general.jsonl")


@pytest.fixture(scope="module")
def heldout() -> list[str]:
    return (DATA / "personalization_heldout_ids.txt").read_text().split()


def _verifiable_types(row: dict[str, Any]) -> list[str]:
    return [name for item in row["context_items"] if (name := constraint_type(item))]


# ---- schema ---------------------------------------------------------------------------------


def _check_common_schema(rows: list[dict[str, Any]], task: str, id_prefix: str) -> None:
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids), "duplicate ids"
    for row in rows:
        assert tuple(row) == PROMPTS_COLUMNS, row["id"]
        assert re.fullmatch(rf"{id_prefix}-\d{{4}}", row["id"]), row["id"]
        assert isinstance(row["prompt"], str) and row["prompt"].strip(), row["id"]
        assert row["prompt"] == row["prompt"].strip(), row["id"]
        assert row["task"] == task
        assert row["answer"] is None and row["choices"] is None
        assert row["source"] == f"builtin:{task}"


def test_personalization_schema(personalization: list[dict[str, Any]]) -> None:
    _check_common_schema(personalization, "personalization", "pers")
    for row in personalization:
        items = row["context_items"]
        assert isinstance(items, list) and 1 <= len(items) <= 4, row["id"]
        assert all(isinstance(item, str) and item.strip() for item in items), row["id"]
        assert len(set(items)) == len(items), row["id"]
        # The context is the user's items stated as one text.
        assert row["context"] == " ".join(items), row["id"]
        assert row["context_group"] is None or re.fullmatch(r"[a-z_]+", row["context_group"])


def test_general_schema(general: list[dict[str, Any]], personalization: list[dict]) -> None:
    _check_common_schema(general, "general", "gen")
    assert 90 <= len(general) <= 120
    for row in general:
        assert row["context"] is None
        assert row["context_items"] is None
        assert row["context_group"] is None
    prompts = [row["prompt"] for row in general]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & {row["prompt"] for row in personalization}


@pytest.mark.parametrize("name", ["personalization.jsonl", "general.jsonl"])
def test_files_load_with_the_prompts_schema_types(name: str) -> None:
    schema = {
        "id": pl.String,
        "prompt": pl.String,
        "context": pl.String,
        "context_items": pl.List(pl.String),
        "context_group": pl.String,
        "task": pl.String,
        "answer": pl.String,
        "choices": pl.List(pl.String),
        "source": pl.String,
    }
    frame = pl.read_ndjson(DATA / name, schema=schema)
    assert frame.columns == list(PROMPTS_COLUMNS)
    assert frame["id"].null_count() == 0 and frame["prompt"].null_count() == 0


def test_prompts_are_short(personalization: list[dict], general: list[dict]) -> None:
    # One or two sentences, small enough for a 270M model's prompt budget.
    for row in personalization + general:
        assert len(row["prompt"].split()) <= 25, row["id"]
        assert len(re.findall(r"[.!?](?:\s|$)", row["prompt"])) <= 2, row["id"]


# ---- content ------------------------------------------------------------------------------


def test_enough_personalization_rows(personalization: list[dict[str, Any]]) -> None:
    assert len(personalization) >= 300


def test_verifiable_share(personalization: list[dict[str, Any]]) -> None:
    with_verifiable = sum(1 for row in personalization if _verifiable_types(row))
    assert with_verifiable / len(personalization) >= 0.40


def test_every_constraint_type_is_used(personalization: list[dict[str, Any]]) -> None:
    used = collections.Counter(name for row in personalization for name in _verifiable_types(row))
    assert set(used) == set(CONSTRAINT_TYPES)
    assert min(used.values()) >= 5


def test_context_groups_offer_other_contexts(personalization: list[dict[str, Any]]) -> None:
    contexts_by_group: dict[str, list[str]] = collections.defaultdict(list)
    for row in personalization:
        if row["context_group"] is not None:
            contexts_by_group[row["context_group"]].append(row["context"])
    assert len(contexts_by_group) >= 5
    for group, contexts in contexts_by_group.items():
        assert len(contexts) >= 5, group
        assert len(set(contexts)) >= 2, group


def test_both_kinds_of_context_are_present(personalization: list[dict[str, Any]]) -> None:
    independent = [row for row in personalization if row["context_group"] is None]
    assert len(independent) >= 0.25 * len(personalization)
    assert len(independent) < len(personalization)


def test_contexts_are_unique_within_their_pool(personalization: list[dict[str, Any]]) -> None:
    # random-context draws c' from the row's pool; a duplicate text would make c' equal c.
    contexts_by_pool: dict[str | None, list[str]] = collections.defaultdict(list)
    for row in personalization:
        contexts_by_pool[row["context_group"]].append(row["context"])
    for pool, contexts in contexts_by_pool.items():
        assert len(set(contexts)) == len(contexts), pool


def test_no_contradictory_verifiable_items(personalization: list[dict[str, Any]]) -> None:
    for row in personalization:
        types = _verifiable_types(row)
        assert len(set(types)) == len(types), row["id"]
        for pair in combinations(types, 2):
            assert frozenset(pair) not in CONFLICTING_TYPES, (row["id"], pair)


def test_verifiable_looking_items_are_recognised(personalization: list[dict[str, Any]]) -> None:
    for row in personalization:
        for item in row["context_items"]:
            if _VERIFIABLE_MARKERS.search(item):
                assert constraint_type(item) is not None, (row["id"], item)


def test_verifiable_items_in_data_have_rubrics(personalization: list[dict[str, Any]]) -> None:
    verifiable_ids = {rubric["checker"] for rubric in load_rubric_set("verifiable")}
    for row in personalization:
        for name in _verifiable_types(row):
            assert name in verifiable_ids, (row["id"], name)


# ---- held-out rows ------------------------------------------------------------------------


def test_heldout_ids(personalization: list[dict[str, Any]], heldout: list[str]) -> None:
    ids = {row["id"] for row in personalization}
    assert heldout == sorted(heldout)
    assert len(set(heldout)) == len(heldout)
    assert set(heldout) <= ids
    assert 0.15 <= len(heldout) / len(personalization) <= 0.25


def test_heldout_prompts_never_appear_in_training_rows(
    personalization: list[dict[str, Any]], heldout: list[str]
) -> None:
    held = set(heldout)
    held_prompts = {row["prompt"] for row in personalization if row["id"] in held}
    train_prompts = {row["prompt"] for row in personalization if row["id"] not in held}
    assert not held_prompts & train_prompts
    held_groups = {row["context_group"] for row in personalization if row["id"] in held}
    all_groups = {row["context_group"] for row in personalization}
    assert held_groups == all_groups


def test_committed_files_match_the_build_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = DATA / "_build" / "make_builtin.py"
    if not script.is_file():
        pytest.skip("the build script ships only in a source checkout")
    spec = importlib.util.spec_from_file_location("make_builtin", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    module.DATA_DIR = tmp_path
    module.main()
    for name in (
        "personalization.jsonl",
        "general.jsonl",
        "personalization_heldout_ids.txt",
        "personalization_dev_ids.txt",
    ):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


# ---- rubric sets ----------------------------------------------------------------------------


def test_builtin_rubric_sets_are_listed() -> None:
    assert {"general", "personalization", "verifiable"} <= set(builtin_rubric_sets())


@pytest.mark.parametrize("name", ["general", "personalization", "verifiable"])
def test_builtin_rubric_sets_load(name: str) -> None:
    rubrics = load_rubric_set(name)
    assert len(rubrics) >= 5
    assert len({rubric["id"] for rubric in rubrics}) == len(rubrics)
    for rubric in rubrics:
        assert rubric["criteria"].endswith("?"), rubric["id"]
        assert all(rubric[field] for field in SCORE_FIELDS)
        assert len({rubric[field] for field in SCORE_FIELDS}) == 5, rubric["id"]


def test_general_and_personalization_rubrics_cover_the_named_dimensions() -> None:
    general_ids = {rubric["id"] for rubric in load_rubric_set("general")}
    assert {"helpfulness", "correctness", "clarity", "harmlessness"} <= general_ids
    dimensions = {rubric["dimension"] for rubric in load_rubric_set("personalization")}
    assert {"style", "tone", "length", "format", "expertise"} <= dimensions


def test_one_verifiable_rubric_per_constraint_type() -> None:
    checkers = [rubric["checker"] for rubric in load_rubric_set("verifiable")]
    assert sorted(checkers) == sorted(CONSTRAINT_TYPES)
    for name in CONSTRAINT_TYPES:
        assert rubric_for_constraint(name)["checker"] == name


def test_rubric_for_unknown_constraint_type() -> None:
    with pytest.raises(ValueError, match="unknown constraint type 'word_count'"):
        rubric_for_constraint("word_count")


def test_loaded_rubrics_are_copies() -> None:
    first = load_rubric_set("general")
    first[0]["criteria"] = "changed"
    assert load_rubric_set("general")[0]["criteria"] != "changed"


def _rubric(rubric_id: str, **overrides: object) -> dict[str, object]:
    rubric: dict[str, object] = {"id": rubric_id, "criteria": "Is it polite?"}
    rubric.update({field: f"level {level}" for level, field in enumerate(SCORE_FIELDS, 1)})
    rubric.update(overrides)
    return {key: value for key, value in rubric.items() if value is not None}


def test_rubric_file_in_both_layouts_and_formats(tmp_path: Path) -> None:
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([_rubric("a"), _rubric("b", checker="no_commas")]))
    as_mapping = tmp_path / "mapping.yml"
    as_mapping.write_text(json.dumps({"name": "x", "rubrics": [_rubric("a")]}))  # JSON is YAML
    assert [rubric["id"] for rubric in load_rubric_set(as_list)] == ["a", "b"]
    assert load_rubric_set(str(as_mapping))[0]["score5_description"] == "level 5"


def test_missing_score_description_names_file_index_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"rubrics": [_rubric("a"), _rubric("b", score3_description=None)]}))
    with pytest.raises(ValueError) as raised:
        load_rubric_set(path)
    message = str(raised.value)
    assert str(path) in message and "rubrics[1]" in message and "score3_description" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([_rubric("a", criteria=None)], r"rubrics\[0\] is missing 'criteria'"),
        ([_rubric("a", criteria="  ")], r"rubrics\[0\] field 'criteria' must be a non-empty"),
        ([_rubric("a", id=None)], r"rubrics\[0\] is missing 'id'"),
        ([_rubric("a"), _rubric("a")], r"rubrics\[1\] repeats id 'a'"),
        ([_rubric("a", checker="word_count")], "names checker 'word_count'"),
        (["not a mapping"], r"rubrics\[0\] must be a mapping"),
        ([], "empty"),
        ({"name": "no rubrics"}, "needs a 'rubrics' list"),
        ("just text", "expected a list of rubrics"),
    ],
)
def test_invalid_rubric_files(tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / "rubrics.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=expected):
        load_rubric_set(path)


def test_unreadable_or_unknown_rubric_sets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a built-in set"):
        load_rubric_set("no-such-set")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rubrics: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_rubric_set(broken)
    wrong_suffix = tmp_path / "rubrics.txt"
    wrong_suffix.write_text("[]")
    with pytest.raises(ValueError, match="must end in"):
        load_rubric_set(wrong_suffix)
