"""The mutual-information trainer family as one ``transformers.Trainer`` subclass.

Pieces, each testable alone:

- ``LossSettings``: which loss of the registry (``losses.LOSSES``), its beta, prior and extra
  scalars, validated once with errors that name the option to change.
- ``policy_sequence_logps``: summed response log-probs of a stacked batch through the
  (possibly DDP-wrapped) model's own forward, projecting onto the vocabulary chunk by chunk
  (``logps.linear_token_logps``), so full-vocabulary logits never exist for whole sequences.
- ``compute_reference_scores``: reference log-probs computed once before training when no
  ``scores`` artifact is given (LoRA: adapters disabled; full fine-tuning: the model before
  its first update, so no second copy is ever held).
- ``PreferenceTrainer``: ``compute_loss`` runs chosen and rejected (and InfoNCE's
  cross-context rows) through ONE forward pass, applies the registry loss per example and
  records the preference metrics; ``training_step`` implements DPO-PG's projected gradient
  (seed 002 App. H); a non-finite loss stops training at once, before any update or save.

Step-0 invariant: the first logged step (``logging_first_step``) averages the metrics of the
forward passes of step 1, which all run before the first optimizer update, so with reference
log-probs from ``mipo score`` every D = l_theta - l_ref logged there is 0 up to float error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import Trainer

from mipo_engine.artifacts.schemas import SCORES
from mipo_engine.errors import ConfigError, MipoError
from mipo_engine.training.data import (
    LengthGroupedSeededSampler,
    PairCollator,
    PairDataset,
)
from mipo_engine.training.logps import _causal_lm_parts, summed_token_logps
from mipo_engine.training.loss_registry import LOSSES, get_loss, loss_needs_reference
from mipo_engine.training.losses import dpo_pg_gradients, preference_metrics
from mipo_engine.training.metrics import MetricAccumulator
from mipo_engine.training.priors import get_prior

console = Console(stderr=True)

LOGPS_CHUNK_TOKENS = 512
"""Response positions projected onto the vocabulary at once (see ``logps.head_tiling``). On
CPU they meet the vocabulary in cache-sized blocks, and taller tiles read the [V, H] weight
fewer times; on an accelerator ``TILE_BYTES`` caps a tile at 256 rows for Gemma's 262k-token
vocabulary (268 MB of fp32 logits)."""


class TrainingDiverged(MipoError):
    """The loss or the weights stopped being finite; nothing broken was saved."""

    exit_code = 1


# --------------------------------------------------------------------------------------------
# Loss settings
# --------------------------------------------------------------------------------------------

# Scalar options and the (loss, prior) combinations that use them.
_SCALAR_USERS = {
    "gamma": "--loss simpo, or --loss mi_dpo --prior simpo",
    "eta": "--loss mi_dpo --prior centropy",
    "length_penalty": "--loss mi_dpo --prior length",
}
_UNSUPPORTED_PRIORS = {
    "learned": "the learned prior needs a trainable prior model from a restricted family "
    "(seed 003 sec. 5.2), which mipo train does not build",
}


@dataclass(frozen=True, kw_only=True)
class LossSettings:
    """A validated choice of loss and its hyperparameters (build with ``resolve``)."""

    loss: str
    """A name of ``losses.LOSSES``."""
    beta: float
    """The loss temperature (MI-DPO: seed 003's alpha)."""
    length_normalize: bool
    """Average log-probs over response tokens before the loss (DESIGN.md section 4)."""
    prior: str | None = None
    """MI-DPO's prior zeta (``priors.PRIORS``); only with ``loss="mi_dpo"``."""
    gamma: float | None = None
    """SimPO's target margin (``simpo`` loss, or MI-DPO's ``simpo`` prior)."""
    eta: float | None = None
    """The ``centropy`` prior's policy exponent."""
    length_penalty: float | None = None
    """The ``length`` prior's R-DPO coefficient."""

    @classmethod
    def resolve(
        cls,
        loss: str,
        *,
        beta: float | None = None,
        length_normalize: bool | None = None,
        prior: str | None = None,
        gamma: float | None = None,
        eta: float | None = None,
        length_penalty: float | None = None,
    ) -> LossSettings:
        """Fill paper defaults from the registry and check every option is used and valid."""
        try:
            spec = get_loss(loss)
        except ConfigError as error:
            raise ConfigError(str(error), key="loss") from None
        prior = _resolve_prior(loss, prior)
        scalars = {"gamma": gamma, "eta": eta, "length_penalty": length_penalty}
        if loss == "simpo" and gamma is None:
            gamma = float(spec.hyperparameters["gamma"])  # type: ignore[arg-type]
            scalars["gamma"] = gamma
        needed = _needed_scalars(loss, prior)
        for name, value in scalars.items():
            if value is None and name in needed:
                raise ConfigError(
                    f"--{name.replace('_', '-')} is required by {_SCALAR_USERS[name]}", key=name
                )
            if value is not None and name not in needed:
                raise ConfigError(
                    f"--{name.replace('_', '-')} is only used by {_SCALAR_USERS[name]}; "
                    f"remove it for --loss {loss}" + (f" --prior {prior}" if prior else ""),
                    key=name,
                )
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"must be a finite number, got {value}", key=name)
        beta = spec.default_beta if beta is None else beta
        if not (math.isfinite(beta) and beta > 0):
            raise ConfigError(f"beta must be a finite number > 0, got {beta}", key="beta")
        if length_normalize is None:
            length_normalize = spec.length_normalize_default
        return cls(
            loss=loss,
            beta=float(beta),
            length_normalize=bool(length_normalize),
            prior=prior,
            gamma=scalars["gamma"],
            eta=eta,
            length_penalty=length_penalty,
        )

    @property
    def needs_reference(self) -> bool:
        """Reference log-probs enter the loss (from ``scores`` or computed before training)."""
        return loss_needs_reference(self.loss, prior=self.prior)

    @property
    def needs_prior_scores(self) -> bool:
        """MI-DPO's DICE prior: the previous round's policy log-probs (``--prior-scores``)."""
        return self.loss == "mi_dpo" and self.prior == "dice"

    @property
    def needs_cross_inputs(self) -> bool:
        """InfoNCE (seed 004 eq. 14) also scores both responses under ``rejected_input``."""
        return "chosen_logps_on_rejected_input" in LOSSES[self.loss].extra_inputs

    @property
    def needs_reference_logits(self) -> bool:
        """TDPO's prior needs the reference's whole next-token distributions at every step."""
        return self.loss == "mi_dpo" and self.prior == "tdpo"

    @property
    def projected_gradient(self) -> bool:
        """DPO-PG: the update is a gradient rule, not the gradient of the logged loss."""
        return LOSSES[self.loss].projected_gradient

    def describe(self) -> dict[str, Any]:
        spec = LOSSES[self.loss]
        return {
            "loss": self.loss,
            "formula": spec.formula,
            "citation": spec.citation,
            "beta": self.beta,
            "length_normalize": self.length_normalize,
            "prior": self.prior,
            "gamma": self.gamma,
            "eta": self.eta,
            "length_penalty": self.length_penalty,
        }


