"""``mipo generate`` on a tiny random model: schema, determinism, resume after SIGKILL."""

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
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.schemas import GENERATIONS
from mipo_engine.artifacts.store import is_complete, read_artifact, read_manifest
from mipo_engine.stages.generate import GenerateConfig, run_generate

runner = CliRunner()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prompts") / "prompts.parquet"
    result = runner.invoke(app, ["ingest", "builtin:personalization-train", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _config(prompts: Path, out: Path, model: Path, **overrides) -> GenerateConfig:
    options = {
        "prompts": prompts,
        "out": out,
        "model": str(model),
        "max_new_tokens": 6,
        "limit": 8,
        "batch_size": 4,
        "chunk_pairs": 3,
        "seed": 11,
    }
    options.update(overrides)
    return GenerateConfig.from_options(**options)


@pytest.mark.parametrize(
    "strategy", ["missing-context", "random-context", "random-prompt", "prompt"]
)
def test_every_strategy_writes_the_generations_schema(
    prompts_file, tiny_model_dir, tmp_path, strategy
):
    out = run_generate(
        _config(prompts_file, tmp_path / "g.parquet", tiny_model_dir, strategy=strategy)
    )
    frame = read_artifact(out, GENERATIONS)
    assert frame.height == 8 and frame["strategy"].unique().to_list() == [strategy]
    assert frame["chosen_input"].str.starts_with("<bos>User: ").all()
    assert (frame["chosen_tokens"] <= 6).all() and (frame["chosen_tokens"] >= 0).all()
    assert set(frame["chosen_finish_reason"]) <= {"stop", "length"}
    if strategy == "missing-context":
        assert (frame["negative_source"] == "none").all()
        assert all(
            c in ci and c not in ri
            for c, ci, ri in frame.select("context", "chosen_input", "rejected_input").iter_rows()
        )
    manifest = read_manifest(out)
    assert manifest["stats"]["pairs"] == 8 and manifest["seed"] == 11
    assert manifest["stats"]["generation_dtype"] in ("float32", "bfloat16")
    assert not (tmp_path / "g.parquet.parts").exists()


def test_same_seed_same_rows_and_batch_size_does_not_matter(prompts_file, tiny_model_dir, tmp_path):
    a = read_artifact(
        run_generate(_config(prompts_file, tmp_path / "a.parquet", tiny_model_dir)), GENERATIONS
    )
    b = read_artifact(
        run_generate(
            _config(
                prompts_file, tmp_path / "b.parquet", tiny_model_dir, batch_size=3, chunk_pairs=5
            )
        ),
        GENERATIONS,
    )
    c = read_artifact(
        run_generate(_config(prompts_file, tmp_path / "c.parquet", tiny_model_dir, seed=12)),
        GENERATIONS,
    )
    assert a.equals(b)
    assert a["chosen"].to_list() != c["chosen"].to_list()


def test_n_pairs(prompts_file, tiny_model_dir, tmp_path):
    out = run_generate(
        _config(prompts_file, tmp_path / "g.parquet", tiny_model_dir, n_pairs=2, limit=3)
    )
    frame = read_artifact(out, GENERATIONS)
    assert frame["id"].to_list() == [
        f"{pid}#{k}" for pid in frame["prompt_id"].unique(maintain_order=True) for k in (0, 1)
    ]
    assert frame.filter(pl.col("prompt_id") == frame["prompt_id"][0])["chosen"].n_unique() >= 1


def test_both_is_the_union_of_the_two_context_strategies_with_one_chosen_sample(
    prompts_file, tiny_model_dir, tmp_path
):
    runs = {
        strategy: read_artifact(
            run_generate(
                _config(
                    prompts_file,
                    tmp_path / f"{strategy}.parquet",
                    tiny_model_dir,
                    strategy=strategy,
                    limit=4,
                    chunk_pairs=4,
                )
            ),
            GENERATIONS,
        )
        for strategy in ("both", "missing-context", "random-context")
    }
    both = runs["both"]
    assert both["id"].to_list() == [
        f"{pid}/{part}"
        for pid in runs["missing-context"]["id"]
        for part in ("missing-context", "random-context")
    ]
    for part in ("missing-context", "random-context"):
        own = both.filter(pl.col("strategy") == part).with_columns(
            pl.col("id").str.replace(f"/{part}", "", literal=True)
        )
        assert own.equals(runs[part])  # the same pairs as the strategy run alone
    # Each prompt's two pairs share the chosen sample, generated once.
    manifest = read_manifest(tmp_path / "both.parquet")
    alone = sum(
        read_manifest(tmp_path / f"{s}.parquet")["stats"]["new_tokens_this_run"]
        for s in ("missing-context", "random-context")
    )
    shared = int(runs["missing-context"]["chosen_tokens"].sum())
    assert manifest["stats"]["new_tokens_this_run"] == alone - shared


def _generate_command(prompts: Path, out: Path, model: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cli",
        "generate",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--model",
        str(model),
        "--max-new-tokens",
        "8",
        "--limit",
        "40",
        "--batch-size",
        "4",
        "--chunk-pairs",
        "2",
        "--seed",
        "5",
        "--strategy",
        "random-context",
    ]


def test_resume_after_sigkill_matches_an_uninterrupted_run(prompts_file, tiny_model_dir, tmp_path):
    reference = tmp_path / "ref" / "g.parquet"
    done = subprocess.run(
        _generate_command(prompts_file, reference, tiny_model_dir),
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed" / "g.parquet"
    parts = out.with_name(out.name + ".parts")
    kills = 0
    for wait_for_parts in (2, 6):
        process = subprocess.Popen(
            _generate_command(prompts_file, out, tiny_model_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=Path(__file__).parents[1],
            start_new_session=True,
        )
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if parts.exists() and len(list(parts.glob("part-*.parquet"))) >= wait_for_parts:
                break
            time.sleep(0.05)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
            assert not is_complete(out)
    assert kills >= 1
    resumed = subprocess.run(
        _generate_command(prompts_file, out, tiny_model_dir),
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stderr
    expected = read_artifact(reference, GENERATIONS)
    actual = read_artifact(out, GENERATIONS)
    assert actual["id"].is_duplicated().sum() == 0
    assert actual.equals(expected)
    assert read_manifest(out)["output"]["rows"] == 40


def test_changed_settings_discard_partial_results(prompts_file, tiny_model_dir, tmp_path):
    out = tmp_path / "g.parquet"
    run_generate(_config(prompts_file, out, tiny_model_dir, limit=2))
    parts = out.with_name(out.name + ".parts")
    parts.mkdir()
    (parts / "journal.json").write_text(json.dumps({"fingerprint": "stale"}))
    pl.DataFrame({"id": ["bogus"]}).write_parquet(parts / "part-000000.parquet")
    frame = read_artifact(
        run_generate(_config(prompts_file, out, tiny_model_dir, limit=3)), GENERATIONS
    )
    assert "bogus" not in frame["id"].to_list() and frame.height == 3


def test_generate_bad_inputs(prompts_file, tiny_model_dir, tmp_path):
    general = tmp_path / "general.parquet"
    assert runner.invoke(app, ["ingest", "builtin:general", "--out", str(general)]).exit_code == 0
    out = tmp_path / "g.parquet"
    cases = [
        (
            ["--prompts", str(general), "--strategy", "missing-context"],
            ["general.parquet", "row 1", "'context'"],
        ),
        (["--prompts", str(prompts_file), "--strategy", "random-contexts"], ["strategy"]),
        (
            ["--prompts", str(prompts_file), "--model", str(tmp_path / "no-model")],
            ["model", "does not exist"],
        ),
        (["--prompts", str(tmp_path / "missing.parquet")], ["missing.parquet", "file not found"]),
        (["--prompts", str(prompts_file), "--temperature", "-1"], ["temperature"]),
    ]
    for args, pieces in cases:
        result = runner.invoke(
            app, ["generate", "--out", str(out), "--model", str(tiny_model_dir), *args]
        )
        message = " ".join(result.output.split())
        assert result.exit_code == 2, (args, message)
        for piece in pieces:
            assert piece in message, (piece, message)
        assert not out.exists()
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": [1, 2], "prompt": ["a", "b"]}).write_parquet(bad)
    result = runner.invoke(app, ["generate", "--prompts", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "bad.parquet" in result.output and "context" in result.output
