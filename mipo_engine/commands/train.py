"""``mipo train``: options -> TrainConfig -> run_train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipo_engine.commands.shared import call_stage, done
from mipo_engine.training.loss_registry import LOSSES

# The online methods and rewards (training.online.METHOD_NAMES, training.rewards.REWARDS)
# import torch; naming them here keeps `mipo --help` fast. tests/test_train_cli.py checks
# these lists against the registries.
METHOD_NAMES = ("offline", "grpo", "rloo", "ppo")
REWARD_NAMES = ("mi", "judge", "judge+mi", "verify")


def command(
    output_dir: Annotated[
        Path, typer.Option(help="Folder for checkpoints, metrics.jsonl, final/ and the plot.")
    ],
    preferences: Annotated[
        Path | None,
        typer.Option(
            help="Pairs to train on (--method offline): a generations .parquet (mipo generate) "
            "or a preferences .parquet (mipo export)."
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help=f"{', '.join(METHOD_NAMES)}: offline preference losses, or online RL on "
            "TRL's trainers (the installed TRL has no PPO trainer)."
        ),
    ] = "offline",
    prompts: Annotated[
        Path | None,
        typer.Option(help="Prompts artifact to sample completions for (online methods)."),
    ] = None,
    reward: Annotated[
        str | None, typer.Option(help=f"Online reward: {', '.join(REWARD_NAMES)}.")
    ] = None,
    judge_model: Annotated[
        str | None,
        typer.Option(
            help="Judge of the judge rewards: 'reference' (the frozen starting model), a model "
            "path, or the model name served at --judge-base-url."
        ),
    ] = None,
    judge_base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server of the judge.")
    ] = None,
    judge_max_new_tokens: Annotated[
        int, typer.Option(help="Tokens the judge may write before its score.")
    ] = 128,
    judge_weight: Annotated[float, typer.Option(help="Weight of the judge in judge+mi.")] = 1.0,
    mi_weight: Annotated[float, typer.Option(help="Weight of MI in judge+mi.")] = 1.0,
    num_generations: Annotated[
        int, typer.Option(help="Completions sampled per prompt (online).")
    ] = 4,
    max_completion_length: Annotated[
        int, typer.Option(help="Tokens per sampled completion (online).")
    ] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (online).")] = 1.0,
    kl_coef: Annotated[
        float, typer.Option(help="KL penalty toward the starting model (online).")
    ] = 0.0,
    report_to: Annotated[
        str,
        typer.Option(
            help="Trackers, comma-separated: none, tensorboard, wandb, trackio, mlflow, ... "
            "(run settings are logged as their config)."
        ),
    ] = "none",
    split: Annotated[
        str, typer.Option(help="Split of a preferences artifact to train on (mipo export).")
    ] = "train",
    scores: Annotated[
        Path | None,
        typer.Option(
            help="Reference log-probs from mipo score (no reference model in memory). "
            "Without it they are computed once before training."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct."
        ),
    ] = None,
    loss: Annotated[str, typer.Option(help=f"Loss: {', '.join(LOSSES)}.")] = "dpo",
    beta: Annotated[
        float | None, typer.Option(help="Loss temperature; default: the paper's value.")
    ] = None,
    prior: Annotated[
        str | None,
        typer.Option(help="MI-DPO prior: ref, length, simpo, centropy, tdpo (LoRA), dice."),
    ] = None,
    prior_scores: Annotated[
        Path | None,
        typer.Option(help="Scores of the previous round's policy (for --prior dice)."),
    ] = None,
    gamma: Annotated[
        float | None, typer.Option(help="SimPO target margin (simpo loss or prior).")
    ] = None,
    eta: Annotated[
        float | None, typer.Option(help="Policy exponent of the centropy prior.")
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option(help="R-DPO length coefficient of the length prior.")
    ] = None,
    length_normalize: Annotated[
        bool | None,
        typer.Option(
            "--length-normalize/--no-length-normalize",
            help="Average log-probs over response tokens; default: the paper's choice.",
            show_default=False,
        ),
    ] = None,
    lora_r: Annotated[
        int | None, typer.Option(help="LoRA rank; without it all weights are trained.")
    ] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha; default 2 * rank.")] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Peak learning rate; default 5e-6 (full) or 1e-4 (LoRA).")
    ] = None,
    per_device_batch_size: Annotated[
        int, typer.Option(help="Pairs (offline) or completions (online) per device per step.")
    ] = 4,
    gradient_accumulation_steps: Annotated[
        int, typer.Option(help="Micro-batches per optimizer step.")
    ] = 1,
    max_steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (overrides --epochs).")
    ] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the pairs.")] = 1.0,
    max_length: Annotated[
        int, typer.Option(help="Tokens per prompt + response (same as mipo score).")
    ] = 1024,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and data order.")] = 0,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in the backward pass to save memory.")
    ] = False,
    packing: Annotated[
        bool,
        typer.Option(
            help="Pack a batch's sequences into as few rows as fit, without padding between "
            "them (models whose attention supports it; else padded, length-grouped rows)."
        ),
    ] = True,
    logging_steps: Annotated[int, typer.Option(help="Log metrics every N steps.")] = 10,
    save_steps: Annotated[int, typer.Option(help="Save a checkpoint every N steps.")] = 100,
    save_total_limit: Annotated[int, typer.Option(help="Checkpoints to keep.")] = 2,
    warmup_steps: Annotated[int, typer.Option(help="Learning-rate warm-up steps.")] = 0,
    lr_scheduler: Annotated[
        str, typer.Option(help="linear, cosine, constant or constant_with_warmup.")
    ] = "linear",
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue from the last checkpoint in --output-dir (--no-resume: restart)."
        ),
    ] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Train with DPO, MIO, InfoPO, SimPO, MI-DPO, InfoNCE, SFT or DPO-PG, or online with
    GRPO/RLOO and a reward (MI, RLAIF judge, both, or verifiable answers).

    A transformers Trainer underneath, so it also runs under accelerate launch or torchrun.
    """
    from mipo_engine.stages.train import TrainConfig, run_train

    def run() -> Path:
        config = TrainConfig.from_options(
            preferences=preferences,
            output_dir=output_dir,
            method=method,
            prompts=prompts,
            reward=reward,
            judge_model=judge_model,
            judge_base_url=judge_base_url,
            judge_max_new_tokens=judge_max_new_tokens,
            judge_weight=judge_weight,
            mi_weight=mi_weight,
            num_generations=num_generations,
            max_completion_length=max_completion_length,
            temperature=temperature,
            kl_coef=kl_coef,
            report_to=tuple(report_to.split(",")),
            split=split,
            scores=scores,
            prior_scores=prior_scores,
            model=model,
            loss=loss,
            beta=beta,
            prior=prior,
            gamma=gamma,
            eta=eta,
            length_penalty=length_penalty,
            length_normalize=length_normalize,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            learning_rate=learning_rate,
            per_device_batch_size=per_device_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            max_steps=max_steps,
            epochs=epochs,
            max_length=max_length,
            seed=seed,
            gradient_checkpointing=gradient_checkpointing,
            packing=packing,
            logging_steps=logging_steps,
            save_steps=save_steps,
            save_total_limit=save_total_limit,
            warmup_steps=warmup_steps,
            lr_scheduler=lr_scheduler,
            resume=resume,
            device=device,
        )
        return run_train(config)

    done(call_stage(run), "trained model")