def _resolve_prior(loss: str, prior: str | None) -> str | None:
    if loss != "mi_dpo":
        if prior is not None:
            raise ConfigError(f"--prior applies only to --loss mi_dpo, not {loss}", key="prior")
        return None
    prior = prior or "ref"
    try:
        get_prior(prior)
    except ValueError as error:
        raise ConfigError(str(error), key="prior") from None
    if prior in _UNSUPPORTED_PRIORS:
        raise ConfigError(
            f"prior {prior!r} is not supported: {_UNSUPPORTED_PRIORS[prior]}", key="prior"
        )
    return prior


def _needed_scalars(loss: str, prior: str | None) -> set[str]:
    if loss == "simpo":
        return {"gamma"}
    return {
        "simpo": {"gamma"},
        "centropy": {"eta"},
        "length": {"length_penalty"},
    }.get(prior or "", set())


# --------------------------------------------------------------------------------------------
# Forward pass: summed response log-probs without full-vocabulary logits
# --------------------------------------------------------------------------------------------


@dataclass
class SequenceLogps:
    """Per-row results of one stacked forward pass."""

    logps: Tensor  # [R] summed log-probs of each row's response tokens (fp32)
    counts: Tensor  # [R] response token counts
    states: Tensor | None = None  # [N, H] final hidden states predicting response tokens
    rows: Tensor | None = None  # [N] row of each state


