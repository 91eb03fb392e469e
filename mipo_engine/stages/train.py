"""``mipo train``: preference pairs (+ scores) -> a trained model in ``output_dir``.

    setup (settings, output folder, model, data, reference) -> train -> save final -> report

Writes into ``output_dir``:

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
checkpoint with the same data order (``LengthGroupedSeededSampler``) and RNG state.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field
from rich.console import Console

from mipo_engine.artifacts.manifest import describe_inputs, fingerprint, now_iso, redact
from mipo_engine.artifacts.schemas import SCORES
from mipo_engine.artifacts.store import write_json_atomic
from mipo_engine.errors import ConfigError
from mipo_engine.stages.common import StageConfig, StageRun
from mipo_engine.training.data import (
    PairCollator,
    PairDataset,
    attach_scores,
    encode_examples,
    has_reference,
    read_pairs,
)
from mipo_engine.training.trainer import LossSettings, supports_packing

console = Console(stderr=True, soft_wrap=True)  # paths stay on one line

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
PLOT_FILE = "logps.png"
REFERENCE_FILE = "reference_scores.parquet"
MANIFEST_FILE = "train_manifest.json"
RUN_CONFIG_FILE = "train_config.json"

DEFAULT_LR_FULL = 5e-6
DEFAULT_LR_LORA = 1e-4


class TrainConfig(StageConfig):
    """Settings of ``mipo train`` (the CLI options, one for one)."""

    preferences: Path
    """A ``generations`` or ``preferences`` artifact."""
    output_dir: Path
    scores: Path | None = None
    """Reference log-probs from ``mipo score`` (else computed once before training)."""
    prior_scores: Path | None = None
    """Previous-round policy scores for MI-DPO's ``dice`` prior."""
    model: str | None = None
    """Model path or hub id; None: the default Gemma 3 270M."""
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

    def identity(self) -> dict[str, Any]:
        """Settings that change the trained weights (logging and saving cadence do not)."""
        return self.model_dump(
            mode="json",
            exclude={
                "output_dir",
                "resume",
                "logging_steps",
                "save_steps",
                "save_total_limit",
                "show_progress",
                "packing",  # the same sums; only the rounding differs
            },
        )


# --------------------------------------------------------------------------------------------
# Output folder: resume or start over
# --------------------------------------------------------------------------------------------


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
        from mipo_engine.training.metrics import truncate_metrics

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


# --------------------------------------------------------------------------------------------
# Model, data, reference
# --------------------------------------------------------------------------------------------


def _use_cuda(config: TrainConfig) -> bool:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but no GPU is visible", key="device")
    return config.device != "cpu" and torch.cuda.is_available()


def _disable_dropout(model: Any) -> None:
    """Preference losses compare the policy with a reference: dropout would make D != 0
    at step 0 and add noise to every log-ratio (TRL disables it for the same reason)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_policy(config: TrainConfig, *, cuda: bool) -> tuple[Any, Any, str]:
    """The model to train (LoRA-wrapped when ``lora_r``), its tokenizer and resolved path.

    Weights: fp32 on CPU; on GPU, fp32 master weights with bf16 autocast for a full
    fine-tune, bf16 frozen base weights for LoRA (the adapters stay fp32).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mipo_engine.chat import ensure_chat_template
    from mipo_engine.models import resolve_model

    try:
        path = resolve_model(config.model)
    except FileNotFoundError as error:
        raise ConfigError(str(error), key="model") from None
    dtype = torch.bfloat16 if (cuda and config.lora_r) else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as error:
        raise ConfigError(f"cannot load model {path!r}: {error}", key="model") from None
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    _disable_dropout(model)
    if config.lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha or 2 * config.lora_r,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model, tokenizer, path


def load_training_pairs(
    config: TrainConfig, settings: LossSettings, tokenizer: Any
) -> pl.DataFrame:
    """The pair table with reference and prior columns attached as the loss requires."""
    from mipo_engine.chat import render_chat

    pairs = read_pairs(
        config.preferences, render=lambda m: render_chat(tokenizer, m), split=config.split
    )
    if config.scores is not None:
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


def reference_scores(
    config: TrainConfig,
    model: Any,
    pairs: pl.DataFrame,
    dataset: PairDataset,
    collator: PairCollator,
    args: Any,
) -> Path:
    """Reference log-probs computed once (or reused) as ``output_dir/reference_scores.parquet``.

    Runs before the first optimizer update (and before a checkpoint is loaded), so for a full
    fine-tune the model is still the reference; with LoRA the adapters are disabled. Under a
    multi-process launch the first process computes and writes them (``args``, the run's
    ``TrainingArguments``, knows the ranks); the others then read its file.
    """
    from mipo_engine.training.trainer import compute_reference_scores

    output = config.output_dir / REFERENCE_FILE
    identity = {
        "model": config.model,
        "max_length": config.max_length,
        "preferences": str(config.preferences),
    }
    run = StageRun("train-reference", output, identity, {"preferences": config.preferences})
    with args.main_process_first(local=False, desc="reference log-probs"):
        if run.up_to_date():
            console.print(f"Reusing reference log-probs from {output}.")
            return output
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
    return output


# --------------------------------------------------------------------------------------------
# Trainer assembly
# --------------------------------------------------------------------------------------------


