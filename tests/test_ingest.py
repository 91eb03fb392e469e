"""``mipo ingest``: formats, column mapping, built-in sets, and bad input that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.schemas import PROMPTS
from mipo_engine.artifacts.store import is_complete, read_artifact, read_manifest

runner = CliRunner()


def _ingest(*args: str):
    return runner.invoke(app, ["ingest", *args])


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_jsonl_csv_and_parquet_with_column_mapping(tmp_path: Path):
    jsonl = _write_jsonl(
        tmp_path / "a.jsonl",
        [{"uid": "a1", "question": "What is tea?"}, {"uid": "a2", "question": "Why sleep?"}],
    )
    csv = tmp_path / "b.csv"
    csv.write_text('uid,question,answer\nb1,"Two, words?",7\n', encoding="utf-8")
    parquet = tmp_path / "c.parquet"
    pl.DataFrame(
        {"uid": ["c1"], "question": ["Hello?"], "context": ["I like brevity."]}
    ).write_parquet(parquet)
    out = tmp_path / "prompts.parquet"
    result = _ingest(
        str(jsonl),
        str(csv),
        str(parquet),
        "--out",
        str(out),
        "--id-column",
        "uid",
        "--prompt-column",
        "question",
    )
    assert result.exit_code == 0, result.output
    frame = read_artifact(out, PROMPTS)
    assert frame["id"].to_list() == ["a1", "a2", "b1", "c1"]
    assert frame["prompt"].to_list()[2] == "Two, words?"
    assert frame["answer"].to_list()[2] == "7"
    assert frame["task"].to_list() == ["general", "general", "general", "personalization"]
    manifest = read_manifest(out)
    assert manifest["stage"] == "ingest" and manifest["output"]["rows"] == 4
    assert len(manifest["inputs"]) == 3 and all(len(i["sha256"]) == 64 for i in manifest["inputs"])


def test_builtin_sets_and_heldout_split(tmp_path: Path):
    train, heldout, full = (tmp_path / f"{n}.parquet" for n in ("train", "heldout", "full"))
    assert _ingest("builtin:personalization-train", "--out", str(train)).exit_code == 0
    assert _ingest("builtin:personalization-heldout", "--out", str(heldout)).exit_code == 0
    assert _ingest("builtin:personalization", "--out", str(full)).exit_code == 0
    train_ids = set(pl.read_parquet(train)["id"])
    heldout_ids = set(pl.read_parquet(heldout)["id"])
    assert not train_ids & heldout_ids
    assert train_ids | heldout_ids == set(pl.read_parquet(full)["id"])
    assert len(train_ids) + len(heldout_ids) >= 300
    frame = pl.read_parquet(heldout)
    assert frame["context"].null_count() == 0 and set(frame["task"]) == {"personalization"}


def test_benchmark_sources(tmp_path: Path):
    from mipo_engine.sources.benchmarks import shared_data_dir

    try:
        data = shared_data_dir()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    out = tmp_path / "gsm.parquet"
    result = _ingest(
        str(data / "gsm8k" / "test.jsonl"), "--format", "gsm8k", "--out", str(out), "--limit", "5"
    )
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    assert frame.height == 5 and frame["answer"][0] == "18" and frame["task"][0] == "math"
    out2 = tmp_path / "arc.parquet"
    assert _ingest("bench:arc_easy", "--out", str(out2), "--limit", "3").exit_code == 0
    assert pl.read_parquet(out2)["choices"].list.len().min() >= 3


BAD_INPUTS = {
    # name: (file name, raw bytes, expected pieces of the message)
    "missing_prompt_column": ("x.jsonl", b'{"id": "1", "text": "hi"}\n', ["row 1", "'prompt'"]),
    "empty_prompt": (
        "x.jsonl",
        b'{"id": "1", "prompt": "ok"}\n{"id": "2", "prompt": "   "}\n',
        ["row 2", "'prompt'", "empty"],
    ),
    "duplicate_id": (
        "x.jsonl",
        b'{"id": "1", "prompt": "a"}\n{"id": "1", "prompt": "b"}\n',
        ["row 2", "'id'", "duplicate"],
    ),
    "prompt_wrong_type": ("x.jsonl", b'{"id": "1", "prompt": 42}\n', ["row 1", "'prompt'", "text"]),
    "non_utf8": (
        "x.jsonl",
        b'{"id": "1", "prompt": "a"}\n{"id": "2", "prompt": "caf\xe9"}\n',
        ["row 2", "UTF-8"],
    ),
    "invalid_json": (
        "x.jsonl",
        b'{"id": "1", "prompt": "a"}\n{"id": "2", "prompt": \n',
        ["row 2", "invalid JSON"],
    ),
    "unknown_task": (
        "x.jsonl",
        b'{"id": "1", "prompt": "a", "task": "poetry"}\n',
        ["row 1", "'task'", "poetry"],
    ),
    "context_items_not_list": (
        "x.jsonl",
        b'{"id": "1", "prompt": "a", "context_items": [1, 2]}\n',
        ["row 1", "'context_items'", "list of strings"],
    ),
    "not_an_object": ("x.jsonl", b'["a", "b"]\n', ["row 1", "JSON object"]),
    "csv_missing_column": ("x.csv", b"id,question\n1,hi\n", ["row 1", "'prompt'"]),
    "huge_prompt": (
        "x.jsonl",
        json.dumps({"id": "1", "prompt": "w " * 5_000_000}).encode() + b"\n",
        ["row 1", "'prompt'", "characters"],
    ),
    "null_id": (
        "x.jsonl",
        b'{"id": null, "prompt": "a"}\n{"id": "", "prompt": "b"}\n',
        ["row 2", "'id'"],
    ),
    "unknown_extension": ("x.txt", b"hello\n", ["unknown file type"]),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_fails_with_location_and_writes_nothing(tmp_path: Path, name: str):
    file_name, payload, expected = BAD_INPUTS[name]
    source = tmp_path / file_name
    source.write_bytes(payload)
    out = tmp_path / "out" / "prompts.parquet"
    result = _ingest(str(source), "--out", str(out))
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert str(source.name) in message
    for piece in expected:
        assert piece in message, (piece, message)
    assert not out.exists() and not is_complete(out)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_duplicate_ids_across_files_and_missing_file(tmp_path: Path):
    a = _write_jsonl(tmp_path / "a.jsonl", [{"id": "same", "prompt": "x"}])
    b = _write_jsonl(
        tmp_path / "b.jsonl", [{"id": "other", "prompt": "y"}, {"id": "same", "prompt": "z"}]
    )
    out = tmp_path / "p.parquet"
    result = _ingest(str(a), str(b), "--out", str(out))
    assert result.exit_code == 2 and "b.jsonl" in result.output and "row 2" in result.output
    assert "first seen in" in " ".join(result.output.split())
    missing = _ingest(str(tmp_path / "nope.jsonl"), "--out", str(out))
    assert missing.exit_code == 2 and "file not found" in missing.output
    unknown = _ingest("builtin:nonsense", "--out", str(out))
    assert unknown.exit_code == 2 and "personalization" in unknown.output
    assert not out.exists()


def test_template_syntax_in_prompts_is_kept_verbatim(tmp_path: Path):
    from mipo_engine.chat import build_messages

    text = "Compute {{ 7*7 }} and {% if x %}y{% endif %} and ${prompt}"
    source = _write_jsonl(
        tmp_path / "t.jsonl", [{"id": "1", "prompt": text, "context": "${context} {{x}}"}]
    )
    out = tmp_path / "p.parquet"
    assert _ingest(str(source), "--out", str(out)).exit_code == 0
    row = pl.read_parquet(out).row(0, named=True)
    assert row["prompt"] == text
    content = build_messages(row["prompt"], row["context"])[0]["content"]
    assert text in content and "${context} {{x}}" in content


def test_dev_and_fit_split_the_training_rows_by_prompt(tmp_path: Path):
    from mipo_engine.judging.constraints import constraint_type

    frames = {}
    for name in ("train", "dev", "fit"):
        out = tmp_path / f"{name}.parquet"
        assert _ingest(f"builtin:personalization-{name}", "--out", str(out)).exit_code == 0
        frames[name] = pl.read_parquet(out)
    train, dev, fit = (set(frames[n]["id"]) for n in ("train", "dev", "fit"))
    assert dev and fit and not dev & fit and dev | fit == train
    # No prompt is in both: a dev prompt is never trained on while settings are chosen.
    assert not set(frames["dev"]["prompt"]) & set(frames["fit"]["prompt"])
    verifiable = sum(
        any(constraint_type(item) for item in items) for items in frames["dev"]["context_items"]
    )
    assert verifiable >= 40
