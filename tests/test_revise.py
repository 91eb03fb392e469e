"""``mipo revise`` (SFT (Revision), seed 004 sec. 5.1) on a tiny model: rows, the recorded
revision inputs, gold answers, resume after SIGKILL, and SFT on the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.schemas import GENERATIONS, PROMPTS
from mipo_engine.artifacts.store import is_complete, read_artifact, read_manifest, write_artifact
from mipo_engine.chat import build_messages, render_chat
from mipo_engine.stages.revise import ReviseConfig, run_revise

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _generations(path: Path, tokenizer, rows: list[tuple[str, str | None, str]]) -> Path:
    """Pairs as `mipo generate` writes them (missing-context strategy)."""
    records = []
    for i, (prompt, context, prompt_id) in enumerate(rows):
        records.append(
            {
                "id": f"g{i}", "prompt_id": prompt_id, "prompt": prompt, "context": context,
                "chosen": f"A tailored draft number {i}.", "rejected": f"A generic draft {i}.",
                "strategy": "missing-context", "negative_source": "none",
                "chosen_input": render_chat(tokenizer, build_messages(prompt, context)),
                "rejected_input": render_chat(tokenizer, build_messages(prompt)),
                "model": "tiny", "seed": i, "chosen_finish_reason": "stop",
                "rejected_finish_reason": "stop", "chosen_tokens": 5, "rejected_tokens": 4,
            }
        )  # fmt: skip
    frame = pl.DataFrame(records, schema=GENERATIONS.polars_schema())
    return write_artifact(frame, path, GENERATIONS, {"stage": "test"})


@pytest.fixture(scope="module")
def files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    folder = tmp_path_factory.mktemp("revise")
    personal = [
        (f"Give me tip {i} for learning to cook.", f"I prefer short answers {i}.", f"p{i}")
        for i in range(6)
    ]
    math = [(f"What is {i} + {i}?", None, f"m{i}") for i in range(2)]
    prompts = pl.DataFrame(
        {"id": ["m0", "m1"], "prompt": [m[0] for m in math], "context": [None, None],
         "context_items": [None, None], "context_group": [None, None], "task": ["math", "math"],
         "answer": ["0", "2"], "choices": [None, None], "source": ["t", "t"]},
        schema=PROMPTS.polars_schema(),
    )  # fmt: skip
    return {
        "personal": _generations(folder / "personal.parquet", tokenizer, personal),
        "math": _generations(folder / "math.parquet", tokenizer, math),
        "prompts": write_artifact(prompts, folder / "prompts.parquet", PROMPTS, {"stage": "t"}),
    }


def _revise(generations: Path, out: Path, model: Path, **options) -> Path:
    config = ReviseConfig.from_options(
        generations=generations, out=out, model=str(model), max_new_tokens=6, chunk_rows=2,
        **options,
    )  # fmt: skip
    return run_revise(config)


def test_revisions_replace_chosen_and_record_their_inputs(
    files: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = _revise(files["personal"], tmp_path / "r.parquet", tiny_model_dir)
    revised = read_artifact(out, GENERATIONS)
    original = read_artifact(files["personal"], GENERATIONS)
    assert revised["id"].to_list() == original["id"].to_list()
    assert revised["original_chosen"].to_list() == original["chosen"].to_list()
    # What SFT trains under is unchanged: the pair's own conditioning on (x, c).
    for column in ("chosen_input", "rejected", "rejected_input", "prompt", "context"):
        assert revised[column].to_list() == original[column].to_list(), column
    assert revised["chosen"].to_list() != original["chosen"].to_list()
    assert set(revised["revision_mode"].to_list()) == {"examples"}
    row = revised.row(1, named=True)
    # The exact request the model answered: context, request, both drafts, rendered.
    for text in (row["context"], row["prompt"], "A tailored draft number 1.", "A generic draft 1."):
        assert text in row["revision_input"]
    from transformers import AutoTokenizer

    from mipo_engine.stages.revise import revision_messages

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    asked = render_chat(tokenizer, revision_messages(original.row(1, named=True), "examples"))
    assert row["revision_input"] == asked
    assert read_manifest(out)["stats"]["rows"] == 6


def test_revision_with_the_gold_answer(files: dict[str, Path], tiny_model_dir: Path, tmp_path):
    out = _revise(
        files["math"], tmp_path / "m.parquet", tiny_model_dir, mode="answer",
        prompts=files["prompts"],
    )  # fmt: skip
    revised = read_artifact(out, GENERATIONS)
    inputs = revised["revision_input"].to_list()
    assert "#### 0" in inputs[0] and "What is 0 + 0?" in inputs[0]
    assert "#### 2" in inputs[1]


def test_bad_inputs_exit_2_and_write_nothing(files, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    no_context = runner.invoke(
        app, ["revise", "--generations", str(files["math"]), "--out", str(out),
              "--model", str(tiny_model_dir)],
    )  # fmt: skip
    assert no_context.exit_code == 2
    assert "math.parquet, row 1, field 'context'" in no_context.output.replace("\n", " ")
    no_prompts = runner.invoke(
        app, ["revise", "--generations", str(files["math"]), "--out", str(out),
              "--mode", "answer", "--model", str(tiny_model_dir)],
    )  # fmt: skip
    assert no_prompts.exit_code == 2 and "--prompts" in no_prompts.output
    missing_gold = runner.invoke(
        app, ["revise", "--generations", str(files["personal"]), "--out", str(out),
              "--mode", "answer", "--prompts", str(files["prompts"]),
              "--model", str(tiny_model_dir)],
    )  # fmt: skip
    assert missing_gold.exit_code == 2 and "no gold answer" in missing_gold.output
    assert not out.exists() and not out.with_name(out.name + ".parts").exists()


_DYING_REVISER = """
import os, signal, sys
from pathlib import Path
from mipo_engine.backends.hf import HFBackend
from mipo_engine.stages.revise import ReviseConfig, run_revise

