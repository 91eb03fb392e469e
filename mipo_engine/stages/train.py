"""``mipo train``: preference pairs (+ scores) -> a trained model in ``output_dir``.

A recipe in torchtune's shape, read top to bottom; each step's parts live under ``training/``:

    setup    settings checked (``inputs``), the model (``loading``), the pairs, reference
             log-probs (``reference``), arguments (``arguments``), the trainer (``trainer``)
    train    resumed from the last complete checkpoint (``checkpoints``, which also describes
             the output folder's files)
    save     ``final/``, written whole or not at all
    cleanup  the curves plotted, then the manifest, written last through the stage kernel

The online methods (GRPO, RLOO on TRL) sample completions of prompts and reward them instead
of reading pairs, so they have their own recipe of the same four steps (``run_online_train``);
that second recipe and the documented settings take this file past 250 lines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field
from rich.console import Console

from mipo_engine.artifacts.manifest import redact
from mipo_engine.artifacts.metrics_log import read_metrics
from mipo_engine.artifacts.pairs import attach_scores, has_reference
from mipo_engine.artifacts.run import StageConfig, StageRun
from mipo_engine.modeling.policy import supports_packing
from mipo_engine.training import checkpoints as folder
from mipo_engine.training.arguments import base_arguments, training_arguments
from mipo_engine.training.data import PairCollator, PairDataset, encode_examples
from mipo_engine.training.inputs import (
    check_combinations,
    check_method,
    check_online,
    check_paths,
    load_training_pairs,
    read_online_prompts,
)
from mipo_engine.training.loading import load_policy, use_cuda
from mipo_engine.training.loss_settings import LossSettings
from mipo_engine.training.metrics import logging_callbacks, quiet_trainer, run_stats
from mipo_engine.training.tracking import attach_run_config, check_report_to

console = Console(stderr=True, soft_wrap=True)  # paths stay on one line

DEFAULT_LR_FULL = 5e-6
DEFAULT_LR_LORA = 1e-4


class TrainConfig(StageConfig):
    """Settings of ``mipo train`` (the CLI options, one for one)."""

    preferences: Path | None = None
    """A ``generations`` or ``preferences`` artifact (``method: offline``)."""
    output_dir: Path
    method: str = "offline"
    """``offline`` (preference losses) or an online method: grpo, rloo (TRL's trainers)."""
    prompts: Path | None = None
    """A ``prompts`` artifact (online methods): completions are sampled for each row."""
    reward: str | None = None
    """Online reward: mi, judge, judge+mi, verify (``training.rewards.REWARDS``)."""
    judge_model: str | None = None
    """Judge of the judge rewards: ``reference`` (the frozen starting model), a model path, or
    the model name on ``judge_base_url``."""
    judge_base_url: str | None = None
    """An OpenAI-compatible server to judge with."""
    judge_max_new_tokens: int = Field(128, ge=1)
    """Tokens the judge may write (its feedback, then the ``[RESULT] N`` line)."""
    judge_weight: float = 1.0
    mi_weight: float = 1.0
    """Weights of ``judge+mi``: judge_weight * judge + mi_weight * mi."""
    num_generations: int = Field(4, ge=2)
    """Completions sampled per prompt (online)."""
    max_completion_length: int = Field(128, ge=1)
    temperature: float = Field(1.0, gt=0)
    kl_coef: float = Field(0.0, ge=0)
    """KL penalty toward the starting model (online; 0: no reference copy for the loss)."""
    report_to: tuple[str, ...] = ("none",)
    """Trackers the Trainer logs to: none, or integration names (tensorboard, wandb, ...)."""
    scores: Path | None = None
    """Reference log-probs from ``mipo score`` (else computed once before training)."""
    prior_scores: Path | None = None
    """Previous-round policy scores for MI-DPO's ``dice`` prior."""
    model: str | None = None
    """Model name, path or hub id; None: the default catalogue model (``mipo models``)."""
    split: str = "train"
    """Rows of this ``split`` of a preferences artifact (generations have no splits)."""
    loss: str = "dpo"
    beta: float | None = Field(None, gt=0)
    """None: the registry's default for the loss (the paper's choice)."""
    prior: str | None = None
    gamma: float | None = None
    eta: float | None = None
    length_penalty: float | None = None
    length_normalize: bool | None = None
    """None: the paper's choice for the loss."""
    lora_r: int | None = Field(None, ge=1)
    """LoRA rank; None trains all weights."""
    lora_alpha: float | None = Field(None, gt=0)
    """LoRA scale numerator; None: 2 * lora_r."""
    learning_rate: float | None = Field(None, gt=0)
    """None: 5e-6 for full fine-tuning, 1e-4 with LoRA."""
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; overrides ``epochs`` when given."""
    epochs: float = Field(1.0, gt=0)
    max_length: int = Field(1024, ge=8)
    """Tokens per prompt + response; must equal ``mipo score --max-length``."""
    seed: int = 0
    gradient_checkpointing: bool = False
    packing: bool = True
    """Pack sequences into shared rows (``data.pack_sequences``) when the model's attention
    supports it; otherwise, and with False, right-padded rows."""
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    resume: bool = True
    """Continue from the last checkpoint in ``output_dir`` (False: start over)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    show_progress: bool = True

    def loss_settings(self) -> LossSettings:
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
        return self.model_dump(mode="json", exclude=exclude)


# Settings only the online methods read.
ONLINE_FIELDS = (
    "method",
    "prompts",
    "reward",
    "judge_model",
    "judge_base_url",
    "judge_max_new_tokens",
    "judge_weight",
    "mi_weight",
    "num_generations",
    "max_completion_length",
    "temperature",
    "kl_coef",
)


def run_train(config: TrainConfig, *, callbacks: list[Any] | None = None) -> Path:
    """Train on ``config.preferences`` (or online on ``config.prompts``); return the path of
    ``output_dir/final``."""
    check_method(config)
    check_report_to(config.report_to)
    if config.online:
        return run_online_train(config, callbacks=callbacks)

    # -- setup ------------------------------------------------------------------------------
    started, settings, output_dir = time.perf_counter(), config.loss_settings(), config.output_dir
    check_paths(config)
    check_combinations(config, settings)
    run = StageRun(
        "train",
        output_dir,
        config.identity(),
        {
            "preferences": config.preferences,
            "scores": config.scores,
            "prior_scores": config.prior_scores,
        },
    )
    if _up_to_date(config, run):
        return output_dir / folder.FINAL_DIR
    from transformers import set_seed

    from mipo_engine.training.reference import reference_scores_once
    from mipo_engine.training.trainer import PreferenceTrainer

    cuda = use_cuda(config)
    set_seed(config.seed)
    model, tokenizer, model_path = load_policy(config, cuda=cuda)
    pairs = load_training_pairs(config, settings, tokenizer)
    collator = PairCollator(tokenizer.pad_token_id, pack=config.packing and supports_packing(model))

    def encode(frame: pl.DataFrame) -> PairDataset:
        return PairDataset(
            encode_examples(
                frame,
                tokenizer,
                max_length=config.max_length,
                with_cross=settings.needs_cross_inputs,
            )
        )

    dataset = encode(pairs)
    # Built before anything is written: it sets up the process group of a multi-process launch.
    args = training_arguments(config, cuda=cuda)
    reference_path = None
    if settings.needs_reference and not has_reference(pairs):
        if cuda:
            model.to(args.device)  # this process's GPU under a multi-GPU launch
        # Before the first update (and any checkpoint load): the model is still the reference.
        identity = {"model": config.model, "max_length": config.max_length}
        identity["preferences"] = str(config.preferences)
        reference = StageRun(
            "train-reference",
            output_dir / folder.REFERENCE_FILE,
            identity,
            {"preferences": config.preferences},
        )
        reference_path = reference_scores_once(
            reference, config, model, pairs, dataset, collator, args
        )
        pairs = attach_scores(pairs, reference_path)
        dataset = encode(pairs)
    _attach_run_config(config, model)
    trainer = quiet_trainer(
        PreferenceTrainer(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=_callbacks(config) + list(callbacks or []),
            settings=settings,
        )
    )

    # -- train --------------------------------------------------------------------------------
    result = folder.train_resumably(trainer, output_dir, run.fingerprint, resume=config.resume)

    # -- save ---------------------------------------------------------------------------------
    final = folder.save_final(trainer, output_dir)

    # -- cleanup: the curves, then the manifest (last: it marks the run complete) -------------
    if trainer.args.should_save:
        from mipo_engine.training.plots import plot_training_curves

        records = read_metrics(output_dir / folder.METRICS_FILE)
        plot = output_dir / folder.PLOT_FILE
        if records:
            plot_training_curves(
                output_dir / folder.METRICS_FILE, plot, title=f"mipo train --loss {settings.loss}"
            )
        stats = run_stats(trainer, result, records, time.perf_counter() - started, tokens=True)
        _write_manifest(
            run,
            config,
            model_path,
            stats,
            outputs={**folder.output_paths(output_dir), "plot": str(plot) if records else None},
            loss=settings.describe(),
            reference_scores=str(reference_path or config.scores)
            if settings.needs_reference
            else None,
            pairs=len(dataset),
        )
    return final


def run_online_train(config: TrainConfig, *, callbacks: list[Any] | None = None) -> Path:
    """GRPO/RLOO on ``config.prompts`` with ``config.reward``; return ``output_dir/final``."""
    # -- setup ------------------------------------------------------------------------------
    started, output_dir = time.perf_counter(), config.output_dir
    check_paths(config)
    check_online(config)
    frame = read_online_prompts(config)
    run = StageRun("train", output_dir, config.identity(), {"prompts": config.prompts})
    if _up_to_date(config, run):
        return output_dir / folder.FINAL_DIR
    from transformers import set_seed

    from mipo_engine.training.online import (
        build_online_trainer,
        online_arguments,
        online_reward,
        prompt_records,
        save_unparsed_replies,
    )

    cuda = use_cuda(config)
    set_seed(config.seed)
    model, tokenizer, model_path = load_policy(config, cuda=cuda)
    reward, backends = online_reward(config, cuda=cuda)
    args = online_arguments(config, base_arguments(config, cuda=cuda))
    _attach_run_config(config, model)
    trainer = quiet_trainer(
        build_online_trainer(
            config.method,
            model,
            tokenizer,
            prompt_records(frame, config.seed),
            reward,
            args,
            _callbacks(config) + list(callbacks or []),
        )
    )

    # -- train --------------------------------------------------------------------------------
    try:
        result = folder.train_resumably(trainer, output_dir, run.fingerprint, resume=config.resume)
    finally:
        for backend in backends:
            backend.close()

    # -- save ---------------------------------------------------------------------------------
    final = folder.save_final(trainer, output_dir)

    # -- cleanup: the judge's unreadable replies, then the manifest ---------------------------
    if trainer.args.should_save:
        unparsed = save_unparsed_replies(reward, output_dir / folder.JUDGE_REPLIES_FILE)
        records = read_metrics(output_dir / folder.METRICS_FILE)
        stats = run_stats(trainer, result, records, time.perf_counter() - started)
        stats["judge_unparsed_this_run"] = unparsed
        _write_manifest(
            run,
            config,
            model_path,
            stats,
            outputs=folder.output_paths(output_dir),
            method=config.method,
            reward=config.reward,
            judge=config.judge_base_url or config.judge_model,
            prompts=frame.height,
        )
    return final


# --------------------------------------------------------------------------------------------
# What both recipes share
# --------------------------------------------------------------------------------------------


def _up_to_date(config: TrainConfig, run: StageRun) -> bool:
    """A finished run with these settings and inputs is there: a rerun does nothing."""
    if config.resume and folder.is_finished(config.output_dir, run.fingerprint):
        console.print(
            f"{config.output_dir} is up to date (same settings and inputs); nothing to do."
        )
        return True
    return False


def _attach_run_config(config: TrainConfig, model: Any) -> None:
    if config.report_to != ("none",):
        attach_run_config(model, redact(config.model_dump(mode="json")))


def _callbacks(config: TrainConfig) -> list[Any]:
    metrics_file = config.output_dir / folder.METRICS_FILE
    return logging_callbacks(metrics_file, progress=console if config.show_progress else None)


def _write_manifest(
    run: StageRun, config: TrainConfig, model_path: str, stats: dict[str, Any], **fields: Any
) -> None:
    """The manifest of every train run, plus the recipe's own ``fields``."""
    lora = config.lora_r and {"r": config.lora_r, "alpha": config.lora_alpha or 2 * config.lora_r}
    run.write_folder_manifest(
        config.output_dir / folder.MANIFEST_FILE,
        settings=config.model_dump(mode="json"),
        model=config.model or "default",
        stats=stats,
        model_path=model_path,
        learning_rate=config.resolved_learning_rate(),
        lora=lora or None,
        **fields,
    )
