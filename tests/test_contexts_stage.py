"""``mipo contexts``: preference-data readers, context inference with retries, resume, prompts.

The model is a scripted in-process backend (``tests/scripted_backend.py``), so the tests can
say exactly which rows get a malformed reply and count how often each row is asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from scripted_backend import Interrupted, ScriptedBackend
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.run import derive_seed
from mipo_engine.artifacts.schemas import CONTEXTS, PROMPTS
from mipo_engine.artifacts.store import is_complete, read_artifact, read_manifest
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.sources.preferences import read_preferences, read_system_preferences
from mipo_engine.stages.contexts import (
    ContextsConfig,
    ContextsFailed,
    parse_user_statement,
    run_contexts,
)
from mipo_engine.stages.generate import GenerateConfig, run_generate

GOOD = '{"response_length": "Keep replies short.", "tone": "Use a warm and friendly tone."}'
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _pairwise_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"row-{i}",
            "user_id": f"user-{i % 2}",
            "prompt": f"Question number {i} for row-{i}?",
            "response_a": f"A long answer {i}.",
            "response_b": f"Short {i}.",
            "preferred": "B",
        }
        for i in range(n)
    ]


def _config(preferences: Path, out: Path, **overrides: object) -> ContextsConfig:
    options: dict[str, object] = {"preferences": preferences, "out": out, "chunk_rows": 2}
    options.update(overrides)
    return ContextsConfig.from_options(**options)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def test_pairwise_reader_accepts_every_way_of_naming_the_preferred_option(tmp_path):
    rows = [
        {"prompt": "p1", "option_a": "x", "option_b": "y", "preferred": "B"},
        {"prompt": "p2", "option_a": "x", "option_b": "y", "preferred": "option_a"},
        {"prompt": "p3", "option_a": "x", "option_b": "y", "preferred": 2},
        {"prompt": "p4", "option_a": "x", "option_b": "y", "preferred": "y"},
        {"prompt": "p5", "option_a": "x", "option_b": "y", "preferred": "Option A"},
    ]
    examples = read_preferences(_write_jsonl(tmp_path / "prefs.jsonl", rows))
    assert [e.preferred for e in examples] == [1, 0, 1, 1, 0]
    assert [e.source_id for e in examples] == [f"prefs-{i:06d}" for i in range(1, 6)]
    assert examples[0].options == ("x", "y")


def test_pairwise_reader_maps_column_names(tmp_path):
    rows = [{"q": "p", "left": "x", "right": "y", "winner": "right", "uid": 7, "key": "k1"}]
    path = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    (example,) = read_preferences(
        path,
        layout="pairwise",
        columns={
            "prompt": "q",
            "options": ["left", "right"],
            "preferred": "winner",
            "user": "uid",
            "id": "key",
        },
    )
    assert (example.source_id, example.user_id, example.preferred) == ("k1", "7", 1)


def test_community_alignment_layout_reads_the_chosen_turn(tmp_path):
    row = {
        "annotator_id": "ann-3",
        "first_turn_prompt": "Plan my week",
        "first_turn_response_a": "a",
        "first_turn_response_b": "b",
        "first_turn_response_c": None,
        "first_turn_response_d": "d",
        "first_turn_preferred_response": "d",
        "second_turn_prompt": "And the weekend?",
        "second_turn_response_a": "wa",
        "second_turn_response_b": "wb",
        "second_turn_preferred_response": "response_a",
    }
    path = _write_jsonl(tmp_path / "ca.jsonl", [row])
    (first,) = read_preferences(path)  # auto-detected layout, turn 1
    # Slot c is empty, so the options are a, b, d and "d" is the third one shown.
    assert first.options == ("a", "b", "d") and first.preferred == 2
    assert first.user_id == "ann-3" and first.prompt == "Plan my week"
    (second,) = read_preferences(path, turn=2)
    assert second.options == ("wa", "wb") and second.preferred == 0


def test_prism_layout_groups_responses_by_interaction(tmp_path):
    def utterance(interaction: str, within: int, chosen: bool, turn: int = 0) -> dict:
        return {
            "utterance_id": f"{interaction}-{within}",
            "interaction_id": interaction,
            "conversation_id": "c1",
            "user_id": "u9",
            "turn": turn,
            "within_turn_id": within,
            "user_prompt": f"prompt of {interaction}",
            "model_response": f"reply {within} of {interaction}",
            "if_chosen": chosen,
        }

    rows = [
        utterance("i1", 1, False),
        utterance("i1", 0, True),
        utterance("i1", 2, False),
        utterance("i2", 0, True, turn=1),  # a single response: no choice, skipped
        utterance("i3", 10, False, turn=1),  # within-turn ids sort as numbers: 2 before 10
        utterance("i3", 2, True, turn=1),
    ]
    path = _write_jsonl(tmp_path / "utterances.jsonl", rows)
    examples = read_preferences(path)
    assert [e.source_id for e in examples] == ["i1", "i3"]
    assert examples[0].options == ("reply 0 of i1", "reply 1 of i1", "reply 2 of i1")
    assert examples[1].options == ("reply 2 of i3", "reply 10 of i3")
    assert examples[0].preferred == 0 and examples[1].preferred == 0
    assert examples[0].user_id == "u9"
    assert [e.source_id for e in read_preferences(path, turn=2)] == ["i3"]


def test_prism_interaction_with_two_chosen_responses_is_an_error(tmp_path):
    rows = [
        {"interaction_id": "i1", "user_prompt": "p", "model_response": r, "if_chosen": True}
        for r in ("x", "y")
    ]
    with pytest.raises(InputError, match="exactly one") as caught:
        read_preferences(_write_jsonl(tmp_path / "u.jsonl", rows), layout="prism")
    assert caught.value.field == "if_chosen" and caught.value.row == 1


def test_reader_errors_name_file_row_and_field(tmp_path):
    rows = _pairwise_rows(3)
    rows[1]["preferred"] = "Z"
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError) as caught:
        read_preferences(path)
    assert (caught.value.row, caught.value.field) == (2, "preferred")
    assert "bad.jsonl" in str(caught.value)


def test_multifaceted_records_give_one_preference_per_entry(tmp_path):
    record = {
        "id": "mb-1",
        "prompt": "Explain rainbows.",
        "system": "You are a physics teacher...",
        "preference_set": [
            {
                "dimension": "style",
                "subdimension": "conciseness",
                "preference": "short",
                "description": "Prefers short answers.",
            },
            {
                "dimension": "background_knowledge",
                "subdimension": "Novice level",
                "preference": "basic",
                "description": "Knows little physics.",
            },
        ],
    }
    preferences = read_system_preferences(_write_jsonl(tmp_path / "mb.jsonl", [record]))
    assert [p.source_id for p in preferences] == ["mb-1-p1", "mb-1-p2"]
    assert {p.group for p in preferences} == {"mb-1"}
    assert preferences[1].subdimension == "Novice level"


def test_readme_example_of_multifaceted_bench_reads_as_one_system_preference():
    """The authors' README instance has only a ``system`` message (no preference_set)."""
    example = SHARED_DATA / "multifaceted_bench" / "readme_example_instance.json"
    if not example.is_file():
        pytest.skip(f"{example} is not available")
    record = json.loads(example.read_text(encoding="utf-8"))
    (preference,) = read_system_preferences(example)
    assert preference.description == record["system"]
    assert preference.prompt == record["prompt"]
    assert preference.reference_answer == record["reference_answer"]


