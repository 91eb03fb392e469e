"""Priors zeta for MI-DPO (seed 003, "Many of your DPOs are secretly one").

MI-DPO (seed 003, sec. 3.2, J_MI-DPO) replaces DPO's reference model by a general prior zeta:

    loss = -log sigmoid(beta * [h(y_c) - h(y_r)]),    h(y) = l_theta(y) - log zeta(y)

where l_theta(y) = log pi_theta(y|x). Seed 003 writes the coefficient as alpha = 1/beta_seed003;
here it is called ``beta`` because it plays exactly the role of DPO's beta.

Each prior below is one choice of zeta (seed 003 sec. 4 and App. B). Instead of building
log zeta and subtracting it from l_theta, every prior returns the simplified log-ratio h(y)
directly. This matters numerically: for the SimPO prior, l_theta - (1 - 1/|y|) l_theta cancels
catastrophically in bf16 when l_theta is near -1e4, while l_theta / |y| does not. It also makes
each prior reproduce the loss it recovers exactly, gradient included (terms of zeta that depend
on pi_theta are differentiated, as the recovered losses require).

Length normalisation (``length_normalize=True`` in ``mi_dpo``) divides every log-probability
input (policy, reference, prior) by its response's token count before the prior sees it. The
extra additive terms of a prior (the R-DPO length term, the TDPO KL sums, the SimPO margin) are
used as given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "PRIORS",
    "PriorInputs",
    "PriorSpec",
    "get_prior",
    "sequence_kl",
]


@dataclass(frozen=True)
class PriorInputs:
    """Everything a prior may need, already validated and in the loss's compute dtype.

    Log-prob fields hold l(y) per example (shape [batch]): summed over response tokens, or the
    per-token mean when ``length_normalized`` is true. Fields a prior does not use are None.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None
    ref_rejected: Tensor | None
    chosen_tokens: Tensor | None
    rejected_tokens: Tensor | None
    prior_chosen: Tensor | None
    prior_rejected: Tensor | None
    chosen_seq_kl: Tensor | None
    rejected_seq_kl: Tensor | None
    length_normalized: bool
    beta: float
    length_penalty: float | None
    gamma: float | None
    eta: float | None


