"""The bad-input catalogue: malformed inputs across stages, each driven through the CLI.

Every case must exit non-zero with a one-line message naming the file, the row and the field
(or the config key) at fault, and must write nothing where its outputs would go. The table
``CASES`` is the single list of cases; ``docs/reliability.md`` shows each with the exact
message it gets, between the ``bad-inputs`` markers. Regenerate that block after changing a
case or an error message with::

    python tests/reliability/test_bad_inputs.py

Each case's test also checks that the document shows its current message.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"


# ---------------------------------------------------------------------------------------------
# Where a case writes its inputs and where its outputs would go
# ---------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    """``inputs/`` holds what a case writes; ``outputs/`` must stay empty after the command."""

    root: Path
    model: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    def out(self, name: str) -> str:
        return str(self.outputs / name)

    def text(self, name: str, content: str | bytes) -> str:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def jsonl(self, name: str, rows: list[dict[str, Any]]) -> str:
        return self.text(name, "".join(json.dumps(row) + "\n" for row in rows))

    def parquet(self, name: str, frame: pl.DataFrame) -> str:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(path)
        return str(path)


# ---------------------------------------------------------------------------------------------
# Valid artifacts that a case then breaks in one place
# ---------------------------------------------------------------------------------------------


def prompts_frame(rows: int = 3) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"p{i}" for i in range(1, rows + 1)],
            "prompt": [f"Question number {i}?" for i in range(1, rows + 1)],
            "context": ["Keep it short."] * rows,
            "context_items": [["Keep it short."]] * rows,
            "context_group": [None] * rows,
            "task": ["personalization"] * rows,
            "answer": [None] * rows,
            "choices": [None] * rows,
            "source": ["test"] * rows,
        },
        schema_overrides={
            "context_group": pl.String,
            "answer": pl.String,
            "choices": pl.List(pl.String),
        },
    )


def generations_frame(rows: int = 3) -> pl.DataFrame:
    ids = [f"p{i}" for i in range(1, rows + 1)]
    return pl.DataFrame(
        {
            "id": ids,
            "prompt_id": ids,
            "prompt": [f"Question number {i}?" for i in range(1, rows + 1)],
            "context": ["Keep it short."] * rows,
            "chosen": ["A short answer."] * rows,
            "rejected": ["A long and winding answer that goes on."] * rows,
            "strategy": ["missing-context"] * rows,
            "negative_source": ids,
            "chosen_input": [f"User: Keep it short. Question number {i}?\n" for i in range(rows)],
            "rejected_input": [f"User: Question number {i}?\n" for i in range(rows)],
            "model": ["tiny"] * rows,
            "seed": list(range(rows)),
            "chosen_finish_reason": ["stop"] * rows,
            "rejected_finish_reason": ["stop"] * rows,
            "chosen_tokens": [4] * rows,
            "rejected_tokens": [9] * rows,
        }
    )


def scores_frame(rows: int = 3) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"p{i}" for i in range(1, rows + 1)],
            "ref_chosen_logps": [-10.0] * rows,
            "ref_rejected_logps": [-20.0] * rows,
            "chosen_tokens": [4] * rows,
            "rejected_tokens": [9] * rows,
            "pmi_chosen": [0.5] * rows,
        }
    )


def with_value(frame: pl.DataFrame, column: str, row: int, value: Any) -> pl.DataFrame:
    """``frame`` with ``column`` at 1-based ``row`` replaced by ``value``."""
    values = frame[column].to_list()
    values[row - 1] = value
    return frame.with_columns(pl.Series(column, values, dtype=frame[column].dtype))


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One malformed input: how to build it, and what its message must name."""

    id: str
    stage: str
    what: str
    build: Callable[[Workspace], list[str]]
    """Writes the inputs and returns the ``mipo`` arguments."""
    names: tuple[str, ...]
    """Fragments the message must contain: file, ``row N``, ``field 'x'`` or ``'key'``."""
    exit_code: int = 2
    known_bug: str | None = None
    """Where the library does not refuse this input yet (the case is an expected failure)."""


def _ingest(ws: Workspace, path: str, *extra: str) -> list[str]:
    return ["ingest", path, "--out", ws.out("prompts.parquet"), *extra]


def _generate(ws: Workspace, prompts: str, *extra: str) -> list[str]:
    return ["generate", "--prompts", prompts, "--out", ws.out("generations.parquet"),
            "--model", str(ws.model), "--max-new-tokens", "2", *extra]  # fmt: skip