# --------------------------------------------------------------------------------------------
# The stage with a scripted model
# --------------------------------------------------------------------------------------------


def _flaky_script(text: str, call: int) -> str:
    """row-1: malformed once; row-2: never valid; row-3: a non-snake_case key once."""
    if "row-1" in text and call == 0:
        return "Sure! Here are the preferences: response_length: short"
    if "row-2" in text:
        return '{"tone": "Be warm. Be kind. Be brief."}'  # three sentences: always invalid
    if "row-3" in text and call == 0:
        return '{"Response Length": "Keep it short."}'
    return "```json\n" + GOOD + "\n```"


def test_only_failing_rows_are_retried_and_final_failures_are_recorded(tmp_path):
    preferences = _write_jsonl(tmp_path / "prefs.jsonl", _pairwise_rows(5))
    backend = ScriptedBackend(_flaky_script)
    out = run_contexts(_config(preferences, tmp_path / "c.parquet", chunk_rows=10), backend=backend)

    assert [backend.calls_for(f"row-{i}") for i in range(5)] == [1, 2, 3, 2, 1]
    # One batched call per attempt, each over the rows still failing.
    assert backend.batches == [5, 3, 1]
    # Retries use new seeds derived from the global seed, the row and the attempt, and sample.
    assert backend.seeds_for("row-2") == [derive_seed(0, "row-2", a) for a in (1, 2, 3)]
    assert [s.temperature for s in backend.samplings] == [0.0, 0.7, 0.7]

    frame = read_artifact(out, CONTEXTS)
    assert frame["source_id"].unique(maintain_order=True).to_list() == [
        "row-0",
        "row-1",
        "row-3",
        "row-4",
    ]
    row1 = frame.filter(pl.col("source_id") == "row-1")
    assert row1["id"].to_list() == ["row-1:response_length", "row-1:tone"]
    assert row1["item"].to_list() == ["Keep replies short.", "Use a warm and friendly tone."]
    assert row1["context"][0] == "Keep replies short. Use a warm and friendly tone."
    assert row1["attempts"].to_list() == [2, 2] and row1["user_id"][0] == "user-1"

    failed = read_manifest(out)["stats"]["failed"]
    assert [(f["source_id"], f["attempts"]) for f in failed] == [("row-2", 3)]
    assert "3 sentences" in failed[0]["reason"]


