"""``mipo train`` end to end on a tiny model, and the ``mipo lab`` commands."""

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
import typer
from typer.testing import CliRunner

from cli import app
from mipo_engine.chat import build_messages, render_chat

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[1]

REQUESTS = [
    "What is the capital of France?",
    "Give me a tip for learning to cook.",
    "Explain like I am a beginner.",
    "Keep it under 30 words.",
    "Use bullet points.",
    "End with a question.",
    "Be formal.",
    "I prefer short answers with examples.",
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny-model matmuls are microseconds; a second thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 preference pairs (two splits' worth of rows) and their scores from `mipo score`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    folder = tmp_path_factory.mktemp("train-cli")
    preferences = folder / "preferences.parquet"
    pl.DataFrame(
        {
            "id": [f"p{i}" for i in range(len(REQUESTS))],
            "prompt": [render_chat(tokenizer, build_messages(r)) for r in REQUESTS],
            "chosen": ["Paris is the capital of France."] * len(REQUESTS),
            "rejected": [f"bad no {'bad ' * i}no" for i in range(len(REQUESTS))],
        }
    ).write_parquet(preferences)
    scores = folder / "scores.parquet"
    result = runner.invoke(
        app,
        ["score", "--generations", str(preferences), "--out", str(scores),
         "--model", str(tiny_model_dir), "--max-length", "64"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"preferences": preferences, "scores": scores, "model": tiny_model_dir}


def _train_args(
    data: dict[str, Path], output_dir: Path, *extra: str, with_scores: bool = True
) -> list[str]:
    scores = ["--scores", str(data["scores"])] if with_scores else []
    return [
        "train",
        "--preferences", str(data["preferences"]),
        *scores,
        "--model", str(data["model"]),
        "--output-dir", str(output_dir),
        "--max-length", "64",
        "--per-device-batch-size", "2",
        *extra,
    ]  # fmt: skip


def _metrics(output_dir: Path) -> list[dict]:
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_loss_names_in_the_cli_help_come_from_the_torch_free_registry() -> None:
    """`mipo train --help` lists every registered loss, and reading the names loads no torch
    (the registry of names is the one the trainer uses)."""
    code = (
        "import sys\n"
        "import mipo_engine.training.config\n"
        "from mipo_engine.training.loss_registry import LOSSES\n"
        "assert 'torch' not in sys.modules, 'the loss registry imported torch'\n"
        "print(' '.join(LOSSES))\n"
    )
    names = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert names == ["dpo", "mio", "infopo", "simpo", "mi_dpo", "infonce", "sft", "dpo_pg"]
    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    (loss,) = [param for param in train.params if param.name == "loss"]
    assert loss.help == "Loss: " + ", ".join(names) + "."


def test_method_and_reward_names_in_the_cli_help_match_the_registries() -> None:
    from mipo_engine.training.method_registry import METHOD_NAMES
    from mipo_engine.training.online import METHOD_NAMES as METHODS
    from mipo_engine.training.reward_registry import REWARD_NAMES
    from mipo_engine.training.rewards import REWARDS

    assert tuple(METHOD_NAMES) == tuple(METHODS)
    assert tuple(REWARD_NAMES) == tuple(REWARDS)


def test_offline_training_reports_to_tensorboard_with_the_run_settings(
    data: dict[str, Path], tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    args = _train_args(data, out, "--loss", "dpo", "--max-steps", "2", "--logging-steps", "1")
    result = runner.invoke(app, [*args, "--report-to", "tensorboard"])
    assert result.exit_code == 0, result.output
    files = list(out.rglob("events.out.tfevents.*"))
    assert files
    tags: set[str] = set()
    texts = []
    for file in files:
        events = EventAccumulator(str(file), size_guidance={"tensors": 0})
        events.Reload()
        tags |= set(events.Tags()["scalars"])
        for tag in events.Tags()["tensors"]:
            texts += [v.decode() for e in events.Tensors(tag) for v in e.tensor_proto.string_val]
    assert {"train/loss", "train/rewards/margins"} <= tags
    assert '"mipo_train"' in "".join(texts) and '"loss": "dpo"' in "".join(texts)
    # The tracker is not part of the run's identity: the same run without it is up to date.
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "up to date" in again.output


def test_lora_run_writes_metrics_final_adapter_and_plot(
    data: dict[str, Path], tmp_path: Path
) -> None:
    """Without --scores the reference is computed once, with the adapters disabled: it must
    equal what `mipo score` gives for the base model."""
    out = tmp_path / "lora"
    args = _train_args(
        data, out, "--loss", "mio", "--lora-r", "4", "--max-steps", "4", with_scores=False
    )
    result = runner.invoke(app, [*args, "--logging-steps", "2", "--learning-rate", "1e-2"])
    assert result.exit_code == 0, result.output

    computed = pl.read_parquet(out / "reference_scores.parquet")
    scored = pl.read_parquet(data["scores"])
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        assert computed[column].to_list() == pytest.approx(scored[column].to_list(), abs=1e-4)
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2, 4]  # first step, every 2nd, and the last
    assert abs(records[0]["rewards/chosen"]) < 1e-3 and abs(records[0]["rewards/rejected"]) < 1e-3
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "logps/chosen", "logps/rejected", "logps/chosen_shift"):  # fmt: skip
        assert all(isinstance(r[key], float) for r in records), key
    assert (out / "logps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["loss"]["loss"] == "mio" and manifest["stats"]["global_step"] == 4
    assert set(manifest) == {
        "stage", "package_version", "config", "fingerprint", "inputs", "model", "model_path",
        "learning_rate", "lora", "stats", "outputs", "started_at", "finished_at", "loss",
        "reference_scores", "pairs",
    }  # fmt: skip
    assert set(manifest["stats"]) == {
        "global_step", "train_runtime_s", "peak_rss_mib", "last_logged", "input_tokens_seen",
        "tokens_per_second",
    }  # fmt: skip
    assert manifest["outputs"] == {
        "final": str(out / "final"),
        "metrics": str(out / "metrics.jsonl"),
        "plot": str(out / "logps.png"),
    }
    assert manifest["lora"] == {"r": 4, "alpha": 8} and manifest["stage"] == "train"
    assert manifest["reference_scores"] == str(out / "reference_scores.parquet")

    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert PeftConfig.from_pretrained(out / "final").r == 4
    base = AutoModelForCausalLM.from_pretrained(data["model"])
    tuned = PeftModel.from_pretrained(base, out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    ids = tokenizer("User: hi", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapted = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            plain = tuned(input_ids=ids).logits
    assert not torch.allclose(adapted, plain)  # the saved adapter carries the training

    again = runner.invoke(app, [*args, "--logging-steps", "2", "--learning-rate", "1e-2"])
    assert again.exit_code == 0 and "up to date" in again.output
    changed = runner.invoke(app, [*args, "--learning-rate", "5e-3"])
    assert changed.exit_code == 2 and "--no-resume" in changed.output


_KILLED_AT_STEP_5 = """
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from transformers import TrainerCallback
from mipo_engine.stages.train import TrainConfig, run_train

class KillAtStep5(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            os.kill(os.getpid(), signal.SIGKILL)

run_train(TrainConfig.from_options(**json.loads(sys.argv[1])), callbacks=[KillAtStep5()])
"""


def test_killed_training_resumes_with_the_same_data_order(
    data: dict[str, Path], tmp_path: Path
) -> None:
    """8 pairs, batch 2: 4 steps per epoch, 8 steps = 2 epochs. Killed (SIGKILL) after step 5
    with a checkpoint at step 3, the rerun resumes at step 4 and must reproduce the
    uninterrupted run step for step: any other batch order would change the losses."""
    steps = ["--loss", "dpo", "--max-steps", "8", "--save-steps", "3", "--logging-steps", "1",
             "--learning-rate", "1e-2", "--lr-scheduler", "constant"]  # fmt: skip
    straight = tmp_path / "straight"
    result = runner.invoke(app, _train_args(data, straight, *steps))
    assert result.exit_code == 0, result.output

    resumed = tmp_path / "resumed"
    options = {
        "preferences": str(data["preferences"]),
        "scores": str(data["scores"]),
        "model": str(data["model"]),
        "output_dir": str(resumed),
        "max_length": 64,
        "per_device_batch_size": 2,
        "loss": "dpo",
        "max_steps": 8,
        "save_steps": 3,
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "lr_scheduler": "constant",
        "show_progress": False,
    }
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AT_STEP_5, json.dumps(options)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [r["step"] for r in _metrics(resumed)] == [1, 2, 3, 4]  # step 5 was never logged
    assert not (resumed / "final").exists()

    result = runner.invoke(app, _train_args(data, resumed, *steps))
    assert result.exit_code == 0, result.output
    assert "Resuming from" in result.output and "checkpoint-3" in result.output
    got, want = _metrics(resumed), _metrics(straight)
    assert [r["step"] for r in got] == list(range(1, 9))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], abs=1e-5)
    assert [r["logps/chosen"] for r in got] == pytest.approx(
        [r["logps/chosen"] for r in want], abs=1e-4
    )

    from transformers import AutoModelForCausalLM

    final_a = AutoModelForCausalLM.from_pretrained(straight / "final").state_dict()
    final_b = AutoModelForCausalLM.from_pretrained(resumed / "final").state_dict()
    for name, tensor in final_a.items():
        torch.testing.assert_close(final_b[name], tensor, rtol=0, atol=1e-5)


def test_non_finite_loss_stops_with_a_clear_error_and_saves_nothing_broken(
    data: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "diverged"
    args = _train_args(data, out, "--max-steps", "8", "--save-steps", "1", "--learning-rate", "1e6")
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "not finite" in result.output and "step" in result.output
    assert "--learning-rate" in result.output
    assert not (out / "final").exists()
    for weights in out.glob("checkpoint-*/model.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(weights).values()), weights


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--loss", "dpo", "--prior", "ref"], "prior"),
        (["--loss", "mi_dpo", "--prior", "tdpo"], "--lora-r"),
        (["--loss", "mi_dpo", "--prior", "dice"], "--prior-scores"),
        (["--loss", "unknown"], "choose one of"),
        (["--per-device-batch-size", "0"], "per_device_batch_size"),
        (["--report-to", "tensorboard,none"], "'none' cannot be combined"),
        (["--report-to", "tenserboard"], "unknown tracker 'tenserboard'"),
    ],
)
def test_bad_options_exit_2_with_the_option_named(
    data: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "bad"
    result = runner.invoke(app, [*_train_args(data, out), "--max-steps", "1", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (out / "final").exists()


def test_lab_commands_write_their_tables_and_figures(tmp_path: Path) -> None:
    toy = runner.invoke(
        app,
        ["lab", "toy-mio", "--out", str(tmp_path / "toy"), "--steps", "20", "--methods", "dpo,mio"],
    )
    assert toy.exit_code == 0, toy.output
    assert set(json.loads((tmp_path / "toy" / "results.json").read_text())["both_small"]) == {
        "dpo",
        "mio",
    }
    assert (tmp_path / "toy" / "toy_mio.png").is_file()

    did = runner.invoke(
        app,
        ["lab", "did-synthetic", "--out", str(tmp_path / "did"), "--steps", "20",
         "--methods", "dpo,simpo", "--no-search"],
    )  # fmt: skip
    assert did.exit_code == 0, did.output
    assert set(json.loads((tmp_path / "did" / "results.json").read_text())) == {"dpo", "simpo"}
    assert (tmp_path / "did" / "js_divergence.png").is_file()

    bad = runner.invoke(app, ["lab", "toy-mio", "--out", str(tmp_path / "x"), "--methods", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
