"""Trainer arguments of ``mipo train``, built from a ``TrainConfig``."""

from __future__ import annotations

from typing import Any

from mipo_engine.training.tracking import trainer_report_to


def base_arguments(config: Any, *, cuda: bool) -> dict[str, Any]:
    """Trainer arguments every method shares: bf16 autocast on GPU, fp32 on CPU, seeded data
    order, checkpoints every ``save_steps``, our callbacks for the console and metrics file,
    and the trackers of ``report_to``."""
    import torch

    return dict(
        output_dir=str(config.output_dir),
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.resolved_learning_rate(),
        max_steps=config.max_steps or -1,
        num_train_epochs=config.epochs,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        logging_first_step=True,  # the step-0 invariant is read from the first log
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
        report_to=trainer_report_to(config.report_to),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def training_arguments(config: Any, *, cuda: bool) -> Any:
    """``TrainingArguments`` of the offline trainer."""
    from transformers import TrainingArguments

    return TrainingArguments(
        **base_arguments(config, cuda=cuda), include_num_input_tokens_seen="non_padding"
    )
