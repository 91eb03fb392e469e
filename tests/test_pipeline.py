"""``mipo run``: wiring, skips by fingerprint, resume after SIGKILL, config errors."""

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
import yaml
from typer.testing import CliRunner

from cli import app
from mipo_engine.errors import ConfigError
from mipo_engine.pipeline import load_pipeline, run_pipeline
from mipo_engine.pipeline.config import parse_pipeline
from mipo_engine.pipeline.runner import plan_pipeline

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _two_stage(run_dir: Path, model: Path, **generate) -> dict:
    return {
        "run_dir": str(run_dir),
        "defaults": {"model": str(model), "seed": 4},
        "stages": [
            {"stage": "ingest", "inputs": ["builtin:personalization-train"], "limit": 30},
            {
                "stage": "generate",
                "max_new_tokens": 8,
                "chunk_pairs": 2,
                "batch_size": 4,
                **generate,
            },
        ],
    }


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _statuses(records: list[dict]) -> dict[str, str]:
    return {r["name"]: r["status"] for r in records}


def test_wiring_fills_inputs_from_earlier_stages(tmp_path, tiny_model_dir):
    config = parse_pipeline(
        {
            "run_dir": str(tmp_path),
            "stages": [
                {"stage": "ingest", "inputs": ["builtin:general"]},
                {"stage": "generate", "strategy": "random-prompt"},
                {"stage": "score"},
                {"stage": "export"},
                {"stage": "train", "lora_r": 4},
                {"stage": "eval", "name": "after", "task": "gsm8k", "policy": "train"},
            ],
        }
    )
    plan = {stage.entry.name: stage.options for stage in plan_pipeline(config)}
    assert plan["generate"]["prompts"] == str(tmp_path / "prompts.parquet")
    assert plan["score"]["generations"] == str(tmp_path / "generations.parquet")
    assert plan["export"]["scores"] == str(tmp_path / "scores.parquet")
    assert plan["train"]["preferences"] == str(tmp_path / "preferences.parquet")
    assert plan["train"]["output_dir"] == str(tmp_path / "train")
    assert plan["after"]["adapter"] == str(tmp_path / "train" / "final")


def test_online_train_stage_reads_the_prompts_and_runs(tmp_path, tiny_model_dir):
    """A train stage with an online method is wired to the prompts, not to pairs, and its
    policy can be evaluated like an offline one."""
    config = parse_pipeline(
        {
            "run_dir": str(tmp_path),
            "defaults": {"model": str(tiny_model_dir)},
            "stages": [
                {"stage": "ingest", "inputs": ["builtin:personalization-train"], "limit": 4},
                {"stage": "generate", "max_new_tokens": 4, "batch_size": 4},
                {"stage": "train", "name": "grpo_mi", "method": "grpo", "reward": "mi",
                 "num_generations": 2, "per_device_batch_size": 4, "max_steps": 1,
                 "max_completion_length": 4, "max_length": 96, "lora_r": 2},
                {"stage": "eval", "name": "after", "task": "gsm8k", "policy": "grpo_mi"},
            ],
        }
    )  # fmt: skip
    plan = {stage.entry.name: stage for stage in plan_pipeline(config)}
    assert plan["grpo_mi"].options["prompts"] == str(tmp_path / "prompts.parquet")
    assert plan["grpo_mi"].options.get("preferences") is None
    assert plan["after"].options["adapter"] == str(tmp_path / "grpo_mi" / "final")
    records = run_pipeline(config, to_stage="grpo_mi")
    assert _statuses(records)["grpo_mi"] == "done"
    metrics = (tmp_path / "grpo_mi" / "metrics.jsonl").read_text().splitlines()
    assert "rewards/mi/mean" in json.loads(metrics[-1])


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"stages": [{"stage": "ingest", "inputs": ["builtin:general"]}]}, "run_dir"),
        ({"run_dir": "x", "stages": [{"stage": "ingest", "input": ["a"]}]}, "stages[0].input"),
        ({"run_dir": "x", "stages": [{"stage": "generat"}]}, "stages[0].stage"),
        ({"run_dir": "x", "stage": []}, "stage"),
        (
            {"run_dir": "x", "defaults": {"temprature": 1}, "stages": [{"stage": "ingest"}]},
            "defaults.temprature",
        ),
        (
            {
                "run_dir": "x",
                "stages": [{"stage": "generate", "prompts": "p.parquet", "temperature": -1}],
            },
            "stages[0].temperature",
        ),
        ({"run_dir": "x", "stages": [{"stage": "score"}]}, "stages[0].generations"),
        (
            {"run_dir": "x", "stages": [{"stage": "eval", "task": "gsm8k", "policy": "train"}]},
            "stages[0].policy",
        ),
        ({"run_dir": "x", "rounds": 0, "stages": [{"stage": "ingest"}]}, "rounds"),
    ],
)
def test_config_errors_name_the_key_before_anything_runs(tmp_path, config, key):
    with pytest.raises(ConfigError) as error:
        plan_pipeline(parse_pipeline(config))
    assert error.value.key == key, str(error.value)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path):
    path = _write(
        tmp_path / "bad.yaml",
        {"run_dir": str(tmp_path / "run"), "stages": [{"stage": "ingest", "limt": 3}]},
    )
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "stages[0].limt" in result.output and "limit" in result.output
    assert not (tmp_path / "run").exists()