def _score(ws: Workspace, generations: str, *extra: str) -> list[str]:
    return ["score", "--generations", generations, "--out", ws.out("scores.parquet"),
            "--model", str(ws.model), *extra]  # fmt: skip


def _export(ws: Workspace, generations: str, *extra: str) -> list[str]:
    return ["export", "--generations", generations, "--out", ws.out("preferences.parquet"), *extra]


def _train(ws: Workspace, *extra: str, scores: str | None = None) -> list[str]:
    generations = ws.parquet("generations.parquet", generations_frame())
    args = ["train", "--preferences", generations, "--output-dir", ws.out("train"),
            "--model", str(ws.model), "--max-steps", "1", "--max-length", "64"]  # fmt: skip
    if scores is not None:
        args += ["--scores", scores]
    return [*args, *extra]


def _judge(ws: Workspace, *extra: str) -> list[str]:
    generations = ws.parquet("generations.parquet", generations_frame())
    return ["judge", "--responses", generations, "--out", ws.out("judgments.parquet"), *extra]


def _run(ws: Workspace, config: str) -> list[str]:
    return ["run", ws.text("pipeline.yaml", config.replace("RUN_DIR", ws.out("run")))]


def _four_level_rubrics(ws: Workspace) -> str:
    levels = {f"score{n}_description": f"Level {n}." for n in range(1, 5)}
    frame = pl.DataFrame(
        [
            {
                "id": "rubric-1",
                "item": "Keep it short.",
                "criteria": "Is it short?",
                **levels,
                "checker": None,
                "origin": "generated",
                "attempts": 1,
            }
        ]
    )
    return ws.parquet("rubrics.parquet", frame)


PIPELINE = """run_dir: RUN_DIR
stages:
  - stage: ingest
    inputs: [builtin:personalization-train]
    limit: 2
  - stage: generate
    {line}
"""

