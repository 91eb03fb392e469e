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
from mipo_engine.modeling.policy import supports_packing
from mipo_engine.stages.common import StageConfig, StageRun
from mipo_engine.training.data import (
    PairCollator,
    PairDataset,
    attach_scores,
    encode_examples,
    has_reference,
    read_pairs,
)
from mipo_engine.training.loss_settings import LossSettings
from mipo_engine.training.tracking import (
    attach_run_config,
    check_report_to,
    trainer_report_to,
)

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
    from mipo_engine.training.reference import compute_reference_scores

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


def base_arguments(config: TrainConfig, *, cuda: bool) -> dict[str, Any]:
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


def training_arguments(config: TrainConfig, *, cuda: bool) -> Any:
    """``TrainingArguments`` of the offline trainer."""
    from transformers import TrainingArguments

    return TrainingArguments(
        **base_arguments(config, cuda=cuda), include_num_input_tokens_seen="non_padding"
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

    from mipo_engine.training.trainer import TrainingDiverged

    for name, parameter in trainer.model.named_parameters():
        if parameter.requires_grad and not bool(torch.isfinite(parameter.detach()).all()):
            raise TrainingDiverged(
                f"weight {name} is not finite after step {trainer.state.global_step}, so the "
                "final model was not written; lower --learning-rate and rerun"
            )


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _check_paths(config: TrainConfig) -> None:
    for key in ("preferences", "scores", "prior_scores", "prompts"):
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


def _check_method(config: TrainConfig) -> None:
    """The method's own inputs are there, and only they."""
    from mipo_engine.training.online import METHOD_NAMES

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


def run_train(config: TrainConfig, *, callbacks: list[Any] | None = None) -> Path:
    """Train on ``config.preferences`` (or online on ``config.prompts``); return the path of
    ``output_dir/final``."""
    _check_method(config)
    check_report_to(config.report_to)
    if config.online:
        return run_online_train(config, callbacks=callbacks)
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

    if config.report_to != ("none",):
        attach_run_config(model, redact(config.model_dump(mode="json")))
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


def _base_manifest(
    config: TrainConfig,
    trainer: Any,
    result: Any,
    *,
    inputs: list[dict[str, Any]],
    run_fingerprint: str,
    model_path: str,
    started_at: str,
    seconds: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest fields every train run writes, and the logged metric records."""
    from mipo_engine import __version__
    from mipo_engine.training.metrics import read_metrics

    output_dir = config.output_dir
    records = read_metrics(output_dir / METRICS_FILE)
    runtime = dict(result.metrics).get("train_runtime") or seconds
    manifest = {
        "stage": "train",
        "package_version": __version__,
        "config": redact(config.model_dump(mode="json")),
        "fingerprint": run_fingerprint,
        "inputs": inputs,
        "model": config.model or "default",
        "model_path": model_path,
        "learning_rate": config.resolved_learning_rate(),
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha or 2 * config.lora_r}
        if config.lora_r
        else None,
        "stats": {
            "global_step": trainer.state.global_step,
            "train_runtime_s": runtime,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "last_logged": records[-1] if records else None,
        },
        "outputs": {
            "final": str(output_dir / FINAL_DIR),
            "metrics": str(output_dir / METRICS_FILE),
        },
        "started_at": started_at,
        "finished_at": now_iso(),
    }
    return manifest, records


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
    from mipo_engine.training.plots import plot_training_curves

    output_dir = config.output_dir
    manifest, records = _base_manifest(
        config,
        trainer,
        result,
        inputs=inputs,
        run_fingerprint=run_fingerprint,
        model_path=model_path,
        started_at=started_at,
        seconds=seconds,
    )
    if records:
        plot_training_curves(
            output_dir / METRICS_FILE,
            output_dir / PLOT_FILE,
            title=f"mipo train --loss {settings.loss}",
        )
    runtime = manifest["stats"]["train_runtime_s"]
    tokens = trainer.state.num_input_tokens_seen
    manifest["loss"] = settings.describe()
    manifest["reference_scores"] = (
        str(reference_path or config.scores) if settings.needs_reference else None
    )
    manifest["pairs"] = num_pairs
    manifest["stats"]["input_tokens_seen"] = tokens
    manifest["stats"]["tokens_per_second"] = round(tokens / runtime, 2) if runtime else None
    manifest["outputs"]["plot"] = str(output_dir / PLOT_FILE) if records else None
    manifest["finished_at"] = now_iso()  # after the plot, as the run's last step
    write_json_atomic(output_dir / MANIFEST_FILE, manifest)


# --------------------------------------------------------------------------------------------
# Online methods (GRPO, RLOO on TRL): prompts -> sampled completions -> rewards -> updates
# --------------------------------------------------------------------------------------------

JUDGE_REPLIES_FILE = "judge_unparsed.jsonl"


def _check_online(config: TrainConfig) -> None:
    """Option errors of the online methods, found before anything is loaded or written."""
    from mipo_engine.training.online import method_unavailable
    from mipo_engine.training.rewards import REWARDS

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


def read_online_prompts(config: TrainConfig) -> pl.DataFrame:
    """The prompts artifact, checked against what the reward needs (row and field named)."""
    from mipo_engine.artifacts.schemas import PROMPTS
    from mipo_engine.artifacts.store import read_artifact
    from mipo_engine.errors import InputError
    from mipo_engine.training.rewards import REWARDS, verifiable

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


def _online_backends(config: TrainConfig, *, cuda: bool) -> tuple[Any, Any]:
    """(frozen reference backend or None, judge backend or None) for the reward."""
    from mipo_engine.backends.base import create_backend
    from mipo_engine.training.rewards import REWARDS

    spec = REWARDS[config.reward or ""]
    device = "cuda" if cuda else "cpu"
    judge_is_reference = config.judge_model == "reference" and not config.judge_base_url
    reference = None
    if spec.needs_reference or (spec.needs_judge and judge_is_reference):
        reference = create_backend(
            "hf", config.model, device=device, dtype="auto", show_progress=False
        )
    judge = None
    if spec.needs_judge and config.judge_base_url:
        judge = create_backend("openai", config.judge_model, base_url=config.judge_base_url)
    elif spec.needs_judge:
        judge = (
            reference
            if judge_is_reference
            else create_backend("hf", config.judge_model, device=device, show_progress=False)
        )
    return (reference if spec.needs_reference else None), judge


def run_online_train(config: TrainConfig, *, callbacks: list[Any] | None = None) -> Path:
    """GRPO/RLOO on ``config.prompts`` with ``config.reward``; return ``output_dir/final``."""
    from mipo_engine.training.online import (
        OnlineSettings,
        build_online_trainer,
        online_arguments,
        prompt_records,
        unparsed_replies,
    )
    from mipo_engine.training.rewards import build_reward

    started_at, started = now_iso(), time.perf_counter()
    _check_paths(config)
    _check_online(config)
    frame = read_online_prompts(config)
    inputs = describe_inputs({"prompts": config.prompts})
    run_fingerprint = fingerprint(config.identity(), inputs)
    output_dir = config.output_dir
    if config.resume and is_finished(output_dir, run_fingerprint):
        console.print(f"{output_dir} is up to date (same settings and inputs); nothing to do.")
        return output_dir / FINAL_DIR

    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from mipo_engine.training.metrics import (
        LogLastStepCallback,
        MetricsFileCallback,
        RichProgressCallback,
    )

    cuda = _use_cuda(config)
    set_seed(config.seed)
    model, tokenizer, model_path = load_policy(config, cuda=cuda)
    reference, judge = _online_backends(config, cuda=cuda)
    reward = build_reward(
        config.reward or "",
        reference=reference,
        judge=judge,
        judge_weight=config.judge_weight,
        mi_weight=config.mi_weight,
        max_length=config.max_length,
        judge_max_new_tokens=config.judge_max_new_tokens,
    )
    settings = OnlineSettings(
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        kl_coef=config.kl_coef,
    )
    args = online_arguments(config.method, base_arguments(config, cuda=cuda), settings)
    own_callbacks: list[Any] = [
        LogLastStepCallback(),
        MetricsFileCallback(output_dir / METRICS_FILE),
    ]
    if config.show_progress:
        own_callbacks.append(RichProgressCallback(console))
    if config.report_to != ("none",):
        attach_run_config(model, redact(config.model_dump(mode="json")))
    trainer = build_online_trainer(
        config.method,
        model,
        tokenizer,
        prompt_records(frame, config.seed),
        reward,
        args,
        own_callbacks + list(callbacks or []),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
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
                callback.close()
        for backend in {id(b): b for b in (reference, judge) if b is not None}.values():
            backend.close()
    final = save_final(trainer, output_dir)
    if not trainer.args.should_save:
        return final
    replies = unparsed_replies(reward)
    if replies:
        with open(output_dir / JUDGE_REPLIES_FILE, "a", encoding="utf-8") as handle:
            for reply in replies:
                handle.write(json.dumps(reply) + "\n")
    _finish_online(
        config,
        trainer,
        result,
        inputs=inputs,
        run_fingerprint=run_fingerprint,
        model_path=model_path,
        num_prompts=frame.height,
        unparsed=len(replies),
        started_at=started_at,
        seconds=time.perf_counter() - started,
    )
    return final


def _finish_online(
    config: TrainConfig,
    trainer: Any,
    result: Any,
    *,
    inputs: list[dict[str, Any]],
    run_fingerprint: str,
    model_path: str,
    num_prompts: int,
    unparsed: int,
    started_at: str,
    seconds: float,
) -> None:
    """The manifest of an online run (last: it marks the run complete)."""
    manifest, _ = _base_manifest(
        config,
        trainer,
        result,
        inputs=inputs,
        run_fingerprint=run_fingerprint,
        model_path=model_path,
        started_at=started_at,
        seconds=seconds,
    )
    manifest["method"] = config.method
    manifest["reward"] = config.reward
    manifest["judge"] = config.judge_base_url or config.judge_model
    manifest["prompts"] = num_prompts
    manifest["stats"]["judge_unparsed_this_run"] = unparsed
    write_json_atomic(config.output_dir / MANIFEST_FILE, manifest)
