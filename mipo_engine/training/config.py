"""Settings of ``mipo train``: each field is a CLI option (its description the help text).

Free of torch, so ``mipo train --help`` and a pipeline's settings check load no model code;
the names of methods, rewards and losses come from their registries.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from mipo_engine.artifacts.config import StageConfig
from mipo_engine.commandline import MODEL_HELP, Cli
from mipo_engine.training.loss_registry import LOSSES
from mipo_engine.training.method_registry import METHOD_NAMES
from mipo_engine.training.reward_registry import REWARD_NAMES, JudgeReading

if TYPE_CHECKING:
    from mipo_engine.training.loss_settings import LossSettings

DEFAULT_LR_FULL = 5e-6
DEFAULT_LR_LORA = 1e-4


class TrainConfig(StageConfig):
    """Settings of ``mipo train`` (the CLI options, one for one)."""

    preferences: Path | None = Field(
        None,
        description="Pairs to train on (--method offline): a generations .parquet (mipo "
        "generate) or a preferences .parquet (mipo export).",
    )
    output_dir: Path = Field(
        description="Folder for checkpoints, metrics.jsonl, final/ and the plot."
    )
    method: str = Field(
        "offline",
        description=f"{', '.join(METHOD_NAMES)}: offline preference losses, or online RL on "
        "TRL's trainers (the installed TRL has no PPO trainer).",
    )
    prompts: Path | None = Field(
        None, description="Prompts artifact to sample completions for (online methods)."
    )
    reward: str | None = Field(None, description=f"Online reward: {', '.join(REWARD_NAMES)}.")
    judge_model: str | None = Field(
        None,
        description="Judge of the judge rewards: 'reference' (the frozen starting model), a "
        "model path, or the model name served at --judge-base-url.",
    )
    judge_base_url: str | None = Field(None, description="OpenAI-compatible server of the judge.")
    judge_max_new_tokens: int = Field(
        128, ge=1, description="Tokens the judge may write before its score."
    )
    """Tokens the judge may write (its feedback, then the ``[RESULT] N`` line)."""
    judge_reading: JudgeReading = Field(
        "reply",
        description="How the judge's score is read: reply (the score its greedy reply states) or "
        "expected (sum of k * p(k), p(k) the judge's probability of replying exactly k, over 1-5).",
    )
    judge_weight: float = Field(1.0, description="Weight of the judge in judge+mi.")
    mi_weight: float = Field(1.0, description="Weight of MI in judge+mi.")
    """Weights of ``judge+mi``: judge_weight * judge + mi_weight * mi."""
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (online).")
    max_completion_length: int = Field(
        128, ge=1, description="Tokens per sampled completion (online)."
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (online).")
    kl_coef: float = Field(0.0, ge=0, description="KL penalty toward the starting model (online).")
    """0: no reference copy for the loss."""
    report_to: Annotated[tuple[str, ...], Cli(comma=True)] = Field(
        ("none",),
        description="Trackers, comma-separated: none, tensorboard, wandb, trackio, mlflow, ... "
        "(run settings are logged as their config).",
    )
    scores: Path | None = Field(
        None,
        description="Reference log-probs from mipo score (no reference model in memory). "
        "Without it they are computed once before training.",
    )
    prior_scores: Path | None = Field(
        None, description="Scores of the previous round's policy (for --prior dice)."
    )
    model: str | None = Field(None, description=MODEL_HELP)
    split: str = Field(
        "train", description="Split of a preferences artifact to train on (mipo export)."
    )
    loss: str = Field("dpo", description=f"Loss: {', '.join(LOSSES)}.")
    beta: float | None = Field(
        None, gt=0, description="Loss temperature; default: the paper's value."
    )
    prior: str | None = Field(
        None, description="MI-DPO prior: ref, length, simpo, centropy, tdpo (LoRA), dice."
    )
    gamma: float | None = Field(None, description="SimPO target margin (simpo loss or prior).")
    eta: float | None = Field(None, description="Policy exponent of the centropy prior.")
    length_penalty: float | None = Field(
        None, description="R-DPO length coefficient of the length prior."
    )
    length_normalize: bool | None = Field(
        None, description="Average log-probs over response tokens; default: the paper's choice."
    )
    lora_r: int | None = Field(
        None, ge=1, description="LoRA rank; without it all weights are trained."
    )
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 2 * rank.")
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate; default 5e-6 (full) or 1e-4 (LoRA)."
    )
    per_device_batch_size: int = Field(
        4, ge=1, description="Pairs (offline) or completions (online) per device per step."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step."
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (overrides --epochs).")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs.")
    max_length: int = Field(
        1024, ge=8, description="Tokens per prompt + response (same as mipo score)."
    )
    seed: int = Field(0, description="Seed of initialisation and data order.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory."
    )
    packing: bool = Field(
        True,
        description="Pack a batch's sequences into as few rows as fit, without padding between "
        "them (models whose attention supports it; else padded, length-grouped rows).",
    )
    """Packing uses ``data.pack_sequences``; otherwise, and with False, right-padded rows."""
    logging_steps: int = Field(10, ge=1, description="Log metrics every N steps.")
    save_steps: int = Field(100, ge=1, description="Save a checkpoint every N steps.")
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints to keep.")
    warmup_steps: int = Field(0, ge=0, description="Learning-rate warm-up steps.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="linear, cosine, constant or constant_with_warmup."
    )
    weight_decay: Annotated[float, Cli(hidden=True)] = Field(0.0, ge=0)
    max_grad_norm: Annotated[float, Cli(hidden=True)] = Field(1.0, ge=0)
    resume: bool = Field(
        True,
        description="Continue from the last checkpoint in --output-dir (--no-resume: restart).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda.")
    show_progress: Annotated[bool, Cli(hidden=True)] = True

    def loss_settings(self) -> LossSettings:
        from mipo_engine.training.loss_settings import LossSettings

        return LossSettings.resolve(
            self.loss,
            beta=self.beta,
            length_normalize=self.length_normalize,
            prior=self.prior,
            gamma=self.gamma,
            eta=self.eta,
            length_penalty=self.length_penalty,
        )

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LR_LORA if self.lora_r else DEFAULT_LR_FULL

    @property
    def online(self) -> bool:
        return self.method != "offline"

    def identity(self) -> dict[str, Any]:
        """Settings that change the trained weights (logging and saving cadence do not)."""
        exclude = {
            "output_dir",
            "resume",
            "logging_steps",
            "save_steps",
            "save_total_limit",
            "show_progress",
            "report_to",
            "packing",  # the same sums; only the rounding differs
        }
        if not self.online:  # the offline identity of earlier versions, so their runs resume
            exclude |= set(ONLINE_FIELDS)
        if self.judge_reading == "reply":  # the identity of runs from before the setting
            exclude.add("judge_reading")
        return self.model_dump(mode="json", exclude=exclude)


# Settings only the online methods read.
ONLINE_FIELDS = (
    "method",
    "prompts",
    "reward",
    "judge_model",
    "judge_base_url",
    "judge_max_new_tokens",
    "judge_reading",
    "judge_weight",
    "mi_weight",
    "num_generations",
    "max_completion_length",
    "temperature",
    "kl_coef",
)
