"""``mipo rubrics``: built-in rubrics for verifiable items, generated ones with retries."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from scripted_backend import Interrupted, ScriptedBackend, StructuredScriptedBackend
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.run import derive_seed
from mipo_engine.artifacts.schemas import CONTEXTS, PROMPTS, RUBRICS
from mipo_engine.artifacts.store import is_complete, read_artifact, read_manifest
from mipo_engine.errors import InputError
from mipo_engine.judging.constraints import constraint_type
from mipo_engine.judging.rubric_sets import load_rubric_set
from mipo_engine.judging.rubric_writing import RubricsFailed, read_preference_items, rubric_id
from mipo_engine.stages.ingest import IngestConfig, run_ingest
from mipo_engine.stages.rubrics import RubricsConfig, run_rubrics

WARM = "Use a warm tone."
EXAMPLES = "Give one concrete example."
NOVICE = "Explain things as if I am new to the subject."
SHORT = "Answer in at most 3 sentences."


def rubric_json(tag: str) -> str:
    fields = {"criteria": f"Is it {tag}?"}
    fields.update({f"score{level}_description": f"{tag} level {level}" for level in range(1, 6)})
    return json.dumps(fields)


def write_contexts(path: Path, items_by_source: dict[str, list[str]]) -> Path:
    rows = []
    for source_id, items in items_by_source.items():
        for index, item in enumerate(items):
            rows.append(
                {
                    "id": f"{source_id}:k{index}",
                    "source_id": source_id,
                    "user_id": None,
                    "key": f"k{index}",
                    "item": item,
                    "context": " ".join(items),
                    "prompt": "p",
                    "context_group": None,
                    "source": "test",
                    "attempts": 1,
                }
            )
    pl.DataFrame(rows, schema=CONTEXTS.polars_schema()).write_parquet(path)
    return path


def _config(contexts: Path, out: Path, **overrides: object) -> RubricsConfig:
    options: dict[str, object] = {"contexts": contexts, "out": out, "chunk_items": 2}
    options.update(overrides)
    return RubricsConfig.from_options(**options)  # type: ignore[return-value]


def _script(text: str, call: int) -> str:
    """WARM: fine; EXAMPLES: a missing level on the first call; NOVICE: never valid."""
    if EXAMPLES in text and call == 0:
        fields = json.loads(rubric_json("examples"))
        del fields["score3_description"]
        return json.dumps(fields)
    if NOVICE in text:
        return "Here is a rubric: criteria - is it simple?"
    return rubric_json("warm" if WARM in text else "examples")


def test_verifiable_items_get_builtin_rubrics_and_only_bad_rubrics_are_retried(tmp_path):
    contexts = write_contexts(
        tmp_path / "c.parquet", {"s1": [WARM, SHORT], "s2": [EXAMPLES, WARM, NOVICE]}
    )
    backend = ScriptedBackend(_script)
    out = run_rubrics(_config(contexts, tmp_path / "r.parquet", chunk_items=10), backend=backend)

    # SHORT is verifiable: no model call. WARM once (deduplicated), EXAMPLES twice, NOVICE 3x.
    assert backend.calls_for(SHORT) == 0
    assert [backend.calls_for(i) for i in (WARM, EXAMPLES, NOVICE)] == [1, 2, 3]
    assert backend.batches == [3, 2, 1]
    assert backend.seeds_for(NOVICE) == [derive_seed(0, rubric_id(NOVICE), a) for a in (1, 2, 3)]

    rubrics = read_artifact(out, RUBRICS)
    assert rubrics["item"].to_list() == [WARM, SHORT, EXAMPLES]
    assert rubrics["id"].to_list() == [rubric_id(i) for i in (WARM, SHORT, EXAMPLES)]
    short = rubrics.row(1, named=True)
    builtin = next(r for r in load_rubric_set("verifiable") if r["checker"] == "max_sentences")
    assert short["checker"] == constraint_type(SHORT) == "max_sentences"
    assert short["criteria"] == builtin["criteria"]
    assert short["score5_description"] == builtin["score5_description"]
    assert (short["origin"], short["attempts"]) == ("builtin:verifiable", 0)
    examples = rubrics.row(2, named=True)
    assert examples["score3_description"] == "examples level 3" and examples["attempts"] == 2

    stats = read_manifest(out)["stats"]
    assert (stats["builtin"], stats["generated"]) == (1, 2)
    assert [(f["item"], f["attempts"]) for f in stats["failed"]] == [(NOVICE, 3)]
    assert "no JSON object" in stats["failed"][0]["reason"]


def test_prompts_with_only_verifiable_items_need_no_model(tmp_path):
    prompts = run_ingest(
        IngestConfig.from_options(
            inputs=["builtin:personalization-train"], out=tmp_path / "p.parquet"
        )
    )
    frame = read_artifact(prompts, PROMPTS)
    verifiable = [
        item
        for items in frame["context_items"].to_list()
        if items
        for item in items
        if constraint_type(item)
    ]
    only = tmp_path / "verifiable.parquet"
    frame.head(1).with_columns(pl.Series("context_items", [verifiable[:5]])).write_parquet(only)
    # No backend is given and the model path does not exist: a model load would fail.
    out = run_rubrics(_config(only, tmp_path / "r.parquet", model="/nonexistent/model"))
    rubrics = read_artifact(out, RUBRICS)
    assert rubrics["item"].to_list() == list(dict.fromkeys(verifiable[:5]))
    assert rubrics["checker"].to_list() == [constraint_type(i) for i in rubrics["item"]]


def test_items_are_read_from_prompts_context_items(tmp_path):
    prompts = tmp_path / "p.parquet"
    pl.DataFrame(
        [
            {"id": "a", "prompt": "x", "context": None, "context_items": [WARM, " ", SHORT],
             "context_group": None, "task": "personalization", "answer": None, "choices": None,
             "source": "t"},
            {"id": "b", "prompt": "y", "context": None, "context_items": None,
             "context_group": None, "task": "general", "answer": None, "choices": None,
             "source": "t"},
            {"id": "c", "prompt": "z", "context": None, "context_items": [SHORT, NOVICE],
             "context_group": None, "task": "personalization", "answer": None, "choices": None,
             "source": "t"},
        ],
        schema=PROMPTS.polars_schema(),
    ).write_parquet(prompts)  # fmt: skip
    assert read_preference_items(prompts) == [WARM, SHORT, NOVICE]


def test_a_file_that_is_neither_contexts_nor_prompts_is_rejected(tmp_path):
    path = tmp_path / "other.parquet"
    pl.DataFrame({"id": ["a"], "text": ["b"]}).write_parquet(path)
    with pytest.raises(InputError, match="contexts artifact"):
        read_preference_items(path)
    result = CliRunner().invoke(
        app, ["rubrics", "--contexts", str(path), "--out", str(tmp_path / "r.parquet")]
    )
    assert result.exit_code == 2 and "other.parquet" in result.output
    assert not (tmp_path / "r.parquet").exists()


def test_interrupted_run_resumes_without_regenerating_finished_rubrics(tmp_path):
    items = [f"Preference number {i} about style." for i in range(6)]
    contexts = write_contexts(tmp_path / "c.parquet", {"s": items})
    config = _config(contexts, tmp_path / "r.parquet", chunk_items=2)
    with pytest.raises(Interrupted):
        run_rubrics(config, backend=ScriptedBackend(lambda t, c: rubric_json("x"), stop_after=3))
    assert not is_complete(config.out)
    resumed = ScriptedBackend(lambda t, c: rubric_json("x"))
    run_rubrics(config, backend=resumed)
    assert [resumed.calls_for(item) for item in items] == [0, 0, 1, 1, 1, 1]
    assert read_artifact(config.out, RUBRICS).height == 6


def test_no_valid_rubric_at_all_is_an_error(tmp_path):
    contexts = write_contexts(tmp_path / "c.parquet", {"s": [WARM]})
    with pytest.raises(RubricsFailed, match="no item got a valid rubric"):
        run_rubrics(
            _config(contexts, tmp_path / "r.parquet", max_attempts=2),
            backend=ScriptedBackend(lambda t, c: "{}"),
        )
    assert not (tmp_path / "r.parquet").exists()


def test_structured_backends_are_given_the_rubric_json_schema(tmp_path):
    contexts = write_contexts(tmp_path / "c.parquet", {"s": [WARM, SHORT]})
    backend = StructuredScriptedBackend(lambda text, call: rubric_json("warm"))
    run_rubrics(_config(contexts, tmp_path / "r.parquet"), backend=backend)
    (schema,) = backend.json_schemas  # one call: SHORT is verifiable
    assert schema["required"] == [
        "criteria",
        "score1_description",
        "score2_description",
        "score3_description",
        "score4_description",
        "score5_description",
    ]
    assert schema["properties"]["criteria"] == {"type": "string", "minLength": 1}
    assert schema["additionalProperties"] is False


def test_rubric_ids_depend_only_on_the_item_text():
    assert rubric_id(WARM) == rubric_id(f"  {WARM}\n") != rubric_id(SHORT)
    assert rubric_id(WARM).startswith("rubric-") and len(rubric_id(WARM)) == len("rubric-") + 16
