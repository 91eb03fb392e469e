"""The output folder of ``mipo train``: its files, checkpoints, resuming and the final model.

``mipo train`` writes into ``output_dir``:

- ``checkpoint-N/``: Trainer checkpoints (weights or adapter, optimizer, RNG, trainer state).
- ``metrics.jsonl``: one JSON object per logged step (see ``training.metrics``).
- ``reference_scores.parquet``: the reference log-probs, when they were computed here
  (a ``scores`` artifact, reusable with ``--scores``).
- ``final/``: the model (full fine-tune) or the LoRA adapter, with the tokenizer; loadable
  with ``transformers`` / ``peft``. Written only after a finite run, renamed into place.
- ``logps.png``: chosen and rejected log-prob curves.
- ``train_manifest.json`` (last): settings, inputs, loss, throughput, memory; its presence
  with the same settings makes a rerun a no-op.

Killed at any point and rerun with the same command, training resumes from the last complete
checkpoint (a checkpoint counts once its trainer state parses) with the same data order and
RNG state; a rerun with other settings or inputs is refused unless asked to start over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from mipo_engine.artifacts.store import write_json_atomic
from mipo_engine.errors import ConfigError
from mipo_engine.training.metrics import close_callbacks, truncate_metrics
from mipo_engine.training.trainer import TrainingDiverged

console = Console(stderr=True, soft_wrap=True)  # paths stay on one line

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
PLOT_FILE = "logps.png"
REFERENCE_FILE = "reference_scores.parquet"
MANIFEST_FILE = "train_manifest.json"
RUN_CONFIG_FILE = "train_config.json"
JUDGE_REPLIES_FILE = "judge_unparsed.jsonl"


def _checkpoint_complete(path: Path) -> bool:
    """True when the trainer state, the last file a save writes, is there and whole.

    transformers writes ``trainer_state.json`` in place, so a kill during that write leaves
    a truncated file: only a state that parses counts.
    """
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders whose save finished (see ``_checkpoint_complete``), oldest first."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and _checkpoint_complete(path):
            found.append(path)
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def _remove_incomplete_checkpoints(output_dir: Path) -> None:
    for path in output_dir.glob("checkpoint-*"):
        if path.is_dir() and not _checkpoint_complete(path):
            console.print(f"[yellow]Removing incomplete checkpoint {path} (killed mid-save).[/]")
            shutil.rmtree(path)


def _start_over(output_dir: Path) -> None:
    for path in complete_checkpoints(output_dir):
        shutil.rmtree(path)
    for name in (METRICS_FILE, MANIFEST_FILE, PLOT_FILE):
        (output_dir / name).unlink(missing_ok=True)
    shutil.rmtree(output_dir / FINAL_DIR, ignore_errors=True)


def prepare_output_dir(output_dir: Path, run_fingerprint: str, *, resume: bool) -> Path | None:
    """Make ``output_dir`` ready; return the checkpoint to resume from, if any.

    Raises:
        ConfigError: ``output_dir`` holds checkpoints of a run with other settings.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_incomplete_checkpoints(output_dir)
    last = resume_checkpoint(output_dir, resume=resume)
    if last is not None:
        if _stored_fingerprint(output_dir) != run_fingerprint:
            raise ConfigError(
                f"{output_dir} holds checkpoints of a run with other settings or inputs; "
                "rerun with the original settings to resume, pass --no-resume to start over, "
                "or choose another --output-dir",
                key="output_dir",
            )
        truncate_metrics(output_dir / METRICS_FILE, int(last.name.split("-", 1)[1]))
        (output_dir / MANIFEST_FILE).unlink(missing_ok=True)
        console.print(f"Resuming from {last}.")
        return last
    _start_over(output_dir)
    write_json_atomic(output_dir / RUN_CONFIG_FILE, {"fingerprint": run_fingerprint})
    return None


def resume_checkpoint(output_dir: Path, *, resume: bool) -> Path | None:
    """The last complete checkpoint when resuming (what ``prepare_output_dir`` resumes from),
    read without changing anything."""
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1] if resume and checkpoints else None


def _stored_fingerprint(output_dir: Path) -> str | None:
    path = output_dir / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("fingerprint")


def is_finished(output_dir: Path, run_fingerprint: str) -> bool:
    """True when ``final/`` and the manifest exist for these exact settings and inputs."""
    manifest = output_dir / MANIFEST_FILE
    if not manifest.is_file() or not (output_dir / FINAL_DIR).is_dir():
        return False
    return json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint") == run_fingerprint


def train_resumably(trainer: Any, output_dir: Path, run_fingerprint: str, *, resume: bool) -> Any:
    """Prepare ``output_dir`` (resume or start over), then train; return Trainer's result.

    Call it only once every setting is validated: it may remove old checkpoints. Under a
    multi-process launch one process prepares the folder (it deletes and writes files); the
    others wait for it, then read where to resume. Callbacks holding a display are closed even
    when training fails.
    """
    args = trainer.args
    with args.main_process_first(local=False, desc="preparing the output folder"):
        if args.process_index == 0:
            checkpoint = prepare_output_dir(output_dir, run_fingerprint, resume=resume)
        else:
            checkpoint = resume_checkpoint(output_dir, resume=resume)
    try:
        return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        close_callbacks(trainer)


def output_paths(output_dir: Path) -> dict[str, str]:
    """The ``outputs`` entry of the manifest: where the final model and the metrics are."""
    return {"final": str(output_dir / FINAL_DIR), "metrics": str(output_dir / METRICS_FILE)}


def save_final(trainer: Any, output_dir: Path) -> Path:
    """Write ``final/`` via a staging folder, so a crash never leaves a half-written model."""
    check = getattr(trainer, "check_parameters_finite", None)
    if check is not None:
        check("final model")
    else:
        _check_finite(trainer)
    final = output_dir / FINAL_DIR
    staging = output_dir / ".final.tmp"
    if trainer.args.should_save:  # the process that writes the model, and only it
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    return final


def _check_finite(trainer: Any) -> None:
    import torch

    for name, parameter in trainer.model.named_parameters():
        if parameter.requires_grad and not bool(torch.isfinite(parameter.detach()).all()):
            raise TrainingDiverged(
                f"weight {name} is not finite after step {trainer.state.global_step}, so the "
                "final model was not written; lower --learning-rate and rerun"
            )