def training_arguments(config: TrainConfig, *, cuda: bool) -> Any:
    """``TrainingArguments`` for ``config``: bf16 autocast on GPU, fp32 on CPU, seeded data
    order, checkpoints every ``save_steps``, logs to our callbacks only."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
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
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )


def build_trainer(
    config: TrainConfig,
    settings: LossSettings,
    model: Any,
    tokenizer: Any,
    dataset: PairDataset,
    collator: PairCollator,
    *,
    args: Any,
    callbacks: list[Any] | None = None,
) -> Any:
    """The ``PreferenceTrainer`` with our callbacks (metrics file, rich progress bar, a log at
    the last step) in place of Trainer's printing and tqdm bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from mipo_engine.training.metrics import (
        LogLastStepCallback,
        MetricsFileCallback,
        RichProgressCallback,
    )
    from mipo_engine.training.trainer import PreferenceTrainer

    own_callbacks: list[Any] = [
        LogLastStepCallback(),
        MetricsFileCallback(config.output_dir / METRICS_FILE),
    ]
    if config.show_progress:
        own_callbacks.append(RichProgressCallback(console))
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=own_callbacks + list(callbacks or []),
        settings=settings,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def save_final(trainer: Any, output_dir: Path) -> Path:
    """Write ``final/`` via a staging folder, so a crash never leaves a half-written model."""
    trainer.check_parameters_finite("final model")
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


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _check_paths(config: TrainConfig) -> None:
    for key in ("preferences", "scores", "prior_scores"):
        path = getattr(config, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"file not found: {path}", key=key)
    if config.output_dir.exists() and not config.output_dir.is_dir():
        raise ConfigError(f"{config.output_dir} exists and is not a folder", key="output_dir")


def _check_combinations(config: TrainConfig, settings: LossSettings) -> None:
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


def run_train(config: TrainConfig, *, callbacks: list[Any] | None = None) -> Path:
    """Train on ``config.preferences``; return the path of ``output_dir/final``."""
    started_at, started = now_iso(), time.perf_counter()
    settings = config.loss_settings()
    _check_paths(config)
    _check_combinations(config, settings)
    inputs = describe_inputs(
        {
            "preferences": config.preferences,
            "scores": config.scores,
            "prior_scores": config.prior_scores,
        }
    )
    run_fingerprint = fingerprint(config.identity(), inputs)
    output_dir = config.output_dir
    if config.resume and is_finished(output_dir, run_fingerprint):
        console.print(f"{output_dir} is up to date (same settings and inputs); nothing to do.")
        return output_dir / FINAL_DIR

    from transformers import set_seed

    cuda = _use_cuda(config)
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
        reference_path = reference_scores(config, model, pairs, dataset, collator, args)
        pairs = attach_scores(pairs, reference_path)
        dataset = encode(pairs)

    trainer = build_trainer(
        config, settings, model, tokenizer, dataset, collator, args=args, callbacks=callbacks
    )
    # Only now, with every setting validated, may old checkpoints be removed or resumed.
    # Under a multi-process launch one process prepares the folder (it deletes and writes
    # files); the others wait for it, then read where to resume.
    with args.main_process_first(local=False, desc="preparing the output folder"):
        if args.process_index == 0:
            checkpoint = prepare_output_dir(output_dir, run_fingerprint, resume=config.resume)
        else:
            checkpoint = resume_checkpoint(output_dir, resume=config.resume)
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        for callback in trainer.callback_handler.callbacks:
            if hasattr(callback, "close"):
                callback.close()  # stop the progress display even when training failed
    final = save_final(trainer, output_dir)
    if trainer.args.should_save:
        _finish(
            config,
            settings,
            trainer,
            result,
            inputs=inputs,
            run_fingerprint=run_fingerprint,
            model_path=model_path,
            reference_path=reference_path,
            num_pairs=len(dataset),
            started_at=started_at,
            seconds=time.perf_counter() - started,
        )
    return final


def _finish(
    config: TrainConfig,
    settings: LossSettings,
    trainer: Any,
    result: Any,
    *,
    inputs: list[dict[str, Any]],
    run_fingerprint: str,
    model_path: str,
    reference_path: Path | None,
    num_pairs: int,
    started_at: str,
    seconds: float,
) -> None:
    """Plot the curves and write the manifest (last: it marks the run complete)."""
    from mipo_engine import __version__
    from mipo_engine.training.metrics import read_metrics
    from mipo_engine.training.plots import plot_training_curves

    output_dir = config.output_dir
    records = read_metrics(output_dir / METRICS_FILE)
    if records:
        plot_training_curves(
            output_dir / METRICS_FILE,
            output_dir / PLOT_FILE,
            title=f"mipo train --loss {settings.loss}",
        )
    metrics = dict(result.metrics)
    tokens = trainer.state.num_input_tokens_seen
    runtime = metrics.get("train_runtime") or seconds
    manifest = {
        "stage": "train",
        "package_version": __version__,
        "config": redact(config.model_dump(mode="json")),
        "fingerprint": run_fingerprint,
        "inputs": inputs,
        "model": config.model or "default",
        "model_path": model_path,
        "loss": settings.describe(),
        "learning_rate": config.resolved_learning_rate(),
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha or 2 * config.lora_r}
        if config.lora_r
        else None,
        "reference_scores": str(reference_path or config.scores)
        if settings.needs_reference
        else None,
        "pairs": num_pairs,
        "stats": {
            "global_step": trainer.state.global_step,
            "train_runtime_s": runtime,
            "input_tokens_seen": tokens,
            "tokens_per_second": round(tokens / runtime, 2) if runtime else None,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "last_logged": records[-1] if records else None,
        },
        "outputs": {
            "final": str(output_dir / FINAL_DIR),
            "metrics": str(output_dir / METRICS_FILE),
            "plot": str(output_dir / PLOT_FILE) if records else None,
        },
        "started_at": started_at,
        "finished_at": now_iso(),
    }
    write_json_atomic(output_dir / MANIFEST_FILE, manifest)
