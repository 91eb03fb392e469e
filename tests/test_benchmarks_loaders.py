"""Benchmark loaders against the shared data files (counts from their READMEs) and bad input."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from mipo_engine.artifacts.schemas import PROMPTS, validate_frame
from mipo_engine.sources import benchmarks
from mipo_engine.sources.benchmarks import (
    BENCHMARKS,
    BenchmarkFormatError,
    eval_prompt,
    load_arc,
    load_benchmark,
    load_gsm8k,
    load_mmlu,
    load_svamp,
    math_prompt,
    mcq_prompt,
    shared_data_dir,
    subsample,
)

PROMPT_COLUMNS = {
    "id",
    "prompt",
    "context",
    "context_items",
    "context_group",
    "task",
    "answer",
    "choices",
    "source",
}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    try:
        return shared_data_dir()
    except FileNotFoundError as error:
        pytest.skip(f"shared benchmark data not available: {error}")


def _jsonl_records(path: Path) -> list[dict]:
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
    ]


def _check_rows(rows: list[dict], task: str) -> None:
    """Schema columns, task, unique non-empty ids, no context, answers of the right shape."""
    assert all(set(row) == PROMPT_COLUMNS for row in rows)
    assert all(row["task"] == task for row in rows)
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    assert all(row["context"] is None and row["context_items"] is None for row in rows)
    assert all(row["context_group"] is None for row in rows)
    assert all(isinstance(row["prompt"], str) and row["prompt"] for row in rows)
    for row in rows:
        if task == "math":
            assert row["choices"] is None
            assert re.fullmatch(r"-?\d+(\.\d+)?", row["answer"]), row
        else:
            letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(row["choices"])]
            assert row["answer"] in letters, row


# --------------------------------------------------------------------------------------------
# Real files


@pytest.mark.parametrize(
    ("name", "count"),
    [("test.jsonl", 1319), ("train_subsample_2000_seed0.jsonl", 2000)],
)
def test_gsm8k_files(data_dir: Path, name: str, count: int) -> None:
    path = data_dir / "gsm8k" / name
    rows = load_gsm8k(path)
    assert len(rows) == count
    _check_rows(rows, "math")
    records = _jsonl_records(path)
    for row, record in zip(rows, records, strict=True):
        assert row["prompt"] == record["question"].strip()
        assert row["answer"] == record["answer"].split("#### ")[-1].strip().replace(",", "")
    split = path.stem
    assert rows[0]["id"] == f"gsm8k-{split}-00000"
    assert rows[0]["source"] == f"gsm8k:{split}"


def test_gsm8k_first_test_row(data_dir: Path) -> None:
    first = load_gsm8k(data_dir / "gsm8k" / "test.jsonl")[0]
    assert first["id"] == "gsm8k-test-00000"
    assert first["answer"] == "18"
    assert first["prompt"].startswith("Janet’s ducks lay 16 eggs per day.")


def test_svamp_file(data_dir: Path) -> None:
    path = data_dir / "svamp" / "SVAMP.json"
    rows = load_svamp(path)
    assert len(rows) == 1000
    _check_rows(rows, "math")
    records = json.loads(path.read_text(encoding="utf-8"))
    for row, record in zip(rows, records, strict=True):
        assert row["prompt"] == record["Body"].strip() + " " + record["Question"].strip()
        assert float(row["answer"]) == record["Answer"]
        assert not row["answer"].endswith(".0")
    assert rows[0]["id"] == "svamp-test-chal-1"
    assert rows[0]["answer"] == "51"
    assert rows[0]["source"] == "svamp:test"


ARC_FILES = [
    ("ARC-Challenge/ARC-Challenge-Test.jsonl", "arc_challenge", "test", 1172),
    ("ARC-Challenge/ARC-Challenge-Dev.jsonl", "arc_challenge", "dev", 299),
    ("ARC-Challenge/ARC-Challenge-Train.jsonl", "arc_challenge", "train", 1119),
    ("ARC-Easy/ARC-Easy-Test.jsonl", "arc_easy", "test", 2376),
    ("ARC-Easy/ARC-Easy-Dev.jsonl", "arc_easy", "dev", 570),
    (
        "ARC-Easy/ARC-Easy-Train_subsample_2000_seed0.jsonl",
        "arc_easy",
        "train_subsample_2000_seed0",
        2000,
    ),
]


@pytest.mark.parametrize(("relative", "subset", "split", "count"), ARC_FILES)
def test_arc_files(data_dir: Path, relative: str, subset: str, split: str, count: int) -> None:
    path = data_dir / "arc" / relative
    rows = load_arc(path)
    assert len(rows) == count
    _check_rows(rows, "mcq")
    for row, record in zip(rows, _jsonl_records(path), strict=True):
        assert row["id"] == f"{subset}-{split}-{record['id']}"
        assert row["source"] == f"{subset}:{split}"
        # The gold letter must point at the text whose original label is the answer key.
        gold_text = next(
            c["text"] for c in record["question"]["choices"] if c["label"] == record["answerKey"]
        )
        assert row["choices"]["ABCDE".index(row["answer"])] == gold_text.strip()


def test_arc_numeric_labels_are_relabelled(data_dir: Path) -> None:
    path = data_dir / "arc" / "ARC-Challenge" / "ARC-Challenge-Test.jsonl"
    numeric = [r for r in _jsonl_records(path) if r["question"]["choices"][0]["label"] == "1"]
    assert numeric, "the README says ARC has records with labels '1'-'4'"
    rows = {row["id"]: row for row in load_arc(path)}
    for record in numeric:
        row = rows[f"arc_challenge-test-{record['id']}"]
        # Labels "1".."4" in order map to A..D, so answer key "k" becomes letter number k.
        assert row["answer"] == "ABCDE"[int(record["answerKey"]) - 1]


@pytest.mark.parametrize(
    ("folder", "count", "per_subject"),
    [("test_subsample", 1995, 35), ("dev", 285, 5), ("val", 1531, None)],
)
def test_mmlu_folders(data_dir: Path, folder: str, count: int, per_subject: int | None) -> None:
    rows = load_mmlu(data_dir / "mmlu" / folder)
    assert len(rows) == count
    _check_rows(rows, "mcq")
    assert all(len(row["choices"]) == 4 for row in rows)
    subjects = Counter(row["source"].split(":")[2] for row in rows)
    assert len(subjects) == 57
    if per_subject is not None:
        assert set(subjects.values()) == {per_subject}
    split = "test" if folder == "test_subsample" else folder
    assert all(row["source"].startswith(f"mmlu:{split}:") for row in rows)


def test_mmlu_single_file_with_stray_quote(data_dir: Path) -> None:
    """val/college_medicine_val.csv keeps an upstream stray quote; csv still gives 6 fields."""
    path = data_dir / "mmlu" / "val" / "college_medicine_val.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    rows = load_mmlu(path)
    assert len(rows) == len(records)
    assert [row["answer"] for row in rows] == [record[5] for record in records]
    assert rows[0]["id"] == "mmlu-val-college_medicine-00000"
    assert rows[0]["source"] == "mmlu:val:college_medicine"


def test_registry_loads_default_files(data_dir: Path) -> None:
    expected = {"gsm8k": 1319, "svamp": 1000, "arc_easy": 2376, "arc_challenge": 1172, "mmlu": 1995}
    assert set(BENCHMARKS) == set(expected)
    all_ids: list[str] = []
    for name, count in expected.items():
        rows = load_benchmark(name)
        assert len(rows) == count
        assert BENCHMARKS[name].default_path().exists()
        assert all(row["task"] == BENCHMARKS[name].task for row in rows)
        # The rows pass the project's own prompts-artifact gate unchanged.
        frame = pl.DataFrame(rows, schema=PROMPTS.polars_schema())
        assert validate_frame(frame, PROMPTS).height == count
        all_ids.extend(row["id"] for row in rows)
    assert len(set(all_ids)) == len(all_ids)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("hellaswag")


def test_math_prompt_exemplars_come_from_the_train_subsample(data_dir: Path) -> None:
    """The 8 exemplars are train problems verbatim, with <<...>> calculator notes removed."""
    prompt = math_prompt("How many legs do 3 cats have?")
    blocks = re.findall(r"Question: (.*?)\nAnswer: ?(.*?)(?=\n\nQuestion: |\Z)", prompt, re.DOTALL)
    exemplars = blocks[:-1]
    assert len(exemplars) == 8
    train = {
        record["question"]: re.sub(r"<<[^>]*>>", "", record["answer"])
        for record in _jsonl_records(data_dir / "gsm8k" / "train_subsample_2000_seed0.jsonl")
    }
    for question, answer in exemplars:
        assert train[question] == answer
    assert blocks[-1] == ("How many legs do 3 cats have?", "")


# --------------------------------------------------------------------------------------------
# Prompts (bundled templates only)


def test_math_prompt_shape() -> None:
    prompt = math_prompt("  Tom has 3 apples and buys 2 more. How many does he have?  ")
    assert prompt.count("#### ") == 8
    assert "<<" not in prompt and "${" not in prompt
    assert prompt.endswith(
        "Question: Tom has 3 apples and buys 2 more. How many does he have?\nAnswer:"
    )
    with pytest.raises(ValueError, match="non-empty"):
        math_prompt("   ")


def test_mcq_prompt_shape() -> None:
    prompt = mcq_prompt("Which planet is closest to the Sun?", ["Venus", "Mercury", "Mars"])
    assert (
        "Question: Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Mars\n" in prompt
    )
    assert "The answer is: X" in prompt
    assert prompt.endswith("Reasoning:")
    with pytest.raises(ValueError, match="2 to 26"):
        mcq_prompt("Which?", ["only one"])


def test_eval_prompt_dispatches_on_task() -> None:
    math_row = {"id": "m", "task": "math", "prompt": "What is 2 + 2?", "choices": None}
    mcq_row = {"id": "q", "task": "mcq", "prompt": "Pick one.", "choices": ["x", "y"]}
    assert eval_prompt(math_row) == math_prompt("What is 2 + 2?")
    assert eval_prompt(mcq_row) == mcq_prompt("Pick one.", ["x", "y"])
    with pytest.raises(ValueError, match="'math' and 'mcq'"):
        eval_prompt({"id": "g", "task": "general", "prompt": "Hi"})
    with pytest.raises(ValueError, match="no choices"):
        eval_prompt({"id": "q", "task": "mcq", "prompt": "Pick", "choices": None})


def test_subsample_is_seeded_and_keeps_order() -> None:
    rows = [{"id": str(index)} for index in range(50)]
    first = subsample(rows, 10, seed=1)
    assert first == subsample(rows, 10, seed=1)
    assert len(first) == 10
    positions = [int(row["id"]) for row in first]
    assert positions == sorted(positions)
    assert first != subsample(rows, 10, seed=2)
    assert subsample(rows, 80) == rows
    with pytest.raises(ValueError, match="positive integer"):
        subsample(rows, 0)


# --------------------------------------------------------------------------------------------
# Small files written here: quirks and malformed input


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8"
    )
    return path


def test_jsonl_is_split_on_newline_only(tmp_path: Path) -> None:
    """U+2028 inside a question is text, not a line break (str.splitlines would split it)."""
    question = "Line one\u2028still the same question: 2 + 2?"
    path = _write_jsonl(
        tmp_path / "mini.jsonl", [{"question": question, "answer": "2 + 2 = 4\n#### 4"}]
    )
    rows = load_gsm8k(path)
    assert [row["prompt"] for row in rows] == [question]
    assert rows[0]["id"] == "gsm8k-mini-00000"
    assert load_gsm8k(path, split="custom")[0]["source"] == "gsm8k:custom"


def test_arc_labels_matched_not_positional(tmp_path: Path) -> None:
    """Labels listed as B, A, C with answer key "A": A is the 2nd listed choice -> letter B."""
    record = {
        "id": "q1",
        "question": {
            "stem": "Pick the metal.",
            "choices": [
                {"text": "wood", "label": "B"},
                {"text": "iron", "label": "A"},
                {"text": "glass", "label": "C"},
            ],
        },
        "answerKey": "A",
    }
    numeric = {
        "id": "q2",
        "question": {
            "stem": "Pick the gas.",
            "choices": [{"text": "oxygen", "label": "1"}, {"text": "rock", "label": "2"}],
        },
        "answerKey": "1",
    }
    rows = load_arc(_write_jsonl(tmp_path / "ARC-Easy-Mini.jsonl", [record, numeric]))
    assert rows[0]["choices"] == ["wood", "iron", "glass"]
    assert rows[0]["answer"] == "B"
    assert rows[1]["answer"] == "A"
    assert rows[0]["id"] == "arc_easy-mini-q1"


def _assert_format_error(
    error: pytest.ExceptionInfo, path: Path, row: int | None, field: str | None
) -> None:
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert str(path) in message
    if row is not None:
        assert f"row {row}" in message
    if field is not None:
        assert f"field '{field}'" in message


def test_gsm8k_malformed_rows(tmp_path: Path) -> None:
    good = {"question": "1 + 1?", "answer": "#### 2"}
    path = tmp_path / "bad_json.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(BenchmarkFormatError) as error:
        load_gsm8k(path)
    _assert_format_error(error, path, 3, None)

    path = _write_jsonl(
        tmp_path / "no_marker.jsonl", [good, {"question": "2 + 2?", "answer": "it is 4"}]
    )
    with pytest.raises(BenchmarkFormatError) as error:
        load_gsm8k(path)
    _assert_format_error(error, path, 2, "answer")

    path = _write_jsonl(tmp_path / "no_question.jsonl", [{"answer": "#### 4"}])
    with pytest.raises(BenchmarkFormatError) as error:
        load_gsm8k(path)
    _assert_format_error(error, path, 1, "question")

    path = _write_jsonl(tmp_path / "words.jsonl", [{"question": "x?", "answer": "#### four"}])
    with pytest.raises(BenchmarkFormatError) as error:
        load_gsm8k(path)
    _assert_format_error(error, path, 1, "answer")


def test_svamp_malformed_rows(tmp_path: Path) -> None:
    good = {"ID": "chal-1", "Body": "A has 2.", "Question": "How many?", "Answer": 2.0}
    path = tmp_path / "SVAMP.json"
    path.write_text(
        json.dumps([good, {**good, "ID": "chal-2", "Answer": "many"}]), encoding="utf-8"
    )
    with pytest.raises(BenchmarkFormatError) as error:
        load_svamp(path)
    _assert_format_error(error, path, 2, "Answer")

    path.write_text(json.dumps([good, good]), encoding="utf-8")
    with pytest.raises(BenchmarkFormatError) as error:
        load_svamp(path)
    _assert_format_error(error, path, 2, "id")

    path.write_text(json.dumps({"ID": "x"}), encoding="utf-8")
    with pytest.raises(BenchmarkFormatError, match="JSON array"):
        load_svamp(path)


def test_arc_malformed_rows(tmp_path: Path) -> None:
    choices = [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}]
    good = {"id": "q1", "question": {"stem": "?", "choices": choices}, "answerKey": "A"}
    path = _write_jsonl(tmp_path / "arc.jsonl", [good, {**good, "id": "q2", "answerKey": "E"}])
    with pytest.raises(BenchmarkFormatError) as error:
        load_arc(path)
    _assert_format_error(error, path, 2, "answerKey")

    bad_stem = {**good, "question": {"stem": "", "choices": choices}}
    path = _write_jsonl(tmp_path / "arc_stem.jsonl", [bad_stem])
    with pytest.raises(BenchmarkFormatError) as error:
        load_arc(path)
    _assert_format_error(error, path, 1, "question.stem")

    one_choice = {**good, "question": {"stem": "?", "choices": choices[:1]}}
    path = _write_jsonl(tmp_path / "arc_one.jsonl", [one_choice])
    with pytest.raises(BenchmarkFormatError) as error:
        load_arc(path)
    _assert_format_error(error, path, 1, "question.choices")


def _write_csv(path: Path, records: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(records)
    return path


def test_mmlu_quirks_and_malformed_rows(tmp_path: Path) -> None:
    folder = tmp_path / "mmlu"
    folder.mkdir()
    _write_csv(
        folder / "anatomy_test.csv",
        [
            ["Which bone?\nPick one.", "femur", "None", "ulna", "rib", "B"],
            ["Q2", "a", "b", "c", "d", "D"],
        ],
    )
    _write_csv(folder / "virology_test.csv", [["Q3", "a", "b", "c", "d", "A"]])
    rows = load_mmlu(folder)
    assert [row["id"] for row in rows] == [
        "mmlu-test-anatomy-00000",
        "mmlu-test-anatomy-00001",
        "mmlu-test-virology-00000",
    ]
    assert rows[0]["prompt"] == "Which bone?\nPick one."
    assert rows[0]["choices"] == ["femur", "None", "ulna", "rib"]
    assert rows[0]["answer"] == "B"

    bad = _write_csv(
        tmp_path / "law_test.csv", [["Q", "a", "b", "c", "d", "A"], ["Q", "a", "b", "c", "d", "E"]]
    )
    with pytest.raises(BenchmarkFormatError) as error:
        load_mmlu(bad)
    _assert_format_error(error, bad, 2, "answer")

    short = _write_csv(tmp_path / "law_dev.csv", [["Q", "a", "b", "c", "A"]])
    with pytest.raises(BenchmarkFormatError) as error:
        load_mmlu(short)
    _assert_format_error(error, short, 1, None)

    unnamed = _write_csv(tmp_path / "questions.csv", [["Q", "a", "b", "c", "d", "A"]])
    with pytest.raises(BenchmarkFormatError, match=r"<subject>_<split>\.csv"):
        load_mmlu(unnamed)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no <subject>_<split>\.csv"):
        load_mmlu(empty)


def test_missing_paths_and_shared_dir_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_gsm8k(tmp_path / "absent.jsonl")
    monkeypatch.setenv(benchmarks.SHARED_DATA_ENV, str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv(benchmarks.SHARED_DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="MIPO_SHARED_DATA"):
        shared_data_dir()


def test_no_default_mirror_without_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder beside the checkout is never used on its own: only $MIPO_SHARED_DATA names
    a local mirror, and a benchmark split without it is refused with the variable named."""
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.delenv(benchmarks.SHARED_DATA_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="MIPO_SHARED_DATA"):
        shared_data_dir()
    out = tmp_path / "train.parquet"
    result = CliRunner().invoke(app, ["ingest", "bench:gsm8k:train", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "bench:gsm8k:train" in result.output and "MIPO_SHARED_DATA" in result.output
    assert not out.exists()
