"""Reference log-probs computed once before training, when no ``scores`` artifact is given.

LoRA: the adapters are disabled, so any time is fine. Full fine-tuning: the model before its
first update IS the reference, so no second copy is ever held.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from mipo_engine.artifacts.schemas import SCORES
from mipo_engine.modeling.policy import (
    LOGPS_CHUNK_TOKENS,
    batch_sequence_logps,
    reference_mode,
    unwrap_model,
)
from mipo_engine.training.data import PairCollator, PairDataset

console = Console(stderr=True)


def compute_reference_scores(
    model: Any,
    dataset: PairDataset,
    collator: PairCollator,
    ids: Sequence[str],
    *,
    batch_size: int,
    chunk_size: int = LOGPS_CHUNK_TOKENS,
    show_progress: bool = True,
) -> pl.DataFrame:
    """A ``scores`` frame (``pmi_chosen`` null) with the reference log-probs of every pair.

    Must run before the first optimizer update for a full fine-tune (the model is then the
    reference); with LoRA the adapters are switched off, so any time is fine.
    """
    device = next(unwrap_model(model).parameters()).device
    was_training = model.training
    model.eval()
    chosen: list[float] = [0.0] * len(dataset)
    rejected: list[float] = [0.0] * len(dataset)
    order = sorted(range(len(dataset)), key=lambda i: -dataset.lengths[i])  # less padding
    try:
        with (
            reference_mode(model),
            Progress(
                "reference log-probs",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                disable=not show_progress,
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("reference", total=len(dataset))
            for start in range(0, len(order), batch_size):
                examples = [dataset[i] for i in order[start : start + batch_size]]
                batch = {name: value.to(device) for name, value in collator(examples).items()}
                result = batch_sequence_logps(model, batch, chunk_size=chunk_size)
                pairs = len(examples)
                values = result.logps.tolist()
                for offset, example in enumerate(examples):
                    chosen[example.index] = values[offset]
                    rejected[example.index] = values[pairs + offset]
                progress.advance(task, pairs)
    finally:
        model.train(was_training)
    return pl.DataFrame(
        {
            "id": list(ids),
            "ref_chosen_logps": chosen,
            "ref_rejected_logps": rejected,
            "chosen_tokens": [e.chosen.response_tokens for e in dataset.examples],
            "rejected_tokens": [e.rejected.response_tokens for e in dataset.examples],
            "pmi_chosen": [None] * len(dataset),
        },
        schema=SCORES.polars_schema(),
    )


def reference_scores_once(
    run: Any,
    config: Any,
    model: Any,
    pairs: pl.DataFrame,
    dataset: PairDataset,
    collator: PairCollator,
    args: Any,
) -> Path:
    """Reference log-probs computed once (or reused) as the scores artifact of ``run`` (the
    stage kernel's ``StageRun``: reused when up to date, written with a manifest), batched
    and shown as a ``TrainConfig`` says (``per_device_batch_size``, ``show_progress``).

    Runs before the first optimizer update (and before a checkpoint is loaded), so for a full
    fine-tune the model is still the reference; with LoRA the adapters are disabled. Under a
    multi-process launch the first process computes and writes them (``args``, the run's
    ``TrainingArguments``, knows the ranks); the others then read its file.
    """
    with args.main_process_first(local=False, desc="reference log-probs"):
        if run.up_to_date():
            console.print(f"Reusing reference log-probs from {run.output}.", soft_wrap=True)
            return run.output
        frame = compute_reference_scores(
            model,
            dataset,
            collator,
            pairs["id"].to_list(),
            batch_size=config.per_device_batch_size,
            show_progress=config.show_progress,
        )
        if args.process_index == 0:
            run.write(frame, SCORES, model=config.model or "default", backend="hf")
    return run.output
