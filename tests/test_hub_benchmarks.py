"""Benchmarks from the Hub by name: only ``datasets.load_dataset`` is replaced.

The fake returns rows shaped like the Hub datasets' (built here from the original files by
an independent inverse mapping); the project's mapping back to the original layout, the
cache and the loaders run for real, and must give the same rows as the original files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from mipo_engine.errors import InputError
from mipo_engine.evaluation.tasks import get_task, load_items
from mipo_engine.sources.benchmarks import load_arc, load_gsm8k, load_mmlu, load_svamp
from mipo_engine.sources.hub import HUB_SOURCES, HubUnavailableError
from mipo_engine.sources.ifeval import load_ifeval

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """A fake Hub: ``tables[(repo, config, split)]`` -> rows; calls are recorded."""
    import datasets

    monkeypatch.delenv("MIPO_SHARED_DATA", raising=False)
    monkeypatch.setenv("MIPO_CACHE_DIR", str(tmp_path / "cache"))
    state: dict[str, Any] = {"tables": {}, "calls": []}

    def load_dataset(repo: str, config: str | None = None, *, split: str, revision: str):
        state["calls"].append((repo, config, split, revision))
        try:
            return list(state["tables"][(repo, config, split)])
        except KeyError:
            raise ConnectionError("Couldn't reach the Hugging Face Hub") from None

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return state


def _needs_shared() -> None:
    if not SHARED.is_dir():
        pytest.skip("shared benchmark files not available")


def _jsonl(path: Path, count: int) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    return [json.loads(line) for line in lines[:count]]


def test_gsm8k_from_the_hub_equals_the_original_file(hub: dict, tmp_path: Path) -> None:
    _needs_shared()
    records = _jsonl(SHARED / "gsm8k" / "test.jsonl", 6)
    hub["tables"][("openai/gsm8k", "main", "test")] = records
    local = tmp_path / "test.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    rows = load_items(get_task("gsm8k"))
    assert rows == load_gsm8k(local)
    assert hub["calls"] == [("openai/gsm8k", "main", "test", HUB_SOURCES["gsm8k"].revision)]
    # Cached: a second load makes no call, even offline.
    hub["tables"].clear()
    assert load_items(get_task("gsm8k")) == rows
    assert len(hub["calls"]) == 1


def test_svamp_splits_are_joined_in_original_order(hub: dict) -> None:
    _needs_shared()
    problems = json.loads((SHARED / "svamp" / "SVAMP.json").read_text(encoding="utf-8"))[:10]
    with_concat = [p | {"question_concat": f"{p['Body']} {p['Question']}"} for p in problems]
    repo = "ChilleD/SVAMP"
    hub["tables"][(repo, None, "train")] = with_concat[3:][::-1]
    hub["tables"][(repo, None, "test")] = with_concat[:3]
    rows = load_items(get_task("svamp"))
    assert [row["id"] for row in rows] == [f"svamp-test-chal-{n}" for n in range(1, 11)]
    assert rows == load_svamp(SHARED / "svamp" / "SVAMP.json")[:10]


def test_arc_flat_hub_rows_map_back_to_the_original_records(hub: dict, tmp_path: Path) -> None:
    _needs_shared()
    original = SHARED / "arc" / "ARC-Challenge" / "ARC-Challenge-Test.jsonl"
    records = _jsonl(original, 8)
    hub["tables"][("allenai/ai2_arc", "ARC-Challenge", "test")] = [
        {
            "id": r["id"],
            "question": r["question"]["stem"],
            "choices": {
                "text": [c["text"] for c in r["question"]["choices"]],
                "label": [c["label"] for c in r["question"]["choices"]],
            },
            "answerKey": r["answerKey"],
        }
        for r in records
    ]
    local = tmp_path / "ARC-Challenge-Test.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert load_items(get_task("arc_challenge")) == load_arc(local, subset="arc_challenge")


def test_mmlu_integer_answers_become_letters_per_subject_file(hub: dict, tmp_path: Path) -> None:
    _needs_shared()
    folder = SHARED / "mmlu" / "test_subsample"
    files = sorted(folder.glob("*.csv"))[:2]
    hub_rows = []
    for file in files:
        subject = file.stem.rpartition("_")[0]
        with file.open(newline="", encoding="utf-8") as handle:
            for question, a, b, c, d, answer in list(csv.reader(handle))[:3]:
                hub_rows.append(
                    {
                        "question": question,
                        "subject": subject,
                        "choices": [a, b, c, d],
                        "answer": "ABCD".index(answer.strip()),
                    }
                )
    hub["tables"][("cais/mmlu", "all", "test")] = hub_rows
    rows = load_items(get_task("mmlu"))
    expected = [row for file in files for row in load_mmlu(file)[:3]]
    assert [(r["prompt"], r["choices"], r["answer"]) for r in rows] == [
        (r["prompt"], r["choices"], r["answer"]) for r in expected
    ]
    assert rows[0]["id"] == expected[0]["id"].replace("test_subsample", "test")


def test_ifeval_hub_rows_with_null_kwargs_equal_the_bundled_prompts(hub: dict) -> None:
    bundled = load_ifeval()[:5]
    names = sorted({key for row in bundled for kwargs in row["kwargs"] for key in kwargs})
    hub["tables"][("google/IFEval", None, "train")] = [
        {
            "key": int(row["id"].removeprefix("ifeval-")),
            "prompt": row["prompt"],
            "instruction_id_list": row["instruction_ids"],
            "kwargs": [{name: kwargs.get(name) for name in names} for kwargs in row["kwargs"]],
        }
        for row in bundled
    ]
    assert load_items(get_task("ifeval"), "hub") == bundled
    assert load_items(get_task("ifeval")) == load_ifeval()  # default: bundled, no call
    assert len(hub["calls"]) == 1


@pytest.mark.parametrize(
    ("task", "file_hint"),
    [
        ("gsm8k", "test.jsonl"),
        ("svamp", "SVAMP.json"),
        ("arc_easy", "ARC-Easy-Test.jsonl"),
        ("mmlu", "_test.csv"),
    ],
)
def test_offline_error_names_the_file_to_pass(hub: dict, task: str, file_hint: str) -> None:
    with pytest.raises(HubUnavailableError) as error:
        load_items(get_task(task))
    message = str(error.value)
    assert "--data" in message and file_hint in message
    assert HUB_SOURCES[task].repo in message
    assert isinstance(error.value, InputError) and error.value.exit_code == 2


def test_offline_cli_exits_2_without_writing(hub: dict, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from mipo_engine.commands import eval as eval_command

    app = typer.Typer()
    app.command()(eval_command.command)
    out = tmp_path / "e.parquet"
    result = CliRunner().invoke(app, ["--task", "gsm8k", "--out", str(out), "--limit", "2"])
    assert result.exit_code == 2
    assert "--data" in result.output and "test.jsonl" in result.output
    assert not out.exists()