LogRatios = Callable[[PriorInputs], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class PriorSpec:
    """One named MI-DPO prior.

    Attributes:
        name: the value of ``mi_dpo(prior=...)``.
        recovers: the published loss this prior turns MI-DPO into.
        log_zeta: log zeta(y) in plain text (up to a constant shared by y_c and y_r).
        citation: where seed 003 derives it.
        needs_reference: whether ref log-probs are used.
        inputs: the prior-specific keyword arguments of ``mi_dpo`` it requires
            (token counts are listed here when the prior itself uses |y|).
        log_ratios: maps inputs to (h(y_c), h(y_r)) with h = l_theta - log zeta.
    """

    name: str
    recovers: str
    log_zeta: str
    citation: str
    needs_reference: bool
    inputs: tuple[str, ...]
    log_ratios: LogRatios


def _ref_log_ratios(inputs: PriorInputs) -> tuple[Tensor, Tensor]:
    """zeta = pi_ref: h(y) = l_theta(y) - l_ref(y), i.e. DPO (seed 003 App. B)."""
    assert inputs.ref_chosen is not None and inputs.ref_rejected is not None
    return inputs.policy_chosen - inputs.ref_chosen, inputs.policy_rejected - inputs.ref_rejected


def _length_log_ratios(inputs: PriorInputs) -> tuple[Tensor, Tensor]:
    """zeta ∝ pi_ref(y) exp((a/beta) |y|): h(y) = l_theta - l_ref - (a/beta) |y|.

    Seed 003 App. B writes zeta ∝ pi_ref / exp(beta' |y|) and gets the R-DPO regulariser
    + beta * beta' (|y_w| - |y_l|). R-DPO (Park et al. 2024) penalises length:
    beta (D_c - D_r) - a (|y_c| - |y_r|), so beta' = -a / beta with a = ``length_penalty``.
    """
    assert inputs.ref_chosen is not None and inputs.ref_rejected is not None
    assert inputs.chosen_tokens is not None and inputs.rejected_tokens is not None
    assert inputs.length_penalty is not None
    per_token = inputs.length_penalty / inputs.beta
    chosen = inputs.policy_chosen - inputs.ref_chosen - per_token * inputs.chosen_tokens
    rejected = inputs.policy_rejected - inputs.ref_rejected - per_token * inputs.rejected_tokens
    return chosen, rejected


def _simpo_log_ratios(inputs: PriorInputs) -> tuple[Tensor, Tensor]:
    """zeta ∝ pi_theta(y)^(1 - 1/|y|) exp(b(y)), b(y_c) = g/(2 beta), b(y_r) = -g/(2 beta).

    h(y) = l_theta(y) / |y| - b(y), so beta (h_c - h_r) = beta (mean l_c - mean l_r) - gamma:
    SimPO (seed 003 sec. 4, App. B). With ``length_normalized`` the inputs are already
    per-token means and are not divided again.
    """
    assert inputs.gamma is not None
    half_margin = inputs.gamma / (2.0 * inputs.beta)
    if inputs.length_normalized:
        mean_chosen, mean_rejected = inputs.policy_chosen, inputs.policy_rejected
    else:
        assert inputs.chosen_tokens is not None and inputs.rejected_tokens is not None
        mean_chosen = inputs.policy_chosen / inputs.chosen_tokens
        mean_rejected = inputs.policy_rejected / inputs.rejected_tokens
    return mean_chosen - half_margin, mean_rejected + half_margin


def _centropy_log_ratios(inputs: PriorInputs) -> tuple[Tensor, Tensor]:
    """zeta = pi_ref(y) pi_theta(y)^(1 - eta): h(y) = eta l_theta(y) - l_ref(y).

    Entropy-controllable DPO (H-DPO) in the form of seed 003 App. B, pi_theta^eta / pi_ref.
    (Seed 003 sec. 4 prints pi_theta^eta / pi_ref^eta, which this zeta does not produce; the
    appendix form is the one the stated prior yields.)
    """
    assert inputs.ref_chosen is not None and inputs.ref_rejected is not None
    assert inputs.eta is not None
    eta = inputs.eta
    return (
        eta * inputs.policy_chosen - inputs.ref_chosen,
        eta * inputs.policy_rejected - inputs.ref_rejected,
    )


def _tdpo_log_ratios(inputs: PriorInputs) -> tuple[Tensor, Tensor]:
    """zeta ∝ pi_ref(y) exp(-SeqKL(y)): h(y) = l_theta(y) - l_ref(y) + SeqKL(y).

    SeqKL(y) = sum_t KL(pi_ref(.|x, y_<t) || pi_theta(.|x, y_<t)) (see ``sequence_kl``).
    beta (h_c - h_r) = beta (D_c - D_r) - beta (SeqKL(y_r) - SeqKL(y_c)): TDPO (seed 003
    App. B). Gradient flows through both KL sums as given (TDPO1); pass a detached
    ``chosen_seq_kl`` for the TDPO2 variant.
    """
    assert inputs.ref_chosen is not None and inputs.ref_rejected is not None
    assert inputs.chosen_seq_kl is not None and inputs.rejected_seq_kl is not None
    return (
        inputs.policy_chosen - inputs.ref_chosen + inputs.chosen_seq_kl,
        inputs.policy_rejected - inputs.ref_rejected + inputs.rejected_seq_kl,
    )


def _given_prior_log_ratios(inputs: PriorInputs) -> tuple[Tensor, Tensor]:
    """zeta given by its own log-probs: h(y) = l_theta(y) - l_zeta(y)."""
    assert inputs.prior_chosen is not None and inputs.prior_rejected is not None
    return (
        inputs.policy_chosen - inputs.prior_chosen,
        inputs.policy_rejected - inputs.prior_rejected,
    )


_PRIOR_LIST: tuple[PriorSpec, ...] = (
    PriorSpec(
        name="ref",
        recovers="DPO",
        log_zeta="l_ref(y)",
        citation="seed 003 sec. 4, App. B (DPO)",
        needs_reference=True,
        inputs=(),
        log_ratios=_ref_log_ratios,
    ),
    PriorSpec(
        name="length",
        recovers="R-DPO",
        log_zeta="l_ref(y) + (length_penalty / beta) * |y|",
        citation="seed 003 sec. 4, App. B (R-DPO)",
        needs_reference=True,
        inputs=("length_penalty", "chosen_tokens", "rejected_tokens"),
        log_ratios=_length_log_ratios,
    ),
    PriorSpec(
        name="simpo",
        recovers="SimPO",
        log_zeta="(1 - 1/|y|) l_theta(y) + b(y), b(y_c) = gamma/(2 beta) = -b(y_r)",
        citation="seed 003 sec. 4, App. B (SimPO)",
        needs_reference=False,
        inputs=("gamma", "chosen_tokens", "rejected_tokens"),
        log_ratios=_simpo_log_ratios,
    ),
    PriorSpec(
        name="centropy",
        recovers="entropy-controllable DPO (H-DPO)",
        log_zeta="l_ref(y) + (1 - eta) l_theta(y)",
        citation="seed 003 sec. 4, App. B (cEntropy)",
        needs_reference=True,
        inputs=("eta",),
        log_ratios=_centropy_log_ratios,
    ),
    PriorSpec(
        name="tdpo",
        recovers="TDPO",
        log_zeta="l_ref(y) - sum_t KL(pi_ref(.|x,y_<t) || pi_theta(.|x,y_<t))",
        citation="seed 003 sec. 4, App. B (TDPO)",
        needs_reference=True,
        inputs=("chosen_seq_kl", "rejected_seq_kl"),
        log_ratios=_tdpo_log_ratios,
    ),
    PriorSpec(
        name="dice",
        recovers="DICE (iterative DPO against the previous round's policy)",
        log_zeta="l_prev(y), the previous round's policy (computed without gradient)",
        citation="seed 003 sec. 4, App. B (DICE)",
        needs_reference=False,
        inputs=("prior_chosen_logps", "prior_rejected_logps"),
        log_ratios=_given_prior_log_ratios,
    ),
    PriorSpec(
        name="learned",
        recovers="MI-DPO with a prior optimised jointly with the policy",
        log_zeta="l_phi(y) of a trainable prior model (gradient flows into phi)",
        citation="seed 003 sec. 5.2",
        needs_reference=False,
        inputs=("prior_chosen_logps", "prior_rejected_logps"),
        log_ratios=_given_prior_log_ratios,
    ),
)

PRIORS: dict[str, PriorSpec] = {spec.name: spec for spec in _PRIOR_LIST}
"""Every MI-DPO prior by name. ``learned`` needs a restricted prior family (seed 003 sec. 5.2
asks for a compact set Xi): an unrestricted zeta can drive the loss to zero by itself."""


def get_prior(name: str) -> PriorSpec:
    """Return the prior called ``name``; a ValueError lists the valid names on a typo."""
    try:
        return PRIORS[name]
    except KeyError:
        valid = ", ".join(sorted(PRIORS))
        raise ValueError(f"unknown MI-DPO prior {name!r}; choose one of: {valid}") from None


def sequence_kl(ref_logits: Tensor, policy_logits: Tensor, response_mask: Tensor) -> Tensor:
    """Per-sequence sum_t KL(pi_ref(.|x, y_<t) || pi_theta(.|x, y_<t)) over response tokens.

    This is the SeqKL term of the TDPO prior (seed 003 sec. 4): the forward KL from the
    reference to the policy next-token distributions, summed over the positions that predict
    response tokens. It needs full logits, not only the log-probs of the sampled tokens.

    Args:
        ref_logits: reference logits, shape [batch, time, vocab].
        policy_logits: policy logits aligned with ``ref_logits``, same shape.
        response_mask: [batch, time], 1 (or True) where the position predicts a response token.

    Returns:
        Tensor of shape [batch], computed in float32 or wider.
    """
    if ref_logits.shape != policy_logits.shape or ref_logits.dim() != 3:
        raise ValueError(
            "ref_logits and policy_logits must both have shape [batch, time, vocab]; got "
            f"{tuple(ref_logits.shape)} and {tuple(policy_logits.shape)}"
        )
    if tuple(response_mask.shape) != tuple(ref_logits.shape[:2]):
        raise ValueError(
            f"response_mask must have shape [batch, time] = {tuple(ref_logits.shape[:2])}; "
            f"got {tuple(response_mask.shape)}"
        )
    dtype = torch.promote_types(policy_logits.dtype, torch.float32)
    ref_logp = torch.log_softmax(ref_logits.to(dtype), dim=-1)  # (B, T, V)
    policy_logp = torch.log_softmax(policy_logits.to(dtype), dim=-1)  # (B, T, V)
    ref_prob = ref_logp.exp()
    # Tokens the reference rules out (-inf logits) add nothing; without the mask 0 * inf = NaN.
    terms = torch.where(ref_prob > 0, ref_prob * (ref_logp - policy_logp), 0.0)  # (B, T, V)
    per_position = terms.sum(dim=-1)  # (B, T)
    return (per_position * response_mask.to(dtype)).sum(dim=-1)  # (B,)