def _unwrap(model: Any) -> Any:
    """The module under DDP-style wrappers (``.module``); PEFT is handled by the caller."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _final_hidden_states(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    position_ids: Tensor | None = None,
) -> Tensor:
    """Final (normed) hidden states [R, T, H] from the model's own forward.

    The forward goes through ``model`` itself, wrappers included, so DDP prepares its gradient
    synchronisation as usual; ``logits_to_keep`` with no positions skips the vocabulary
    projection, and a hook on the decoder captures its output. Packed rows come with
    ``position_ids`` that restart per sequence and no attention mask.
    """
    decoder, _, _ = _causal_lm_parts(_unwrap(model))
    captured: dict[str, Tensor] = {}

    def keep_output(module: Any, args: Any, output: Any) -> None:
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    extra = {} if position_ids is None else {"position_ids": position_ids}
    handle = decoder.register_forward_hook(keep_output)
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_to_keep=torch.zeros(0, dtype=torch.long, device=input_ids.device),
            use_cache=False,
            **extra,
        )
    finally:
        handle.remove()
    return captured["hidden"]


# Attention implementations that turn per-sequence position ids into a block-diagonal mask
# (transformers' masking utilities) or into variable-length kernels (flash attention).
PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def supports_packing(model: Any) -> bool:
    """Whether ``model`` keeps packed sequences apart given only their position ids."""
    config = getattr(_causal_lm_parts(_unwrap(model))[0], "config", None)
    return getattr(config, "_attn_implementation", None) in PACKING_ATTENTION


def batch_sequence_logps(
    model: Any,
    batch: dict[str, Tensor],
    *,
    chunk_size: int = LOGPS_CHUNK_TOKENS,
    keep_states: bool = False,
) -> SequenceLogps:
    """``policy_sequence_logps`` of a ``PairCollator`` batch, padded or packed."""
    return policy_sequence_logps(
        model,
        batch["input_ids"],
        batch.get("attention_mask"),
        batch["response_mask"],
        position_ids=batch.get("position_ids"),
        sequence_ids=batch.get("sequence_ids"),
        chunk_size=chunk_size,
        keep_states=keep_states,
    )


def policy_sequence_logps(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    response_mask: Tensor,
    *,
    position_ids: Tensor | None = None,
    sequence_ids: Tensor | None = None,
    chunk_size: int = LOGPS_CHUNK_TOKENS,
    keep_states: bool = False,
) -> SequenceLogps:
    """Summed log-probs of the masked response tokens of each sequence (as
    ``logps.sequence_logps``, whose numbers it reproduces, but through the wrapped model's
    forward).

    Padded batches have one sequence per row. Packed ones (``data.pack_sequences``) give
    ``position_ids`` and ``sequence_ids`` (the sequence of each token); the results are then
    per sequence, in input order.
    """
    _, head, softcap = _causal_lm_parts(_unwrap(model))
    hidden = _final_hidden_states(model, input_ids, attention_mask, position_ids)  # (P, T, H)
    predict_mask = response_mask[:, 1:]  # (P, T-1): position t-1 predicts token t
    rows, cols = predict_mask.nonzero(as_tuple=True)
    # Under mixed precision the decoder runs in bf16 while fp32 master weights stay fp32:
    # project in the head's dtype (the logits themselves are fp32 either way).
    states = hidden[:, :-1][rows, cols].to(head.weight.dtype)  # (N, H)
    targets = input_ids[:, 1:][rows, cols]  # (N,)
    if sequence_ids is None:
        num_sequences = input_ids.shape[0]
        counts = predict_mask.sum(dim=1)
    else:
        num_sequences = int(sequence_ids.max()) + 1
        rows = sequence_ids[:, 1:][rows, cols]
        counts = torch.bincount(rows, minlength=num_sequences)
    sums = summed_token_logps(
        states, targets, rows, num_sequences, head, softcap, chunk_size=chunk_size
    )
    return SequenceLogps(
        logps=sums,
        counts=counts,
        states=states if keep_states else None,
        rows=rows if keep_states else None,
    )


def _capped_logits(states: Tensor, weight: Tensor, softcap: float | None) -> Tensor:
    logits = (states @ weight.T).float()
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def _kl_chunk(
    policy_states: Tensor, ref_states: Tensor, weight: Tensor, softcap: float | None
) -> Tensor:
    """KL(pi_ref || pi_theta) of each position's next-token distribution, [n]."""
    ref_logp = torch.log_softmax(_capped_logits(ref_states, weight.detach(), softcap), dim=-1)
    policy_logp = torch.log_softmax(_capped_logits(policy_states, weight, softcap), dim=-1)
    return (ref_logp.exp() * (ref_logp - policy_logp)).sum(dim=-1)