CASES: tuple[Case, ...] = (
    # -- ingest --------------------------------------------------------------------------------
    Case("ingest-missing-prompt-column", "ingest", "JSONL rows without a `prompt` field",
         lambda ws: _ingest(ws, ws.jsonl("in.jsonl", [{"id": "a", "text": "hi"}])),
         ("in.jsonl", "row 1", "field 'prompt'")),
    Case("ingest-empty-prompt", "ingest", "an empty prompt in row 2",
         lambda ws: _ingest(ws, ws.jsonl("in.jsonl", [{"id": "a", "prompt": "hi"},
                                                      {"id": "b", "prompt": ""}])),
         ("in.jsonl", "row 2", "field 'prompt'")),
    Case("ingest-whitespace-prompt", "ingest", "a whitespace-only prompt in row 3",
         lambda ws: _ingest(ws, ws.jsonl("in.jsonl", [{"id": "a", "prompt": "hi"},
                                                      {"id": "b", "prompt": "yo"},
                                                      {"id": "c", "prompt": " \t\n "}])),
         ("in.jsonl", "row 3", "field 'prompt'")),
    Case("ingest-prompt-wrong-type", "ingest", "a prompt that is a number, not text",
         lambda ws: _ingest(ws, ws.jsonl("in.jsonl", [{"id": "a", "prompt": 5}])),
         ("in.jsonl", "row 1", "field 'prompt'")),
    Case("ingest-duplicate-id", "ingest", "row 3 repeats the id of row 1",
         lambda ws: _ingest(ws, ws.jsonl("in.jsonl", [{"id": "a", "prompt": "x"},
                                                      {"id": "b", "prompt": "y"},
                                                      {"id": "a", "prompt": "z"}])),
         ("in.jsonl", "row 3", "field 'id'")),
    Case("ingest-non-utf8", "ingest", "invalid UTF-8 bytes in row 2",
         lambda ws: _ingest(ws, ws.text("in.jsonl", b'{"id": "a", "prompt": "ok"}\n'
                                                    b'{"id": "b", "prompt": "caf\xe9 \xff"}\n')),
         ("in.jsonl", "row 2")),
    Case("ingest-broken-json-line", "ingest", "a truncated JSON line in row 2",
         lambda ws: _ingest(ws, ws.text("in.jsonl", '{"id": "a", "prompt": "ok"}\n'
                                                    '{"id": "b", "prompt": \n')),
         ("in.jsonl", "row 2")),
    Case("ingest-10mb-prompt", "ingest", "a 10 MB prompt",
         lambda ws: _ingest(ws, ws.jsonl("in.jsonl", [{"id": "a", "prompt": "x" * 10_000_000}])),
         ("in.jsonl", "row 1", "field 'prompt'")),
    Case("ingest-unknown-task", "ingest", "`--task cooking`",
         lambda ws: _ingest(ws, ws.jsonl("in.jsonl", [{"id": "a", "prompt": "hi"}]),
                            "--task", "cooking"),
         ("'task'",)),
    Case("ingest-missing-file", "ingest", "an input file that does not exist",
         lambda ws: _ingest(ws, str(ws.inputs / "nowhere.jsonl")),
         ("nowhere.jsonl",)),
    # -- generate ------------------------------------------------------------------------------
    Case("generate-missing-column", "generate", "a prompts file without the `context` column",
         lambda ws: _generate(ws, ws.parquet("prompts.parquet", prompts_frame().drop("context"))),
         ("prompts.parquet", "field 'context'")),
    Case("generate-null-prompt", "generate", "a null prompt in row 2",
         lambda ws: _generate(ws, ws.parquet("prompts.parquet",
                                             with_value(prompts_frame(), "prompt", 2, None))),
         ("prompts.parquet", "row 2", "field 'prompt'")),
    Case("generate-whitespace-prompt", "generate", "a whitespace-only prompt in row 3",
         lambda ws: _generate(ws, ws.parquet("prompts.parquet",
                                             with_value(prompts_frame(), "prompt", 3, "  "))),
         ("prompts.parquet", "row 3", "field 'prompt'")),
    Case("generate-wrong-type", "generate", "`context_items` holding text instead of a list",
         lambda ws: _generate(ws, ws.parquet("prompts.parquet", prompts_frame().with_columns(
             pl.lit("Keep it short.").alias("context_items")))),
         ("prompts.parquet", "field 'context_items'")),
    Case("generate-duplicate-id", "generate", "row 2 repeats the id of row 1",
         lambda ws: _generate(ws, ws.parquet("prompts.parquet",
                                             with_value(prompts_frame(), "id", 2, "p1"))),
         ("prompts.parquet", "row 2", "field 'id'")),
    Case("generate-not-parquet", "generate", "a prompts file that is not Parquet",
         lambda ws: _generate(ws, ws.text("prompts.parquet", "id,prompt\na,hi\n")),
         ("prompts.parquet",)),
    Case("generate-unknown-strategy", "generate", "`--strategy opposite-day`",
         lambda ws: _generate(ws, ws.parquet("prompts.parquet", prompts_frame()),
                              "--strategy", "opposite-day"),
         ("'strategy'",)),
    Case("generate-missing-model", "generate", "`--model` pointing at a folder that does not exist",
         lambda ws: [*_generate(ws, ws.parquet("prompts.parquet", prompts_frame()))[:-4],
                     "--model", str(ws.inputs / "no-such-model")],
         ("'model'", "no-such-model")),
    Case("generate-output-not-parquet", "generate", "`--out` that is not a .parquet file",
         lambda ws: ["generate", "--prompts", ws.parquet("prompts.parquet", prompts_frame()),
                     "--out", ws.out("generations.csv"), "--model", str(ws.model)],
         ("'out'",)),
    # -- score ---------------------------------------------------------------------------------
    Case("score-missing-column", "score", "generations without the `chosen` column",
         lambda ws: _score(ws, ws.parquet("generations.parquet",
                                          generations_frame().drop("chosen"))),
         ("generations.parquet", "field 'chosen'")),
    Case("score-duplicate-id", "score", "row 3 repeats the id of row 1",
         lambda ws: _score(ws, ws.parquet("generations.parquet",
                                          with_value(generations_frame(), "id", 3, "p1"))),
         ("generations.parquet", "row 3", "field 'id'")),
    Case("score-bad-max-length", "score", "`--max-length 2`",
         lambda ws: _score(ws, ws.parquet("generations.parquet", generations_frame()),
                           "--max-length", "2"),
         ("'max_length'",)),
    # -- export --------------------------------------------------------------------------------
    Case("export-nan-logps", "export", "a NaN reference log-prob in row 2 of the scores",
         lambda ws: _export(ws, ws.parquet("generations.parquet", generations_frame()),
                            "--scores", ws.parquet("scores.parquet", with_value(
                                scores_frame(), "ref_chosen_logps", 2, float("nan")))),
         ("scores.parquet", "row 2", "field 'ref_chosen_logps'")),
    Case("export-mismatched-ids", "export", "scores whose ids are not the generations' ids",
         lambda ws: _export(ws, ws.parquet("generations.parquet", generations_frame()),
                            "--scores", ws.parquet("scores.parquet",
                                                   with_value(scores_frame(), "id", 2, "zz"))),
         ("scores.parquet", "row 2", "'id'")),
    Case("export-unknown-format", "export", "`--format csv`",
         lambda ws: _export(ws, ws.parquet("generations.parquet", generations_frame()),
                            "--format", "csv"),
         ("'format'",)),
    Case("export-bad-split", "export", "`--split train=1.5`",
         lambda ws: _export(ws, ws.parquet("generations.parquet", generations_frame()),
                            "--split", "train=1.5"),
         ("'split'",)),
    # -- train ---------------------------------------------------------------------------------
    Case("train-unknown-loss", "train", "`--loss dpo2`",
         lambda ws: _train(ws, "--loss", "dpo2"),
         ("'loss'",)),
    Case("train-nan-logps", "train", "a NaN reference log-prob in row 3 of the scores",
         lambda ws: _train(ws, scores=ws.parquet("scores.parquet", with_value(
             scores_frame(), "ref_rejected_logps", 3, float("nan")))),
         ("scores.parquet", "row 3", "field 'ref_rejected_logps'")),
    Case("train-mismatched-ids", "train", "scores whose ids are not the pairs' ids",
         lambda ws: _train(ws, scores=ws.parquet("scores.parquet",
                                                 with_value(scores_frame(), "id", 1, "zz"))),
         ("scores.parquet", "'id'")),
    Case("train-bad-batch-size", "train", "`--per-device-batch-size 0`",
         lambda ws: _train(ws, "--per-device-batch-size", "0"),
         ("'per_device_batch_size'",)),
    Case("train-missing-model", "train", "`--model` pointing at a folder that does not exist",
         lambda ws: [*_train(ws)[:5], "--model", str(ws.inputs / "no-such-model"),
                     "--max-steps", "1"],
         ("'model'", "no-such-model")),
    # -- judge ---------------------------------------------------------------------------------
    Case("judge-rubric-four-levels", "judge", "a rubric with four score levels, not five",
         lambda ws: _judge(ws, "--rubrics", _four_level_rubrics(ws), "--model", str(ws.model)),
         ("rubrics.parquet", "field 'score5_description'")),
    Case("judge-unknown-mode", "judge", "`--mode vibes`",
         lambda ws: _judge(ws, "--mode", "vibes"),
         ("'mode'",)),
    # -- run -----------------------------------------------------------------------------------
    Case("run-typo-key", "run", "a pipeline stage with `max_new_token` (typo)",
         lambda ws: _run(ws, PIPELINE.format(line="max_new_token: 8")),
         ("'stages[1].max_new_token'", "did you mean 'max_new_tokens'")),
    Case("run-unknown-stage", "run", "a pipeline stage named `generat`",
         lambda ws: _run(ws, PIPELINE.replace("stage: generate", "stage: generat").format(
             line="max_new_tokens: 8")),
         ("'stages[1].stage'", "'generat'")),
    Case("run-broken-yaml", "run", "a pipeline file that is not valid YAML",
         lambda ws: _run(ws, "run_dir: RUN_DIR\nstages: [\n  - stage: ingest\n"),
         ("pipeline.yaml", "line 3")),
    # -- publish and eval ----------------------------------------------------------------------
    Case("publish-bad-repo-id", "publish", "`--repo-id not a repo`",
         lambda ws: ["publish", "--preferences", ws.parquet("preferences.parquet",
                                                            generations_frame()),
                     "--repo-id", "not a repo", "--local-dir", ws.out("hub")],
         ("'repo_id'",)),
    Case("eval-unknown-task", "eval", "`--task poetry`",
         lambda ws: ["eval", "--task", "poetry", "--out", ws.out("eval.parquet"),
                     "--model", str(ws.model)],
         ("'task'",)),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    message: str
    """The error line, with the workspace path replaced by ``<tmp>``."""
    output: str
    written: list[str]
    """Files that appeared under ``outputs/`` or beside the inputs."""


def run_case(case: Case, ws: Workspace) -> Outcome:
    from cli import app

    ws.outputs.mkdir(parents=True, exist_ok=True)
    args = case.build(ws)
    inputs_before = {p for p in ws.inputs.rglob("*")} if ws.inputs.exists() else set()
    result = CliRunner().invoke(app, args)
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        output += f"\n(uncaught) {trace}"
    written = [str(p.relative_to(ws.root)) for p in ws.outputs.rglob("*") if p.is_file()]
    written += [
        str(p.relative_to(ws.root))
        for p in ws.inputs.rglob("*")
        if p not in inputs_before and p.is_file()
    ]
    return Outcome(result.exit_code, normalize(error_line(output), ws), output, written)


def error_line(output: str) -> str:
    """The text after ``error:`` (the CLI's one-line message), or a CLI usage error."""
    text = " ".join(output.split())
    found = re.search(r"error: (.*?)(?: wrote |$)", text)
    if found:
        return found.group(1).strip()
    usage = re.search(r"(?:Error|Invalid value)[^│]*", output)
    return " ".join(usage.group(0).split()) if usage else text[-300:]


def normalize(message: str, ws: Workspace) -> str:
    return message.replace(str(ws.root), "<tmp>").replace(str(ws.model), "<model>")


def doc_row(case: Case, message: str) -> str:
    if case.known_bug is not None:
        message = f"**not refused yet**: {case.known_bug}"
    cell = message.replace("|", "\\|")
    return f"| `{case.id}` | {case.stage} | {case.what} | {case.exit_code} | {cell} |"


def doc_table(rows: list[str]) -> str:
    head = [
        "| case | stage | malformed input | exit | message (`<tmp>` = the case's folder) |",
        "|---|---|---|---|---|",
    ]
    return "\n".join([*head, *rows])


def documented_rows() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0] if BEGIN in text else ""
    rows = {}
    for line in block.splitlines():
        found = re.match(r"\| `([^`]+)` \|", line)
        if found:
            rows[found.group(1)] = line
    return rows


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def test_the_catalogue_has_at_least_25_distinct_cases_over_the_stages() -> None:
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)
    assert {case.stage for case in CASES} >= {"ingest", "generate", "score", "export", "train",
                                              "judge", "run"}  # fmt: skip


