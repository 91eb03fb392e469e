"""Training metrics: averaging between logs, ``metrics.jsonl``, and a rich progress bar.

Every logged step appends one JSON object to ``<output_dir>/metrics.jsonl`` with ``step``,
``loss`` and the preference metrics under TRL's names (``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``,
``logps/rejected``, ``logps/chosen_shift``, ...). Resumed from a checkpoint, the file is cut
back to the checkpoint's step first, so it never holds a step twice.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mipo_engine.artifacts.metrics_log import read_metrics


class MetricAccumulator:
    """Sums of per-example metrics since the last log, averaged (over processes) on demand."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch of per-example values (each a [B] tensor)."""
        for name, values in metrics.items():
            total = values.detach().float().sum()
            self._sums[name] = self._sums[name] + total if name in self._sums else total
            self._counts[name] += values.numel()

    def pop_means(self, reduce: Any = None) -> dict[str, float]:
        """Means since the last call, then reset. ``reduce(tensor)`` sums across processes."""
        means = {}
        for name, total in self._sums.items():
            pair = torch.stack([total, total.new_tensor(float(self._counts[name]))])
            if reduce is not None:
                pair = reduce(pair)
            means[name] = (pair[0] / pair[1].clamp(min=1)).item()
        self._sums.clear()
        self._counts.clear()
        return means


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep only records with ``step <= last_step`` (called when resuming a checkpoint)."""
    path = Path(path)
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the fact visible
    return value


class MetricsFileCallback(TrainerCallback):
    """Append each training log (not the end-of-run summary) to ``metrics.jsonl``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Training logs carry "loss"; the end-of-run summary ("train_loss") goes to the manifest.
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = {"step": state.global_step, **{k: _json_value(v) for k, v in logs.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class RichProgressCallback(TrainerCallback):
    """A rich progress bar over optimizer steps showing the latest loss and reward accuracy."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "training", total=state.max_steps, completed=state.global_step, status=""
        )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        if self._progress is None or not logs or "loss" not in logs:
            return
        status = f"loss {logs['loss']:.4f}"
        if "rewards/accuracies" in logs:
            status += f"  acc {logs['rewards/accuracies']:.2f}"
        self._progress.update(self._task, status=status)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class LogLastStepCallback(TrainerCallback):
    """Log the final step too, so ``metrics.jsonl`` and the plot end where training ended."""

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if state.global_step >= state.max_steps:
            control.should_log = True


def logging_callbacks(metrics_file: Path, *, progress: Console | None) -> list[TrainerCallback]:
    """Our callbacks in place of Trainer's printing and tqdm bar (see ``quiet_trainer``): a
    log at the last step, the metrics file, and the rich progress bar when ``progress``
    names the console to draw it on."""
    callbacks: list[TrainerCallback] = [LogLastStepCallback(), MetricsFileCallback(metrics_file)]
    if progress is not None:
        callbacks.append(RichProgressCallback(progress))
    return callbacks


def quiet_trainer(trainer: Any) -> Any:
    """Remove Trainer's own printer and tqdm bar (``logging_callbacks`` replace them)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def close_callbacks(trainer: Any) -> None:
    """Stop the progress display (and anything else that holds a resource), even after a
    failed run."""
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "close"):
            callback.close()


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_stats(
    trainer: Any,
    result: Any,
    records: list[dict[str, Any]],
    seconds: float,
    *,
    tokens: bool = False,
) -> dict[str, Any]:
    """The ``stats`` of a run's manifest: steps, runtime, peak memory, the last log, and
    with ``tokens`` the input tokens seen and their rate."""
    runtime = dict(result.metrics).get("train_runtime") or seconds
    stats = {
        "global_step": trainer.state.global_step,
        "train_runtime_s": runtime,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "last_logged": records[-1] if records else None,
    }
    if tokens:
        seen = trainer.state.num_input_tokens_seen
        stats["input_tokens_seen"] = seen
        stats["tokens_per_second"] = round(seen / runtime, 2) if runtime else None
    return stats
