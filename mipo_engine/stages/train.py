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
from typing import Any

import polars as pl
from rich.console import Console

from mipo_engine.artifacts.manifest import redact
from mipo_engine.artifacts.metrics_log import read_metrics
from mipo_engine.artifacts.pairs import attach_scores, has_reference
from mipo_engine.artifacts.run import StageRun
from mipo_engine.modeling.policy import supports_packing
from mipo_engine.training import checkpoints as folder
from mipo_engine.training.arguments import base_arguments, training_arguments
from mipo_engine.training.config import ONLINE_FIELDS, TrainConfig  # noqa: F401
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
from mipo_engine.training.metrics import logging_callbacks, quiet_trainer, run_stats
from mipo_engine.training.tracking import attach_run_config, check_report_to

console = Console(stderr=True, soft_wrap=True)  # paths stay on one line


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