class DiesOnThirdChunk(HFBackend):
    calls = 0
    def generate(self, *args, **kwargs):
        DiesOnThirdChunk.calls += 1
        if DiesOnThirdChunk.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().generate(*args, **kwargs)

generations, out, model = sys.argv[1:4]
config = ReviseConfig.from_options(generations=Path(generations), out=Path(out), model=model,
                                   max_new_tokens=6, chunk_rows=2)
run_revise(config, backend=DiesOnThirdChunk(model, show_progress=False))
"""


def test_resume_after_sigkill_gives_the_rows_of_an_uninterrupted_run(
    files: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    uninterrupted = read_artifact(
        _revise(files["personal"], tmp_path / "a" / "r.parquet", tiny_model_dir), GENERATIONS
    )
    out = tmp_path / "b" / "r.parquet"
    out.parent.mkdir()
    killed = subprocess.run(
        [sys.executable, "-c", _DYING_REVISER, str(files["personal"]), str(out),
         str(tiny_model_dir)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not is_complete(out)
    assert len(list(out.with_name(out.name + ".parts").glob("part-*.parquet"))) == 2

    result = runner.invoke(
        app, ["revise", "--generations", str(files["personal"]), "--out", str(out),
              "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--chunk-rows", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Resuming: 4 of 6" in result.output
    assert read_artifact(out, GENERATIONS).equals(uninterrupted)


def test_sft_trains_on_the_revisions(files, tiny_model_dir: Path, tmp_path: Path) -> None:
    revised = _revise(files["personal"], tmp_path / "r.parquet", tiny_model_dir)
    out = tmp_path / "sft"
    result = runner.invoke(
        app, ["train", "--preferences", str(revised), "--loss", "sft", "--model",
              str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "1",
              "--max-length", "96", "--per-device-batch-size", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["loss"]["loss"] == "sft" and manifest["pairs"] == 6
