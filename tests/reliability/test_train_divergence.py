"""Numerics: the loss-stability suite covers every loss, and training stops at the first
non-finite value without writing a broken checkpoint.

``tests/test_losses_numerics.py`` checks every loss for finite values and gradients over
log-probs in [-1e4, 0] (so differences up to +-1e4) in fp32 and bf16, and
``tests/test_train_cli.py`` checks that a learning rate of 1e6 ends ``mipo train`` with a clear
error and no non-finite checkpoint. Added here: a guard that the numerics suite keeps covering
every loss and prior the registry offers, and exact-step checks of the trainer's two guards
(a non-finite loss stops training *before* that step's update; a non-finite weight is never
written to a checkpoint).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch

from mipo_engine.chat import build_messages, render_chat

# ---------------------------------------------------------------------------------------------
# The numerics suite covers the whole registry
# ---------------------------------------------------------------------------------------------


def test_numerics_suite_covers_every_registered_loss_and_prior() -> None:
    from mipo_engine.training.loss_registry import LOSSES
    from mipo_engine.training.priors import PRIORS
    from tests import test_losses_numerics as numerics

    covered_losses = {case.split(":")[0].split("/")[0] for case in numerics.CASES}
    # dpo_pg is an update direction, not a loss value: it has its own finiteness test.
    assert hasattr(numerics, "test_dpo_pg_is_finite_and_never_a_descent_direction_for_l_l")
    assert set(LOSSES) - {"dpo_pg"} <= covered_losses, set(LOSSES) - covered_losses
    covered_priors = {case.split(":")[1].split("/")[0] for case in numerics.CASES if ":" in case}
    assert set(PRIORS) <= covered_priors, set(PRIORS) - covered_priors


def test_numerics_suite_spans_the_required_range_and_dtypes() -> None:
    """Log-probs reach both ends of [-1e4, 0] (so D reaches +-1e4), in fp32 and in bf16."""
    from tests import test_losses_numerics as numerics

    assert min(numerics.EXTREME_LOGPS) == -1e4 and max(numerics.EXTREME_LOGPS) == 0.0
    for test in (numerics.test_every_loss_is_finite_in_value_and_gradient,
                 numerics.test_worst_corners_are_finite):  # fmt: skip
        dtypes = [
            value
            for mark in getattr(test, "pytestmark", [])
            if mark.name == "parametrize" and mark.args[0] == "dtype"
            for value in mark.args[1]
        ]
        assert set(dtypes) == {torch.float32, torch.bfloat16}, test.__name__


# ---------------------------------------------------------------------------------------------
# The trainer's guards, at an exact step
# ---------------------------------------------------------------------------------------------

REQUESTS = [
    "What is the capital of France?",
    "Give me a tip for learning to cook.",
    "Explain like I am a beginner.",
    "Use bullet points.",
    "Be formal.",
    "I prefer short answers with examples.",
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = tmp_path_factory.mktemp("divergence") / "preferences.parquet"
    pl.DataFrame(
        {
            "id": [f"p{i}" for i in range(len(REQUESTS))],
            "prompt": [render_chat(tokenizer, build_messages(r)) for r in REQUESTS],
            "chosen": ["Paris is the capital of France."] * len(REQUESTS),
            "rejected": [f"no {'bad ' * i}no" for i in range(len(REQUESTS))],
        }
    ).write_parquet(path)
    return path


def _poison_weights(model: Any) -> None:
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


def _poisoner(at_step: int, event: str) -> Any:
    """A callback that turns the first trainable weight to NaN at ``event`` of ``at_step``."""
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if event == "begin" and state.global_step + 1 == at_step:
                _poison_weights(kwargs["model"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if event == "end" and state.global_step == at_step:
                _poison_weights(kwargs["model"])

    return Poison()


def _train(pairs: Path, model: Path, output_dir: Path, callback: Any) -> Exception:
    from mipo_engine.stages.train import TrainConfig, run_train

    config = TrainConfig.from_options(
        preferences=pairs,
        output_dir=output_dir,
        model=str(model),
        max_length=64,
        per_device_batch_size=2,
        max_steps=6,
        save_steps=1,
        save_total_limit=10,
        logging_steps=1,
        learning_rate=1e-3,
        lr_scheduler="constant",
        show_progress=False,
    )
    with pytest.raises(Exception) as raised:
        run_train(config, callbacks=[callback])
    return raised.value


def _checkpoint_steps(output_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))


def _assert_checkpoints_finite(output_dir: Path) -> None:
    from safetensors.torch import load_file

    for weights in output_dir.glob("checkpoint-*/model.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(weights).values()), weights


def _logged(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


def test_training_stops_at_the_first_non_finite_loss(
    pairs: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Weights poisoned just before step 4: step 4's loss is NaN. Training must stop there,
    naming step 4, with checkpoints 1-3 (all finite), none for step 4, no final model, and
    only finite values in the metrics log."""
    from mipo_engine.training.trainer import TrainingDiverged

    output_dir = tmp_path / "run"
    error = _train(pairs, tiny_model_dir, output_dir, _poisoner(4, "begin"))
    assert isinstance(error, TrainingDiverged), repr(error)
    assert "not finite" in str(error) and "at step 4" in str(error)
    assert "--learning-rate" in str(error)
    assert _checkpoint_steps(output_dir) == [1, 2, 3]
    assert not (output_dir / "final").exists()
    _assert_checkpoints_finite(output_dir)
    logged = _logged(output_dir)
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert all(math.isfinite(v) for r in logged for v in r.values() if isinstance(v, float))


def test_a_non_finite_weight_is_never_written_to_a_checkpoint(
    pairs: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Weights poisoned after step 2's update (before its checkpoint): the checkpoint of step
    2 must be refused with a clear error, keeping checkpoint 1."""
    from mipo_engine.training.trainer import TrainingDiverged

    output_dir = tmp_path / "run"
    error = _train(pairs, tiny_model_dir, output_dir, _poisoner(2, "end"))
    assert isinstance(error, TrainingDiverged), repr(error)
    assert "not finite after step 2" in str(error)
    assert _checkpoint_steps(output_dir) == [1]
    assert not (output_dir / "final").exists()
    _assert_checkpoints_finite(output_dir)