def test_as_prompts_output_feeds_mipo_generate(tmp_path, tiny_model_dir):
    preferences = _write_jsonl(tmp_path / "prefs.jsonl", _pairwise_rows(3))
    prompts_out = tmp_path / "p.parquet"
    run_contexts(
        _config(preferences, tmp_path / "c.parquet", as_prompts=prompts_out),
        backend=ScriptedBackend(lambda text, call: GOOD),
    )
    prompts = read_artifact(prompts_out, PROMPTS)
    assert prompts["id"].to_list() == ["row-0", "row-1", "row-2"]
    assert prompts["prompt"][1] == "Question number 1 for row-1?"
    assert prompts["context_items"][0].to_list() == [
        "Keep replies short.",
        "Use a warm and friendly tone.",
    ]
    assert prompts["context"][0] == "Keep replies short. Use a warm and friendly tone."
    assert set(prompts["task"]) == {"personalization"}
    generations = run_generate(
        GenerateConfig.from_options(
            prompts=prompts_out,
            out=tmp_path / "g.parquet",
            model=str(tiny_model_dir),
            max_new_tokens=3,
        )
    )
    assert pl.read_parquet(generations).height == 3


def test_system_to_user_mode_rewrites_each_preference(tmp_path):
    record = {
        "id": "mb-1",
        "prompt": "Explain rainbows.",
        "preference_set": [
            {
                "dimension": "style",
                "subdimension": "Conciseness",
                "preference": "short",
                "description": "Prefers short answers.",
            },
            {
                "dimension": "informativeness",
                "subdimension": "depth",
                "preference": "deep",
                "description": "Wants the physics behind it.",
            },
        ],
    }
    path = _write_jsonl(tmp_path / "mb.jsonl", [record])

    def script(text: str, call: int) -> str:
        if "Wants the physics" in text and call == 0:
            return "The user wants depth."  # not first person: retried
        return '"I like short, clear answers."'

    backend = ScriptedBackend(script)
    out = run_contexts(
        _config(
            path, tmp_path / "c.parquet", mode="system-to-user", as_prompts=tmp_path / "p.parquet"
        ),
        backend=backend,
    )
    frame = read_artifact(out, CONTEXTS)
    assert frame["id"].to_list() == ["mb-1-p1:conciseness", "mb-1-p2:depth"]
    assert frame["item"].to_list() == ["I like short, clear answers."] * 2
    assert frame["context_group"].to_list() == ["mb-1", "mb-1"]
    assert backend.calls_for("Wants the physics") == 2
    assert "Dimension: style" in backend.prompts[0]
    prompts = read_artifact(tmp_path / "p.parquet", PROMPTS)
    assert prompts["context_group"].to_list() == ["mb-1", "mb-1"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('User: "I prefer short answers."', "I prefer short answers."),
        ("I like examples. Keep it light for me.", "I like examples. Keep it light for me."),
    ],
)
def test_user_statement_cleanup(reply, expected):
    assert parse_user_statement(reply) == expected


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty"),
        ('{"statement": "I like it"}', "JSON"),
        ("Prefers brevity.", "first person"),
        ("I a. I b. I c. I d.", "4 sentences"),
    ],
)
def test_user_statement_rejections(reply, reason):
    with pytest.raises(ValueError, match=reason):
        parse_user_statement(reply)


def test_killed_run_resumes_without_asking_finished_rows_again(tmp_path):
    preferences = _write_jsonl(tmp_path / "prefs.jsonl", _pairwise_rows(6))
    out = tmp_path / "c.parquet"
    config = _config(preferences, out, chunk_rows=2)
    with pytest.raises(Interrupted):
        run_contexts(config, backend=ScriptedBackend(lambda t, c: GOOD, stop_after=3))
    assert not is_complete(out)
    resumed = ScriptedBackend(lambda t, c: GOOD)
    run_contexts(config, backend=resumed)
    # Chunk 1 (rows 0-1) was journaled before the crash inside chunk 2.
    assert [resumed.calls_for(f"row-{i}") for i in range(6)] == [0, 0, 1, 1, 1, 1]
    assert read_artifact(out, CONTEXTS)["source_id"].n_unique() == 6
    # A complete, up-to-date output is not recomputed.
    again = ScriptedBackend(lambda t, c: GOOD)
    run_contexts(config, backend=again)
    assert again.requests == []


def test_all_rows_failing_is_an_error_and_writes_nothing(tmp_path):
    preferences = _write_jsonl(tmp_path / "prefs.jsonl", _pairwise_rows(2))
    out = tmp_path / "c.parquet"
    with pytest.raises(ContextsFailed, match="no row gave a valid context"):
        run_contexts(
            _config(preferences, out, max_attempts=2),
            backend=ScriptedBackend(lambda t, c: "no json here"),
        )
    assert not out.exists() and not (tmp_path / "c.parquet.parts").exists()


def test_mode_and_layout_must_agree(tmp_path):
    with pytest.raises(ConfigError, match="system-to-user"):
        _config(tmp_path / "x.jsonl", tmp_path / "c.parquet", mode="system-to-user", layout="prism")


def test_cli_reports_bad_input_with_file_row_and_field(tmp_path):
    rows = _pairwise_rows(2)
    del rows[1]["prompt"]
    path = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "c.parquet"
    result = CliRunner().invoke(app, ["contexts", "--preferences", str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "prefs.jsonl, row 2, field 'prompt'" in " ".join(result.output.split())
    assert not out.exists()
