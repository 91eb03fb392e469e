"""The mutual-information trainer family as one ``transformers.Trainer`` subclass.

``PreferenceTrainer.compute_loss`` runs chosen and rejected (and InfoNCE's cross-context rows)
through ONE forward pass (``modeling.policy``), applies the registry loss per example
(``loss_settings.LossSettings`` says which, with which hyperparameters) and records the
preference metrics; ``training_step`` implements DPO-PG's projected gradient (seed 002
App. H); a non-finite loss stops training at once, before any update or save. Reference
log-probs come with the batch (from ``scores``, or ``reference.compute_reference_scores``).

Step-0 invariant: the first logged step (``logging_first_step``) averages the metrics of the
forward passes of step 1, which all run before the first optimizer update, so with reference
log-probs from ``mipo score`` every D = l_theta - l_ref logged there is 0 up to float error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer

from mipo_engine.errors import ConfigError, MipoError
from mipo_engine.modeling.policy import (
    LOGPS_CHUNK_TOKENS,
    batch_response_kl,
    batch_sequence_logps,
    is_peft_model,
)
from mipo_engine.training.data import LengthGroupedSeededSampler
from mipo_engine.training.loss_registry import LOSSES
from mipo_engine.training.loss_settings import LossSettings
from mipo_engine.training.losses import dpo_pg_gradients, preference_metrics
from mipo_engine.training.metrics import MetricAccumulator


class TrainingDiverged(MipoError):
    """The loss or the weights stopped being finite; nothing broken was saved."""

    exit_code = 1


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
    """``transformers.Trainer`` for the loss family of ``loss_registry.LOSSES``.

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
            kl = batch_response_kl(model, inputs, result)
            logps.chosen_seq_kl, logps.rejected_seq_kl = kl[:pairs], kl[pairs : 2 * pairs]
        return logps

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