def response_kl(
    policy_states: Tensor,
    ref_states: Tensor,
    weight: Tensor,
    rows: Tensor,
    num_rows: int,
    *,
    softcap: float | None = None,
    chunk_size: int = 256,
) -> Tensor:
    """TDPO's SeqKL(y) = sum_t KL(pi_ref(.|x, y_<t) || pi_theta(.|x, y_<t)) per row ([R]).

    The same quantity as ``priors.sequence_kl`` (seed 003 sec. 4, TDPO prior), computed from
    hidden states a chunk of positions at a time; each chunk's logits are recomputed in the
    backward pass (activation checkpointing) instead of being kept.
    """
    parts = []
    for start in range(0, policy_states.shape[0], chunk_size):
        stop = start + chunk_size
        parts.append(
            checkpoint(
                _kl_chunk,
                policy_states[start:stop],
                ref_states[start:stop],
                weight,
                softcap,
                use_reentrant=False,
            )
        )
    per_position = torch.cat(parts) if parts else policy_states.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(num_rows, dtype=torch.float32, device=policy_states.device)
    return sums.index_add(0, rows, per_position)


def is_peft_model(model: Any) -> bool:
    return hasattr(_unwrap(model), "disable_adapter")


@contextmanager
def reference_mode(model: Any) -> Iterator[None]:
    """Run ``model`` as the reference policy: LoRA adapters disabled, no gradients.

    For a full fine-tune, call this before the first update: the model IS the reference then.
    """
    inner = _unwrap(model)
    adapters_off = inner.disable_adapter() if is_peft_model(inner) else nullcontext()
    with torch.no_grad(), adapters_off:
        yield


# --------------------------------------------------------------------------------------------
# Reference log-probs computed once before training
# --------------------------------------------------------------------------------------------


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
    device = next(_unwrap(model).parameters()).device
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


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


@dataclass
class PairLogps:
    """Policy log-probs of a batch of B pairs, split by role ([B] each)."""

    chosen: Tensor
    rejected: Tensor
    chosen_cross: Tensor | None = None  # y_c under rejected_input (InfoNCE)
    rejected_cross: Tensor | None = None  # y_r under rejected_input (InfoNCE)
    chosen_seq_kl: Tensor | None = None  # TDPO prior
    rejected_seq_kl: Tensor | None = None


