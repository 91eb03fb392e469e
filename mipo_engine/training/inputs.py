"""What a training run reads, checked before any model is loaded or file written.

Option clashes name the option to change (``ConfigError`` with its key); the pairs come back
with reference and prior scores attached as the loss requires; the online prompts are checked
against what the reward needs, naming row and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine.artifacts.pairs import attach_scores, read_pairs
from mipo_engine.artifacts.schemas import PROMPTS
from mipo_engine.artifacts.store import read_artifact
from mipo_engine.chat import render_chat
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.training.loss_settings import LossSettings
from mipo_engine.training.online import METHOD_NAMES, method_unavailable
from mipo_engine.training.rewards import REWARDS, verifiable


def check_paths(config: Any) -> None:
    for key in ("preferences", "scores", "prior_scores", "prompts"):
        path = getattr(config, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"file not found: {path}", key=key)
    if config.output_dir.exists() and not config.output_dir.is_dir():
        raise ConfigError(f"{config.output_dir} exists and is not a folder", key="output_dir")


def check_combinations(config: Any, settings: LossSettings) -> None:
    """Option clashes found before any model is loaded (the trainer re-checks them)."""
    if settings.needs_reference_logits and not config.lora_r:
        raise ConfigError(
            "prior 'tdpo' needs the reference model's logits at every step; add --lora-r R "
            "(the reference is then the base model with adapters disabled)",
            key="prior",
        )
    if settings.projected_gradient and config.gradient_accumulation_steps != 1:
        raise ConfigError(
            "dpo_pg projects full-batch gradients (seed 002 App. H): use "
            "--gradient-accumulation-steps 1 and a larger --per-device-batch-size",
            key="gradient_accumulation_steps",
        )


def check_method(config: Any) -> None:
    """The method's own inputs are there, and only they."""

    if config.method not in METHOD_NAMES:
        raise ConfigError(
            f"unknown method {config.method!r}; choose one of {', '.join(METHOD_NAMES)}",
            key="method",
        )
    if config.online:
        return
    if config.preferences is None:
        raise ConfigError("--method offline trains on --preferences PAIRS", key="preferences")
    for key in ("prompts", "reward"):
        if getattr(config, key) is not None:
            raise ConfigError(f"--{key} is only read by the online methods", key=key)


def check_online(config: Any) -> None:
    """Option errors of the online methods, found before anything is loaded or written."""

    reason = method_unavailable(config.method)
    if reason:
        raise ConfigError(reason, key="method")
    if config.prompts is None:
        raise ConfigError(
            f"--method {config.method} samples completions for a prompts artifact: pass "
            "--prompts PROMPTS.parquet (mipo ingest)",
            key="prompts",
        )
    if config.preferences is not None:
        raise ConfigError("--preferences is only read by --method offline", key="preferences")
    if config.reward is None or config.reward not in REWARDS:
        given = "no --reward" if config.reward is None else f"unknown reward {config.reward!r}"
        raise ConfigError(f"{given}; choose one of {', '.join(REWARDS)}", key="reward")
    if REWARDS[config.reward].needs_judge and not (config.judge_model or config.judge_base_url):
        raise ConfigError(
            f"the {config.reward} reward needs a judge: --judge-model reference (the frozen "
            "starting model), --judge-model PATH, or --judge-base-url URL of an "
            "OpenAI-compatible server",
            key="judge_model",
        )
    batch = config.per_device_batch_size * config.gradient_accumulation_steps
    if batch % config.num_generations:
        raise ConfigError(
            f"per-device batch size x gradient accumulation ({batch} completions) must be a "
            f"multiple of --num-generations ({config.num_generations})",
            key="num_generations",
        )
    if config.scores is not None or config.prior_scores is not None:
        raise ConfigError("--scores/--prior-scores are read by --method offline", key="scores")


def read_online_prompts(config: Any) -> pl.DataFrame:
    """The prompts artifact, checked against what the reward needs (row and field named)."""

    assert config.prompts is not None and config.reward is not None
    frame = read_artifact(config.prompts, PROMPTS)
    if frame.height == 0:
        raise InputError("no prompt rows to train on", file=config.prompts)
    spec = REWARDS[config.reward]
    for number, row in enumerate(frame.iter_rows(named=True), start=1):
        if spec.needs_gold and not verifiable(row):
            raise InputError(
                f"the verify reward needs a gold answer (math, mcq with choices) or verifiable "
                f"context items (personalization); row {row['id']!r} (task {row['task']!r}) "
                "has neither",
                file=config.prompts,
                row=number,
                field="answer" if row["task"] in ("math", "mcq") else "context_items",
            )
    if spec.needs_reference and frame["prompt"].n_unique() < 2:
        without = frame.filter(
            pl.col("context").is_null() | (pl.col("context").str.strip_chars() == "")
        )
        if without.height:
            raise InputError(
                "the mi reward of a row without a context compares with another prompt x', "
                "but the set has only one distinct prompt",
                file=config.prompts,
                field="prompt",
            )
    return frame


def load_training_pairs(config: Any, settings: LossSettings, tokenizer: Any) -> pl.DataFrame:
    """The pair table with reference and prior columns attached as the loss requires."""

    pairs = read_pairs(
        config.preferences, render=lambda m: render_chat(tokenizer, m), split=config.split
    )
    # A reference-free loss (sft, simpo) reads no reference scores: a pipeline may wire in
    # scores of other pairs (SFT on revisions keeps the ids of the pairs it revised).
    if config.scores is not None and settings.needs_reference:
        pairs = attach_scores(pairs, config.scores)
    if settings.needs_prior_scores:
        if config.prior_scores is None:
            raise ConfigError(
                "--prior dice needs --prior-scores: a scores artifact of the previous round's "
                "policy on these pairs (mipo score --model PREVIOUS_POLICY)",
                key="prior_scores",
            )
        pairs = attach_scores(pairs, config.prior_scores, as_prior=True)
    elif config.prior_scores is not None:
        raise ConfigError(
            "--prior-scores is only used by --loss mi_dpo --prior dice", key="prior_scores"
        )
    if settings.needs_cross_inputs and pairs["rejected_input"].null_count() > 0:
        raise ConfigError(
            f"--loss {settings.loss} contrasts each response under both conditionings (seed 004 "
            "eq. 14) and needs every pair's rejected_input: pass the generations artifact "
            "from `mipo generate` as --preferences",
            key="loss",
        )
    return pairs