def test_changing_one_option_reruns_that_stage_and_later_ones_only(tmp_path, tiny_model_dir):
    config = _two_stage(tmp_path / "run", tiny_model_dir)
    config["stages"][0]["limit"] = 4
    config["stages"].append({"stage": "score", "batch_size": 4})
    first = run_pipeline(parse_pipeline(config))
    assert set(_statuses(first).values()) == {"done"}
    again = run_pipeline(parse_pipeline(config))
    assert set(_statuses(again).values()) == {"skipped"}
    config["stages"][1]["max_new_tokens"] = 5
    changed = _statuses(run_pipeline(parse_pipeline(config)))
    assert changed == {"ingest": "skipped", "generate": "done", "score": "done"}
    config["stages"][2]["max_length"] = 300
    changed = _statuses(run_pipeline(parse_pipeline(config)))
    assert changed == {"ingest": "skipped", "generate": "skipped", "score": "done"}


def _run_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "cli", "run", str(path)]


def _kill_when(path: Path, ready, timeout: float = 300) -> bool:
    process = subprocess.Popen(
        _run_command(path),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    process.wait()
    return False


def test_runner_killed_between_and_inside_stages_resumes_to_the_same_result(
    tmp_path, tiny_model_dir
):
    reference = run_pipeline(parse_pipeline(_two_stage(tmp_path / "reference", tiny_model_dir)))
    assert set(_statuses(reference).values()) == {"done"}
    run_dir = tmp_path / "killed"
    path = _write(tmp_path / "pipeline.yaml", _two_stage(run_dir, tiny_model_dir))
    state = run_dir / "state.json"

    def between_stages() -> bool:  # ingest recorded as done, generate not started
        if not state.is_file():
            return False
        try:
            stages = json.loads(state.read_text())["stages"]
        except json.JSONDecodeError:
            return False
        return stages.get("ingest", {}).get("status") == "done"

    parts = run_dir / "generations.parquet.parts"

    def inside_generate() -> bool:
        return parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 3

    killed = [_kill_when(path, between_stages), _kill_when(path, inside_generate)]
    assert any(killed)
    finished = subprocess.run(
        _run_command(path), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert finished.returncode == 0, finished.stderr
    assert "ingest: up to date" in finished.stderr
    expected = pl.read_parquet(tmp_path / "reference" / "generations.parquet")
    actual = pl.read_parquet(run_dir / "generations.parquet")
    assert actual.equals(expected)
    assert not parts.exists()


def test_every_shipped_config_plans(tmp_path):
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_pipeline(path)
        plan = plan_pipeline(config)
        assert plan, path
        header = path.read_text().splitlines()[:6]
        assert any("mipo run configs/" in line for line in header), (
            f"{path.name}: header lacks its command"
        )


def test_quickstart_runs_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir):
    raw = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    raw["run_dir"] = str(tmp_path / "quickstart")
    raw["defaults"]["model"] = str(tiny_model_dir)
    for stage in raw["stages"]:
        if "backend" in stage:
            stage["backend"] = "hf"  # vLLM's CPU attention needs wider heads than the tiny model's
        if stage["stage"] in ("generate", "eval"):
            stage["max_new_tokens"] = 8
        if stage["stage"] == "eval":
            stage["limit"] = 4
        if stage["stage"] == "train":
            stage.update(max_steps=3, save_steps=2, logging_steps=1)
    records = run_pipeline(parse_pipeline(raw))
    assert [r["status"] for r in records] == ["done"] * 7
    run_dir = tmp_path / "quickstart"
    for name in ("prompts", "generations", "scores", "preferences", "eval_base", "eval_trained"):
        assert (run_dir / f"{name}.parquet").is_file(), name
    metrics = (run_dir / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= 3
    assert json.loads((run_dir / "eval_trained.summary.json").read_text())