class PreferenceTrainer(Trainer):
    """``transformers.Trainer`` for the loss family of ``losses.LOSSES``.

    Batches come from ``PairCollator`` (chosen sequences, then rejected ones, stacked as
    padded rows or packed into shared rows; log-probs come back per sequence) and carry
    the reference (and prior) log-probs as per-pair tensors, so no reference model is held
    in memory. Training order comes from ``LengthGroupedSeededSampler``, a function of the
    seed and the epoch only, which makes resumed runs see the same batches.
    """

    def __init__(
        self,
        *args: Any,
        settings: LossSettings,
        chunk_size: int = LOGPS_CHUNK_TOKENS,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.chunk_size = chunk_size
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean
        self._metrics = MetricAccumulator()
        self._check_setup()

    def _check_setup(self) -> None:
        if self.settings.projected_gradient:
            if self.args.gradient_accumulation_steps != 1:
                raise ConfigError(
                    "dpo_pg projects full-batch gradients (seed 002 App. H): use "
                    "--gradient-accumulation-steps 1 and a larger --per-device-batch-size",
                    key="gradient_accumulation_steps",
                )
            if self.args.world_size > 1:
                raise ConfigError(
                    "dpo_pg computes its two gradients with autograd.grad, which data-parallel "
                    "gradient synchronisation does not see: run it on one process",
                    key="loss",
                )
        if self.settings.needs_reference_logits and not is_peft_model(self.model):
            raise ConfigError(
                "prior 'tdpo' needs the reference model's logits at every step; train with "
                "LoRA (--lora-r R), where the reference is the base model with adapters "
                "disabled, so no second model copy is needed",
                key="prior",
            )

    # -- data order ----------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset: Any = None) -> LengthGroupedSeededSampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedSeededSampler(
            dataset.lengths, self.args.train_batch_size * max(1, self.args.world_size), seed=seed
        )

    # -- forward and loss ------------------------------------------------------------------
    def pair_logps(self, model: Any, inputs: dict[str, Tensor]) -> PairLogps:
        """One forward pass over the stacked batch, split into per-role [B] tensors."""
        pairs = inputs["index"].shape[0]
        keep_states = self.settings.needs_reference_logits
        result = batch_sequence_logps(
            model, inputs, chunk_size=self.chunk_size, keep_states=keep_states
        )
        parts = result.logps.split(pairs)
        logps = PairLogps(chosen=parts[0], rejected=parts[1])
        if len(parts) == 4:
            logps.chosen_cross, logps.rejected_cross = parts[2], parts[3]
        if keep_states:
            kl = self._sequence_kl(model, inputs, result)
            logps.chosen_seq_kl, logps.rejected_seq_kl = kl[:pairs], kl[pairs : 2 * pairs]
        return logps

    def _sequence_kl(self, model: Any, inputs: dict[str, Tensor], result: SequenceLogps) -> Tensor:
        """Per-row SeqKL for the TDPO prior: reference = base model with adapters disabled."""
        with reference_mode(model):
            ref_hidden = _final_hidden_states(
                _unwrap(model),
                inputs["input_ids"],
                inputs.get("attention_mask"),
                inputs.get("position_ids"),
            )
        rows, cols = inputs["response_mask"][:, 1:].nonzero(as_tuple=True)
        _, head, softcap = _causal_lm_parts(_unwrap(model))
        ref_states = ref_hidden[:, :-1][rows, cols].to(head.weight.dtype)
        assert result.states is not None and result.rows is not None
        return response_kl(
            result.states,
            ref_states,
            head.weight,
            result.rows,
            result.logps.shape[0],
            softcap=softcap,
        )

    def per_example_loss(self, logps: PairLogps, inputs: dict[str, Tensor]) -> Tensor:
        """The registry loss of every pair in the batch, [B]."""
        settings = self.settings
        spec = LOSSES[settings.loss]
        kwargs: dict[str, Any] = {
            "beta": settings.beta,
            "length_normalize": settings.length_normalize,
            "chosen_tokens": inputs["chosen_tokens"],
            "rejected_tokens": inputs["rejected_tokens"],
        }
        if settings.loss == "simpo":
            kwargs["gamma"] = settings.gamma
        if settings.loss == "mi_dpo":
            kwargs["prior"] = settings.prior
            for name in ("gamma", "eta", "length_penalty"):
                if getattr(settings, name) is not None:
                    kwargs[name] = getattr(settings, name)
            if settings.needs_prior_scores:
                kwargs["prior_chosen_logps"] = inputs["prior_chosen_logps"]
                kwargs["prior_rejected_logps"] = inputs["prior_rejected_logps"]
            if settings.needs_reference_logits:
                kwargs["chosen_seq_kl"] = logps.chosen_seq_kl
                kwargs["rejected_seq_kl"] = logps.rejected_seq_kl
        if settings.needs_cross_inputs:
            kwargs["chosen_logps_on_rejected_input"] = logps.chosen_cross
            kwargs["rejected_logps_on_rejected_input"] = logps.rejected_cross
        return spec.fn(
            logps.chosen,
            logps.rejected,
            inputs.get("ref_chosen_logps"),
            inputs.get("ref_rejected_logps"),
            **kwargs,
        )

    def _record_metrics(self, logps: PairLogps, inputs: dict[str, Tensor]) -> None:
        """TRL-named metrics; rewards are measured against the reference, or, for the DICE
        prior without one, against the previous round's policy (DICE's own reference)."""
        ref_chosen = inputs.get("ref_chosen_logps", inputs.get("prior_chosen_logps"))
        ref_rejected = inputs.get("ref_rejected_logps", inputs.get("prior_rejected_logps"))
        self._metrics.add(
            preference_metrics(
                logps.chosen,
                logps.rejected,
                ref_chosen,
                ref_rejected,
                beta=self.settings.beta,
                length_normalize=self.settings.length_normalize,
                chosen_tokens=inputs["chosen_tokens"],
                rejected_tokens=inputs["rejected_tokens"],
            )
        )

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        logps = self.pair_logps(model, inputs)
        loss = self.per_example_loss(logps, inputs).mean()
        self._stop_if_not_finite(loss)
        self._record_metrics(logps, inputs)
        if return_outputs:
            return loss, {"chosen_logps": logps.chosen, "rejected_logps": logps.rejected}
        return loss

    def training_step(
        self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Tensor:
        if not self.settings.projected_gradient:
            return super().training_step(model, inputs, num_items_in_batch)
        return self._projected_gradient_step(model, inputs)

    def _projected_gradient_step(self, model: Any, inputs: dict[str, Any]) -> Tensor:
        """DPO-PG (seed 002 Def. H.1): set grad = g_w - max(0, g_w.g_l)/|g_l|^2 g_l.

        g_w, g_l are the gradients of the batch NLLs L(y) = -(1/M) sum_i l_theta(y^(i)) of the
        chosen and rejected responses (two backward passes over one forward graph). The
        optimizer, clipping and schedule then act on this direction as App. H prescribes.
        The DPO loss is computed and logged (Cor. H.5.1: it decreases), not differentiated.
        """
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            logps = self.pair_logps(model, inputs)
            dpo_loss = self.per_example_loss(logps, inputs).mean()
        self._stop_if_not_finite(dpo_loss)
        self._record_metrics(logps, inputs)
        chosen, rejected = logps.chosen, logps.rejected
        if self.settings.length_normalize:
            chosen = chosen / inputs["chosen_tokens"]
            rejected = rejected / inputs["rejected_tokens"]
        parameters = [p for p in model.parameters() if p.requires_grad]
        direction = dpo_pg_gradients(-chosen.mean(), -rejected.mean(), parameters)
        for parameter, grad in zip(parameters, direction, strict=True):
            if grad is None:
                continue
            parameter.grad = grad if parameter.grad is None else parameter.grad + grad
        return dpo_loss.detach()

    # -- safety ----------------------------------------------------------------------------
    def _stop_if_not_finite(self, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if self.accelerator.num_processes > 1:
            finite = (
                self.accelerator.reduce(finite, reduction="sum") / self.accelerator.num_processes
            )
        if bool(finite.item() == 1.0):
            return
        step = self.state.global_step + 1
        raise TrainingDiverged(
            f"the loss is not finite ({loss.item()}) at step {step}: training stopped before "
            f"this step's update and nothing was saved for it. Lower --learning-rate (now "
            f"{self.args.learning_rate:g}) or --beta (now {self.settings.beta:g}), then rerun; "
            "the last good checkpoint, if any, is kept."
        )

    def check_parameters_finite(self, when: str) -> None:
        """Raise ``TrainingDiverged`` if a trainable weight is NaN or inf."""
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad and not bool(torch.isfinite(parameter.detach()).all()):
                raise TrainingDiverged(
                    f"weight {name} is not finite after step {self.state.global_step}, so the "
                    f"{when} was not written (earlier checkpoints are kept). Lower "
                    f"--learning-rate (now {self.args.learning_rate:g}) and rerun."
                )

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        self.check_parameters_finite("checkpoint")
        super()._save_checkpoint(model, trial)

    # -- logging ---------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (not the end-of-run summary)
            logs = {**logs, **self._metrics.pop_means(reduce=self._sum_over_processes)}
        super().log(logs, start_time)

    def _sum_over_processes(self, tensor: Tensor) -> Tensor:
        if self.accelerator.num_processes > 1:
            return self.accelerator.reduce(tensor.to(self.args.device), reduction="sum")
        return tensor
