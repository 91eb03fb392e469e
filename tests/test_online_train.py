"""``mipo train --method grpo|rloo`` on a tiny model: rewards logged, checkpoints, resume,
and the option errors (exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.schemas import PROMPTS
from mipo_engine.artifacts.store import write_artifact

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _prompts(path: Path, rows: list[dict]) -> Path:
    columns = {c.name: [row.get(c.name) for row in rows] for c in PROMPTS.columns}
    frame = pl.DataFrame(columns, schema=PROMPTS.polars_schema())
    return write_artifact(frame, path, PROMPTS, {"stage": "test"})


@pytest.fixture(scope="module")
def prompt_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("online-prompts")
    personal = [
        {"id": f"p{i}", "prompt": text, "context": ctx, "task": "personalization", "source": "t"}
        for i, (text, ctx) in enumerate(
            [
                ("Give me a tip for learning to cook.", "I prefer short answers."),
                ("What is the capital of France?", "Explain like I am a beginner."),
                ("Give me a tip for learning to cook.", "Be formal."),
                ("What is the capital of France?", None),
            ]
        )
    ]
    math = [
        {"id": f"m{i}", "prompt": f"What is {i} + {i}?", "answer": f"98765432{i}", "task": "math",
         "source": "t"}
        for i in range(4)
    ]  # fmt: skip
    no_gold = [{**row, "answer": None} for row in math]
    return {
        "personal": _prompts(folder / "personal.parquet", personal),
        "math": _prompts(folder / "math.parquet", math),
        "no_gold": _prompts(folder / "no_gold.parquet", no_gold),
    }


def _args(model: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--method", "grpo",
        "--prompts", str(prompts),
        "--model", str(model),
        "--output-dir", str(out),
        "--per-device-batch-size", "4",
        "--num-generations", "2",
        "--max-completion-length", "6",
        "--max-steps", "2",
        "--logging-steps", "1",
        "--save-steps", "1",
        "--max-length", "96",
        *extra,
    ]  # fmt: skip


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_grpo_steps_with_the_mi_reward_then_resume(
    tiny_model_dir: Path, prompt_sets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "grpo"
    result = runner.invoke(
        app, _args(tiny_model_dir, prompt_sets["personal"], out, "--reward", "mi")
    )
    assert result.exit_code == 0, result.output
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        # The MI reward of random-weight sampled text is a finite, nonzero log-ratio.
        assert "rewards/mi/mean" in record and record["rewards/mi/mean"] != 0
        assert isinstance(record["rewards/mi/std"], float)
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert (out / "final" / "config.json").is_file()
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["method"] == "grpo" and manifest["reward"] == "mi"
    assert manifest["stats"]["global_step"] == 2
    assert set(manifest) == {
        "stage", "package_version", "config", "fingerprint", "inputs", "model", "model_path",
        "learning_rate", "lora", "stats", "outputs", "started_at", "finished_at", "method",
        "reward", "judge", "prompts",
    }  # fmt: skip
    assert set(manifest["stats"]) == {
        "global_step", "train_runtime_s", "peak_rss_mib", "last_logged",
        "judge_unparsed_this_run",
    }  # fmt: skip
    assert set(manifest["outputs"]) == {"final", "metrics"}

    # A finished run with the same settings is a no-op.
    again = runner.invoke(
        app, _args(tiny_model_dir, prompt_sets["personal"], out, "--reward", "mi")
    )
    assert again.exit_code == 0 and "up to date" in again.output

    # Killed after step 1 (simulated: the step-2 checkpoint, final model and manifest are
    # gone): the rerun resumes from checkpoint-1 and trains only step 2.
    import shutil

    shutil.rmtree(out / "checkpoint-2")
    shutil.rmtree(out / "final")
    (out / "train_manifest.json").unlink()
    resumed = runner.invoke(
        app, _args(tiny_model_dir, prompt_sets["personal"], out, "--reward", "mi")
    )
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming from" in resumed.output and "checkpoint-1" in resumed.output
    assert [r["step"] for r in _metrics(out)] == [1, 2]
    assert (out / "checkpoint-2").is_dir() and (out / "final").is_dir()

    # The report shows the online run with its method, reward and reward curve.
    report = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert "grpo (mi): 2 steps on 4 prompts" in page
    assert (tmp_path / "report" / "online_rewards.png").is_file()


def test_rloo_with_lora_and_the_verify_reward(
    tiny_model_dir: Path, prompt_sets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "rloo"
    args = _args(tiny_model_dir, prompt_sets["math"], out, "--reward", "verify", "--lora-r", "4")
    args[args.index("grpo")] = "rloo"
    args[args.index("--max-steps") + 1] = "1"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = _metrics(out)[-1]
    # Six random tokens never write a nine-digit gold answer: every verify reward is 0.
    assert record["rewards/verify/mean"] == 0.0
    assert (out / "final" / "adapter_config.json").is_file()


def test_judge_reward_with_the_reference_as_judge_records_unreadable_replies(
    tiny_model_dir: Path, prompt_sets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "rlaif"
    args = _args(
        tiny_model_dir, prompt_sets["personal"], out,
        "--reward", "judge", "--judge-model", "reference",
    )  # fmt: skip
    args[args.index("--max-steps") + 1] = "1"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = _metrics(out)[-1]
    # A random-weight judge writes no readable score: the step's 4 completions (2 prompts x
    # 2 generations) are all unparsed, recorded in the metrics and the replies file.
    assert record["rewards/judge/unparsed"] == 4
    replies = (out / "judge_unparsed.jsonl").read_text().splitlines()
    assert len(replies) == 4
    assert json.loads(replies[0])["prompt"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--method", "dpo-online", "--reward", "mi"], "unknown method"),
        (["--reward", "bleu"], "unknown reward 'bleu'"),
        ([], "no --reward"),
        (["--reward", "judge"], "needs a judge"),
        (["--reward", "judge+mi"], "needs a judge"),
        (["--method", "ppo", "--reward", "mi"], "no PPO trainer"),
        (["--reward", "mi", "--num-generations", "3"], "multiple of --num-generations"),
        (["--reward", "mi", "--report-to", "nosuchtracker"], "unknown tracker"),
        (["--reward", "mi", "--report-to", "neptune"], "tracker 'neptune' is not installed"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(
    tiny_model_dir: Path, prompt_sets: dict[str, Path], tmp_path: Path, extra, needle
) -> None:
    out = tmp_path / "out"
    args = _args(tiny_model_dir, prompt_sets["personal"], out, *extra)
    if "--method" in extra:  # the later --method wins; drop the default one
        first = args.index("--method")
        del args[first : first + 2]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output.replace("\n", " ")
    assert not out.exists()


def test_verify_on_prompts_without_gold_answers_exits_2(
    tiny_model_dir: Path, prompt_sets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, _args(tiny_model_dir, prompt_sets["no_gold"], out, "--reward", "verify")
    )
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", " ")
    assert "no_gold.parquet" in text and "row 1" in text and "'answer'" in text
    assert not out.exists()


def test_offline_refuses_online_inputs(tiny_model_dir: Path, prompt_sets, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["train", "--prompts", str(prompt_sets["math"]), "--output-dir", str(out),
         "--model", str(tiny_model_dir)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--preferences" in result.output
    assert not out.exists()


def _tensorboard_events(out: Path) -> tuple[set[str], str]:
    """(scalar tags, all text summaries joined) of the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(out.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {out}"
    tags: set[str] = set()
    texts: list[str] = []
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"tensors": 0})
        events.Reload()
        tags |= set(events.Tags()["scalars"]) | set(events.Tags()["tensors"])
        for tag in events.Tags()["tensors"]:
            for event in events.Tensors(tag):
                values = event.tensor_proto.string_val
                texts.extend(v.decode("utf-8", "replace") for v in values)
    return tags, "\n".join(texts)


def test_report_to_tensorboard_logs_rewards_and_run_settings(
    tiny_model_dir: Path, prompt_sets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "tb"
    args = _args(
        tiny_model_dir, prompt_sets["personal"], out, "--reward", "mi",
        "--report-to", "tensorboard",
    )  # fmt: skip
    args[args.index("--max-steps") + 1] = "1"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    tags, texts = _tensorboard_events(out)
    assert "train/rewards/mi/mean" in tags
    # The run's settings are part of the config the tracker records.
    assert '"mipo_train"' in texts and '"reward": "mi"' in texts