def test_the_document_lists_exactly_the_catalogue() -> None:
    rows = documented_rows()
    assert list(rows) == [case.id for case in CASES], (
        "docs/reliability.md is out of date: run python tests/reliability/test_bad_inputs.py"
    )
    for case in CASES:
        if case.known_bug is not None:  # shown as such, with the bug instead of a message
            assert rows[case.id] == doc_row(case, ""), case.id


def _params() -> list[Any]:
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=case.known_bug)] if case.known_bug else [],
        )
        for case in CASES
    ]


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_refused_with_its_location_and_writes_nothing(
    case: Case, tiny_model_dir: Path, tmp_path: Path
) -> None:
    outcome = run_case(case, Workspace(tmp_path, tiny_model_dir))
    assert "(uncaught)" not in outcome.output, outcome.output
    assert outcome.exit_code == case.exit_code, outcome.output
    for fragment in case.names:
        assert fragment in outcome.message, f"{fragment!r} not in: {outcome.message}"
    assert not outcome.written, f"files written: {outcome.written}"
    assert documented_rows().get(case.id) == doc_row(case, outcome.message), (
        "docs/reliability.md shows another message: run python tests/reliability/test_bad_inputs.py"
    )


# ---------------------------------------------------------------------------------------------
# Regenerating the document's table
# ---------------------------------------------------------------------------------------------


def write_doc_table() -> None:
    """Run every case and rewrite the table between the markers of docs/reliability.md."""
    from mipo_engine.testing import make_tiny_model

    with tempfile.TemporaryDirectory() as scratch:
        model = make_tiny_model(Path(scratch) / "model")
        rows = []
        for index, case in enumerate(CASES):
            if case.known_bug is not None:
                rows.append(doc_row(case, ""))
                continue
            outcome = run_case(case, Workspace(Path(scratch) / f"case-{index}", model))
            rows.append(doc_row(case, outcome.message))
            print(f"{case.id}: exit {outcome.exit_code}: {outcome.message}", file=sys.stderr)
    text = DOC.read_text(encoding="utf-8")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOC.write_text(f"{before}{BEGIN}\n{doc_table(rows)}\n{END}{after}", encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    write_doc_table()
