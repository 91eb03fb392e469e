"""Preference losses of the mutual-information family, as pure functions of log-probs.

Every sequence-level loss has the same call shape and returns one value per example (shape
[batch]); the caller reduces (mean, or a sum over gathered processes):

    loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
         *, beta, length_normalize=..., chosen_tokens=None, rejected_tokens=None, ...)

Notation (DESIGN.md sec. 4): l(y) = log pi(y|x) of a response, D = l_theta(y) - l_ref(y),
D_c and D_r for the chosen and rejected response, s = softplus.

Length normalisation, one rule for all losses: pass log-probs *summed* over response tokens
(what ``mipo score`` stores) together with ``chosen_tokens`` / ``rejected_tokens``; with
``length_normalize=True`` every log-prob input (policy, reference, prior, cross-context) is
divided by its response's token count before the formula is applied. Already-averaged inputs
with ``length_normalize=False`` give the same result. Each function's default for
``length_normalize`` is its paper's choice (also recorded in ``LOSSES``).

Numerics: inputs of any floating dtype are computed in float32 or wider (bf16/fp16 are upcast,
as mixed-precision training keeps the loss in fp32), only through ``logsigmoid`` and
``softplus``, so value and gradient stay finite for log-probs down to -1e4 and any sign of D.
The one exponential, InfoPO's exp(beta D_r), is continued linearly past
``INFOPO_EXP_LINEAR_FROM`` (see ``infopo``).

Reference-free losses (``simpo``, ``sft``, ``infonce``) accept the reference arguments and
ignore them, so callers can treat all losses alike. ``LOSSES`` is the single registry of names.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

from mipo_engine.errors import ConfigError
from mipo_engine.training.priors import PRIORS, PriorInputs, get_prior

__all__ = [
    "INFOPO_EXP_LINEAR_FROM",
    "LOSSES",
    "LossSpec",
    "UnknownLossError",
    "dpo",
    "dpo_pg_direction",
    "dpo_pg_gradients",
    "get_loss",
    "infonce",
    "infopo",
    "loss_needs_reference",
    "mi_dpo",
    "mio",
    "preference_metrics",
    "sft",
    "signature_defaults",
    "simpo",
]

INFOPO_EXP_LINEAR_FROM = 20.0
"""Exponent above which InfoPO's exp(z) continues as the tangent line exp(T) (1 + z - T).

exp(20) ≈ 4.85e8: per-example gradient weights stay below ~5e8 * beta, so squared gradient
norms summed over billions of parameters stay finite in fp32 (gradient clipping keeps
working). Below the bound the loss is exactly the paper's."""


# --------------------------------------------------------------------------------------------
# Input checks and length normalisation (shared by all losses)
# --------------------------------------------------------------------------------------------


def _compute_dtype(reference: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype when it is already wider."""
    return torch.promote_types(reference.dtype, torch.float32)


def _check_batch_tensor(loss: str, name: str, value: object, batch_shape: torch.Size) -> Tensor:
    """Raise a ValueError unless ``value`` is a floating tensor of shape [batch]."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{loss}: {name} must be a torch.Tensor of shape [batch]; got {value!r}")
    if value.dim() != 1 or value.shape != batch_shape:
        raise ValueError(
            f"{loss}: {name} must have shape [batch] = {list(batch_shape)}; got "
            f"{list(value.shape)} (pass one summed log-prob per example)"
        )
    if not value.is_floating_point():
        raise ValueError(f"{loss}: {name} must be a floating tensor; got dtype {value.dtype}")
    return value


def _check_tokens(loss: str, name: str, value: object, batch_shape: torch.Size) -> Tensor:
    """Raise a ValueError unless ``value`` holds one positive token count per example."""
    if not isinstance(value, Tensor) or value.dim() != 1 or value.shape != batch_shape:
        raise ValueError(
            f"{loss}: {name} must be a tensor of shape [batch] = {list(batch_shape)} holding "
            f"each response's token count; got {value!r}"
        )
    if bool((value < 1).any()):
        raise ValueError(f"{loss}: every entry of {name} must be >= 1 (a response has tokens)")
    return value


def _check_positive(loss: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{loss}: {name} must be a finite number > 0; got {value!r}")


def _check_finite(loss: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{loss}: {name} must be a finite number; got {value!r}")


def _require_reference(loss: str, ref_chosen: Tensor | None, ref_rejected: Tensor | None) -> None:
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(
            f"{loss} needs ref_chosen_logps and ref_rejected_logps (summed reference log-probs, "
            "from the `scores` artifact or a reference forward pass); or use a "
            "reference-free loss: "
            + ", ".join(n for n, s in LOSSES.items() if not s.needs_reference)
        )


@dataclass(frozen=True)
class _Side:
    """Token counts of both responses, in the compute dtype, or None when not given."""

    chosen: Tensor | None
    rejected: Tensor | None


def _token_counts(
    loss: str,
    batch_shape: torch.Size,
    like: Tensor,
    chosen_tokens: Tensor | None,
    rejected_tokens: Tensor | None,
    *,
    required: bool,
    why: str,
) -> _Side:
    """Validate the token counts; they must be present when ``required`` (``why`` says why)."""
    if chosen_tokens is None and rejected_tokens is None and not required:
        return _Side(None, None)
    if chosen_tokens is None or rejected_tokens is None:
        raise ValueError(
            f"{loss}: pass both chosen_tokens and rejected_tokens ({why}); "
            "they are the response token counts, as in the `scores` artifact"
        )
    chosen = _check_tokens(loss, "chosen_tokens", chosen_tokens, batch_shape)
    rejected = _check_tokens(loss, "rejected_tokens", rejected_tokens, batch_shape)
    dtype = _compute_dtype(like)
    return _Side(
        chosen.to(device=like.device, dtype=dtype), rejected.to(device=like.device, dtype=dtype)
    )


def _normalize(values: Tensor, tokens: Tensor | None, like: Tensor) -> Tensor:
    """l(y) on ``like``'s device in the compute dtype: summed as given, or per-token mean."""
    values = values.to(device=like.device, dtype=_compute_dtype(like))
    return values if tokens is None else values / tokens


@dataclass(frozen=True)
class _Pair:
    """Validated per-example sequence values l(y) of one preference pair batch."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None
    ref_rejected: Tensor | None
    tokens: _Side


def _prepare(
    loss: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    use_reference: bool,
    length_normalize: bool,
    chosen_tokens: Tensor | None,
    rejected_tokens: Tensor | None,
    tokens_required: bool = False,
    tokens_why: str = "",
) -> _Pair:
    """Check the four log-prob inputs and apply the length-normalisation rule."""
    if not isinstance(policy_chosen_logps, Tensor):
        raise ValueError(f"{loss}: policy_chosen_logps must be a torch.Tensor of shape [batch]")
    shape = policy_chosen_logps.shape
    policy_chosen = _check_batch_tensor(loss, "policy_chosen_logps", policy_chosen_logps, shape)
    policy_rejected = _check_batch_tensor(
        loss, "policy_rejected_logps", policy_rejected_logps, shape
    )
    tokens = _token_counts(
        loss,
        shape,
        policy_chosen,
        chosen_tokens,
        rejected_tokens,
        required=length_normalize or tokens_required,
        why=tokens_why
        or "length_normalize=True divides each log-prob by its token count; pass "
        "length_normalize=False to use summed log-probs",
    )
    divide_chosen = tokens.chosen if length_normalize else None
    divide_rejected = tokens.rejected if length_normalize else None
    ref_chosen = ref_rejected = None
    if use_reference:
        _require_reference(loss, ref_chosen_logps, ref_rejected_logps)
        ref_chosen = _normalize(
            _check_batch_tensor(loss, "ref_chosen_logps", ref_chosen_logps, shape),
            divide_chosen,
            policy_chosen,
        )
        ref_rejected = _normalize(
            _check_batch_tensor(loss, "ref_rejected_logps", ref_rejected_logps, shape),
            divide_rejected,
            policy_chosen,
        )
    return _Pair(
        policy_chosen=_normalize(policy_chosen, divide_chosen, policy_chosen),
        policy_rejected=_normalize(policy_rejected, divide_rejected, policy_chosen),
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
        tokens=tokens,
    )


def _bradley_terry_loss(
    beta: float, chosen_log_ratio: Tensor, rejected_log_ratio: Tensor
) -> Tensor:
    """-log sigmoid(beta (h_c - h_r)), the shared core of DPO and MI-DPO."""
    return -F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio))


# --------------------------------------------------------------------------------------------
# Sequence-level losses
# --------------------------------------------------------------------------------------------


def dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    length_normalize: bool = False,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> Tensor:
    """DPO: loss = -log sigmoid(beta (D_c - D_r)), D = l_theta(y) - l_ref(y).

    Seed 004 eq. 5 (Rafailov et al. 2023). Seed 001 eq. 10 reads it as InfoNCE with K = 2 and
    the critic beta log(pi_theta / pi_ref); MIPO (seed 004) trains it on pairs whose rejected
    response comes from a missing or random context.

    Returns:
        Per-example loss, shape [batch].
    """
    _check_positive("dpo", "beta", beta)
    pair = _prepare(
        "dpo",
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        use_reference=True,
        length_normalize=length_normalize,
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
    )
    assert pair.ref_chosen is not None and pair.ref_rejected is not None
    return _bradley_terry_loss(
        beta, pair.policy_chosen - pair.ref_chosen, pair.policy_rejected - pair.ref_rejected
    )


def mio(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    length_normalize: bool = True,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> Tensor:
    """MIO: loss = s(-beta D_c) + 1/2 s(beta D_c) + 1/2 s(beta D_r), s = softplus.

    Seed 000 eq. 15 (beta = 1) and sec. 3.3 (general beta): the Jensen-Shannon MI estimator
    (eq. 14) with the critic beta log(pi_theta / pi_ref). Its chosen-side gradient changes sign
    at sigmoid(beta D_c) = 2/3 (Prop. 3.2), so the chosen likelihood is not pushed down
    together with the rejected one. The paper length-normalises and uses beta in
    {5, 7.5, 8.75, 10}.

    Returns:
        Per-example loss, shape [batch].
    """
    _check_positive("mio", "beta", beta)
    pair = _prepare(
        "mio",
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        use_reference=True,
        length_normalize=length_normalize,
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
    )
    assert pair.ref_chosen is not None and pair.ref_rejected is not None
    chosen_logit = beta * (pair.policy_chosen - pair.ref_chosen)
    rejected_logit = beta * (pair.policy_rejected - pair.ref_rejected)
    return (
        F.softplus(-chosen_logit)
        + 0.5 * F.softplus(chosen_logit)
        + 0.5 * F.softplus(rejected_logit)
    )


def _exp_with_linear_tail(exponent: Tensor, linear_from: float) -> Tensor:
    """exp(z) for z <= T, exp(T) (1 + z - T) above: same value and slope at T, finite beyond."""
    capped = exponent.clamp(max=linear_from)
    return torch.exp(capped) * (1.0 + (exponent - capped))


def infopo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    length_normalize: bool = True,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> Tensor:
    """InfoPO: loss = -beta l_theta(y_c) + exp(beta D_r).

    Seed 001 eq. 13 is the case beta = 1: -log pi_theta(y_w|x) + pi_theta(y_l|x) / pi_ref(y_l|x),
    the NWJ bound (eq. 12) with the critic beta log(pi_theta / pi_ref) and its constant
    dropped. The rejected response's gradient weight is pi_theta / pi_ref instead of DPO's
    1 / pi_theta (eq. 14), which keeps the chosen likelihood from being dragged down. The
    paper length-normalises and uses beta in {0.5, 1, 2}.

    Guard: for beta D_r > ``INFOPO_EXP_LINEAR_FROM`` (T = 20) exp is replaced by its tangent
    exp(T) (1 + beta D_r - T), so value and gradient stay finite for any D_r (exact below T).
    Only the rejected side references pi_ref; ``ref_chosen_logps`` is accepted and unused.

    Returns:
        Per-example loss, shape [batch].
    """
    _check_positive("infopo", "beta", beta)
    pair = _prepare(
        "infopo",
        policy_chosen_logps,
        policy_rejected_logps,
        None,
        None,
        use_reference=False,
        length_normalize=length_normalize,
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
    )
    if ref_rejected_logps is None:
        _require_reference("infopo", None, None)
    ref_rejected = _normalize(
        _check_batch_tensor(
            "infopo", "ref_rejected_logps", ref_rejected_logps, pair.policy_chosen.shape
        ),
        pair.tokens.rejected if length_normalize else None,
        pair.policy_chosen,
    )
    rejected_exponent = beta * (pair.policy_rejected - ref_rejected)
    return -beta * pair.policy_chosen + _exp_with_linear_tail(
        rejected_exponent, INFOPO_EXP_LINEAR_FROM
    )


def simpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    beta: float,
    gamma: float = 1.0,
    length_normalize: bool = True,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> Tensor:
    """SimPO: loss = -log sigmoid(beta (l_theta(y_c)/|y_c| - l_theta(y_r)/|y_r|) - gamma).

    Seed 003 sec. 4 (J_SimPO, Meng et al. 2024): reference-free, rewards are per-token mean
    log-probs, gamma is the target reward margin. Per-token averaging is part of SimPO, so
    ``length_normalize`` defaults to True (False gives the summed variant). Reference
    arguments are ignored.

    Returns:
        Per-example loss, shape [batch].
    """
    _check_positive("simpo", "beta", beta)
    _check_finite("simpo", "gamma", gamma)
    if gamma < 0:
        raise ValueError(f"simpo: gamma is a target margin and must be >= 0; got {gamma}")
    pair = _prepare(
        "simpo",
        policy_chosen_logps,
        policy_rejected_logps,
        None,
        None,
        use_reference=False,
        length_normalize=length_normalize,
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
    )
    return -F.logsigmoid(beta * (pair.policy_chosen - pair.policy_rejected) - gamma)


def _check_prior_arguments(prior: str, needed: tuple[str, ...], given: dict[str, object]) -> None:
    """Every input the prior needs is given, and no other prior's input is."""
    for name, value in given.items():
        if name in needed and value is None:
            raise ValueError(f"mi_dpo: prior={prior!r} needs {name}")
        if name not in needed and value is not None:
            users = sorted(p for p, spec in PRIORS.items() if name in spec.inputs)
            raise ValueError(
                f"mi_dpo: prior={prior!r} does not use {name}; remove it, or pick a prior that "
                f"uses it: {', '.join(users)}"
            )


def mi_dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    beta: float,
    prior: str = "ref",
    length_normalize: bool = False,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
    prior_chosen_logps: Tensor | None = None,
    prior_rejected_logps: Tensor | None = None,
    chosen_seq_kl: Tensor | None = None,
    rejected_seq_kl: Tensor | None = None,
    length_penalty: float | None = None,
    gamma: float | None = None,
    eta: float | None = None,
) -> Tensor:
    """MI-DPO: loss = -log sigmoid(beta [(l_theta(y_c) - log zeta(y_c)) - (l_theta(y_r) - log zeta(y_r))]).

    Seed 003 sec. 3.2, J_MI-DPO; ``beta`` is that paper's alpha (= 1 / its beta), the same
    coefficient as DPO's beta. The prior zeta is chosen by name (see ``priors.PRIORS``):

    - ``ref``: zeta = pi_ref, exactly DPO.
    - ``length``: zeta ∝ pi_ref exp((a/beta)|y|), R-DPO:
      -log sigmoid(beta (D_c - D_r) - a (|y_c| - |y_r|)); needs ``length_penalty`` = a and
      token counts.
    - ``simpo``: zeta ∝ pi_theta^(1-1/|y|) exp(±gamma/(2 beta)), SimPO; needs ``gamma`` and
      token counts (unless inputs are already averaged with ``length_normalize=True``).
    - ``centropy``: zeta = pi_ref pi_theta^(1-eta), H-DPO: beta [(eta l_c - l_ref,c) -
      (eta l_r - l_ref,r)]; needs ``eta``.
    - ``tdpo``: zeta ∝ pi_ref exp(-SeqKL), TDPO; needs ``chosen_seq_kl``/``rejected_seq_kl``
      from ``priors.sequence_kl`` (full reference logits).
    - ``dice``: zeta = previous round's policy, DICE; needs ``prior_chosen_logps`` /
      ``prior_rejected_logps`` computed without gradient.
    - ``learned``: zeta = a trainable prior (sec. 5.2); same inputs, with gradient.

    Passing an input the chosen prior does not use is an error, so a misspelt prior cannot
    silently ignore a setting. Prior log-probs follow the length-normalisation rule too.

    Returns:
        Per-example loss, shape [batch].
    """
    spec = get_prior(prior)
    _check_positive("mi_dpo", "beta", beta)
    given: dict[str, object] = {
        "prior_chosen_logps": prior_chosen_logps,
        "prior_rejected_logps": prior_rejected_logps,
        "chosen_seq_kl": chosen_seq_kl,
        "rejected_seq_kl": rejected_seq_kl,
        "length_penalty": length_penalty,
        "gamma": gamma,
        "eta": eta,
    }
    _check_prior_arguments(prior, spec.inputs, given)
    for name in ("length_penalty", "gamma", "eta"):
        if name in spec.inputs:
            _check_finite("mi_dpo", name, given[name])  # type: ignore[arg-type]
    if gamma is not None and gamma < 0:
        raise ValueError(f"mi_dpo: gamma is SimPO's target margin and must be >= 0; got {gamma}")
    if eta is not None and eta <= 0:
        raise ValueError(f"mi_dpo: eta scales the policy log-prob and must be > 0; got {eta}")

    prior_uses_lengths = prior == "length" or (prior == "simpo" and not length_normalize)
    pair = _prepare(
        "mi_dpo",
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        use_reference=spec.needs_reference,
        length_normalize=length_normalize,
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
        tokens_required=prior_uses_lengths,
        tokens_why=f"prior={prior!r} uses the response lengths |y|",
    )
    shape = pair.policy_chosen.shape
    divide_chosen = pair.tokens.chosen if length_normalize else None
    divide_rejected = pair.tokens.rejected if length_normalize else None

    def optional(name: str, value: Tensor | None, tokens: Tensor | None) -> Tensor | None:
        if value is None:
            return None
        return _normalize(
            _check_batch_tensor("mi_dpo", name, value, shape), tokens, pair.policy_chosen
        )

    def optional_term(name: str, value: Tensor | None) -> Tensor | None:
        if value is None:
            return None
        return _check_batch_tensor("mi_dpo", name, value, shape).to(pair.policy_chosen)

    inputs = PriorInputs(
        policy_chosen=pair.policy_chosen,
        policy_rejected=pair.policy_rejected,
        ref_chosen=pair.ref_chosen,
        ref_rejected=pair.ref_rejected,
        chosen_tokens=pair.tokens.chosen,
        rejected_tokens=pair.tokens.rejected,
        prior_chosen=optional("prior_chosen_logps", prior_chosen_logps, divide_chosen),
        prior_rejected=optional("prior_rejected_logps", prior_rejected_logps, divide_rejected),
        chosen_seq_kl=optional_term("chosen_seq_kl", chosen_seq_kl),
        rejected_seq_kl=optional_term("rejected_seq_kl", rejected_seq_kl),
        length_normalized=length_normalize,
        beta=float(beta),
        length_penalty=length_penalty,
        gamma=gamma,
        eta=eta,
    )
    chosen_log_ratio, rejected_log_ratio = spec.log_ratios(inputs)
    return _bradley_terry_loss(beta, chosen_log_ratio, rejected_log_ratio)


def sft(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor | None = None,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    beta: float = 1.0,
    length_normalize: bool = True,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> Tensor:
    """SFT on the chosen response: loss = -l_theta(y_c) / |y_c| (per-token mean NLL).

    Seed 004 eq. 3 (the SFT baseline of seed 004 sec. 5.1 trains on MIPO's chosen responses).
    ``length_normalize=False`` gives the summed NLL. Only the chosen log-probs are used; the
    rejected and reference arguments, ``beta`` and ``rejected_tokens`` are accepted and
    ignored.

    Returns:
        Per-example loss, shape [batch].
    """
    if not isinstance(policy_chosen_logps, Tensor):
        raise ValueError("sft: policy_chosen_logps must be a torch.Tensor of shape [batch]")
    shape = policy_chosen_logps.shape
    chosen = _check_batch_tensor("sft", "policy_chosen_logps", policy_chosen_logps, shape)
    tokens = None
    if length_normalize:
        if chosen_tokens is None:
            raise ValueError(
                "sft: length_normalize=True averages over tokens; pass chosen_tokens "
                "(response token counts) or set length_normalize=False"
            )
        counts = _check_tokens("sft", "chosen_tokens", chosen_tokens, shape)
        tokens = counts.to(device=chosen.device, dtype=_compute_dtype(chosen))
    return -_normalize(chosen, tokens, chosen)


def infonce(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    chosen_logps_on_rejected_input: Tensor,
    rejected_logps_on_rejected_input: Tensor,
    beta: float = 1.0,
    length_normalize: bool = False,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> Tensor:
    """InfoNCE over contexts sharing a prompt, K = 2 (seed 004 eq. 14).

    A pair gives two (response, conditioning) samples: y_c drawn under the training input
    (x, c) (the ``chosen_input`` column) and y_r drawn under (x, c') (``rejected_input``: a
    random context, no context, or another prompt, depending on the strategy). Eq. 14 needs
    each response scored under both conditionings:

        a = l(y_c | x, c)   = policy_chosen_logps              (the usual DPO input)
        b = l(y_c | x, c')  = chosen_logps_on_rejected_input
        u = l(y_r | x, c)   = policy_rejected_logps            (the usual DPO input)
        v = l(y_r | x, c')  = rejected_logps_on_rejected_input

        loss = -1/2 [ log(e^a / ((e^a + e^b)/2)) + log(e^v / ((e^u + e^v)/2)) ]
             = 1/2 [ s(beta (b - a)) + s(beta (u - v)) ] - log 2

    with s = softplus and every l scaled by ``beta`` (beta = 1 is eq. 14 exactly; it is the
    critic's temperature). Reference-free: the reference arguments are ignored. With
    ``length_normalize`` a and b are divided by |y_c|, u and v by |y_r|. The value is 0 when
    the context changes no log-prob, and is bounded below by -log 2.

    Returns:
        Per-example loss, shape [batch].
    """
    _check_positive("infonce", "beta", beta)
    pair = _prepare(
        "infonce",
        policy_chosen_logps,
        policy_rejected_logps,
        None,
        None,
        use_reference=False,
        length_normalize=length_normalize,
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
    )
    shape = pair.policy_chosen.shape
    chosen_cross = _check_batch_tensor(
        "infonce", "chosen_logps_on_rejected_input", chosen_logps_on_rejected_input, shape
    )
    rejected_own = _check_batch_tensor(
        "infonce", "rejected_logps_on_rejected_input", rejected_logps_on_rejected_input, shape
    )
    chosen_cross = _normalize(
        chosen_cross, pair.tokens.chosen if length_normalize else None, pair.policy_chosen
    )
    rejected_own = _normalize(
        rejected_own, pair.tokens.rejected if length_normalize else None, pair.policy_chosen
    )
    chosen_term = F.softplus(beta * (chosen_cross - pair.policy_chosen))
    rejected_term = F.softplus(beta * (pair.policy_rejected - rejected_own))
    return 0.5 * (chosen_term + rejected_term) - math.log(2.0)


# --------------------------------------------------------------------------------------------
# DPO-PG: a gradient rule, not a loss (seed 002 App. H)
# --------------------------------------------------------------------------------------------

GradientVector = Tensor | Sequence[Tensor | None]


def _as_parts(grads: GradientVector) -> list[Tensor | None]:
    return [grads] if isinstance(grads, Tensor) else list(grads)


def _dot(left: Sequence[Tensor | None], right: Sequence[Tensor | None]) -> Tensor:
    """Sum over parameters of <left_i, right_i>, accumulated in float64 (None counts as 0)."""
    parts = [
        torch.sum(a.to(torch.float32) * b.to(torch.float32)).to(torch.float64)
        for a, b in zip(left, right, strict=True)
        if a is not None and b is not None
    ]
    return torch.stack(parts).sum() if parts else torch.zeros((), dtype=torch.float64)


def dpo_pg_direction(
    chosen_nll_grads: GradientVector, rejected_nll_grads: GradientVector
) -> Tensor | list[Tensor | None]:
    """DPO-PG update direction g_w - max(0, g_w . g_l) / |g_l|^2 g_l (seed 002 Def. H.1).

    g_w = grad L(y_w) and g_l = grad L(y_l), where L(y) = -(1/M) sum_i log pi(y^(i)) is the
    batch NLL of the chosen (resp. rejected) responses. The result is a descent direction for
    L(y_w) (Thm. H.4), never one for L(y_l) (Thm. H.5), and therefore for the DPO loss
    (Cor. H.5.1): when g_w . g_l > 0 it is g_w with its component along g_l removed
    (orthogonal to g_l), otherwise g_w itself. If |g_l| = 0 there is nothing to project out
    and g_w is returned.

    How a trainer uses it (two backward passes per step, no loss to back-propagate):
    compute the policy log-probs of chosen and rejected responses, take
    g_w = autograd.grad(-chosen_logps.mean(), params, retain_graph=True) and
    g_l = autograd.grad(-rejected_logps.mean(), params), set each ``p.grad`` to the matching
    entry of this direction, then clip and step the optimiser as usual (Adam included, as in
    seed 002 App. H). ``dpo_pg_gradients`` does the two gradient passes. Under gradient
    accumulation or data parallelism, g_w and g_l must be the full-batch gradients before the
    projection is applied.

    Args:
        chosen_nll_grads: g_w, one flat tensor or a sequence of per-parameter tensors
            (None entries count as zero).
        rejected_nll_grads: g_l, in the same form and with the same shapes.

    Returns:
        The direction, in the same form as ``chosen_nll_grads`` (a tensor, or a list with None
        where both inputs are None).
    """
    chosen_parts = _as_parts(chosen_nll_grads)
    rejected_parts = _as_parts(rejected_nll_grads)
    if len(chosen_parts) != len(rejected_parts):
        raise ValueError(
            "dpo_pg_direction: chosen and rejected gradients must list the same parameters; got "
            f"{len(chosen_parts)} and {len(rejected_parts)} entries"
        )
    for index, (a, b) in enumerate(zip(chosen_parts, rejected_parts, strict=True)):
        if a is not None and b is not None and a.shape != b.shape:
            raise ValueError(
                f"dpo_pg_direction: entry {index} has shape {list(a.shape)} for y_w but "
                f"{list(b.shape)} for y_l"
            )
    overlap = _dot(chosen_parts, rejected_parts)
    rejected_norm_sq = _dot(rejected_parts, rejected_parts)
    # Projection coefficient max(0, g_w.g_l) / |g_l|^2; zero when g_l vanishes.
    safe_norm_sq = torch.where(rejected_norm_sq > 0, rejected_norm_sq, torch.ones_like(overlap))
    coefficient = torch.where(
        rejected_norm_sq > 0, overlap.clamp(min=0) / safe_norm_sq, torch.zeros_like(overlap)
    )
    directions: list[Tensor | None] = []
    for g_w, g_l in zip(chosen_parts, rejected_parts, strict=True):
        if g_l is None:
            directions.append(g_w)
            continue
        # Subtract in float32 at least, so bf16 gradients stay orthogonal to g_l.
        dtype = torch.promote_types(g_l.dtype, torch.float32)
        step = coefficient.to(device=g_l.device, dtype=dtype) * g_l.to(dtype)
        if g_w is None:
            directions.append((-step).to(g_l.dtype))
        else:
            directions.append((g_w.to(dtype) - step).to(g_w.dtype))
    if isinstance(chosen_nll_grads, Tensor):
        return directions[0]
    return directions


def dpo_pg_gradients(
    chosen_nll: Tensor, rejected_nll: Tensor, parameters: Sequence[Tensor]
) -> list[Tensor | None]:
    """Gradients of both batch NLLs w.r.t. ``parameters``, combined by ``dpo_pg_direction``.

    Args:
        chosen_nll: scalar L(y_w) = -mean log pi_theta(y_w|x) (seed 002 App. H).
        rejected_nll: scalar L(y_l), from the same forward pass.
        parameters: the trainable parameters.

    Returns:
        One gradient per parameter (None for parameters neither NLL depends on), ready to be
        written to ``p.grad`` before ``optimizer.step()``.
    """
    if chosen_nll.dim() != 0 or rejected_nll.dim() != 0:
        raise ValueError("dpo_pg_gradients: chosen_nll and rejected_nll must be scalars (.mean())")
    params = list(parameters)
    chosen = torch.autograd.grad(chosen_nll, params, retain_graph=True, allow_unused=True)
    rejected = torch.autograd.grad(rejected_nll, params, allow_unused=True)
    direction = dpo_pg_direction(list(chosen), list(rejected))
    assert isinstance(direction, list)  # list in, list out
    return direction


# --------------------------------------------------------------------------------------------
# Logged metrics
# --------------------------------------------------------------------------------------------


def preference_metrics(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    beta: float,
    length_normalize: bool = False,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-example training metrics under TRL's names (detached, shape [batch] each).

    - ``rewards/chosen`` = beta D_c, ``rewards/rejected`` = beta D_r (implicit rewards; with
      no reference, as for SimPO, D = l_theta), ``rewards/margins`` = their difference,
      ``rewards/accuracies`` = 1.0 where D_c > D_r else 0.0; D follows ``length_normalize``.
    - ``logps/chosen``, ``logps/rejected``: the policy log-probs as passed (summed).
    - with a reference, ``logps/chosen_shift`` and ``logps/rejected_shift`` = l_theta - l_ref
      on summed log-probs: a falling chosen shift is the likelihood displacement that seeds
      000, 001 and 002 discuss.

    Average over the batch (after gathering across processes) before logging.
    """
    _check_positive("preference_metrics", "beta", beta)
    has_reference = ref_chosen_logps is not None and ref_rejected_logps is not None
    with torch.no_grad():
        pair = _prepare(
            "preference_metrics",
            policy_chosen_logps.detach(),
            policy_rejected_logps.detach(),
            ref_chosen_logps,
            ref_rejected_logps,
            use_reference=has_reference,
            length_normalize=length_normalize,
            chosen_tokens=chosen_tokens,
            rejected_tokens=rejected_tokens,
        )
        chosen_shift = pair.policy_chosen
        rejected_shift = pair.policy_rejected
        if pair.ref_chosen is not None and pair.ref_rejected is not None:
            chosen_shift = chosen_shift - pair.ref_chosen
            rejected_shift = rejected_shift - pair.ref_rejected
        metrics = {
            "rewards/chosen": beta * chosen_shift,
            "rewards/rejected": beta * rejected_shift,
            "rewards/margins": beta * (chosen_shift - rejected_shift),
            "rewards/accuracies": (chosen_shift > rejected_shift).to(pair.policy_chosen),
            "logps/chosen": policy_chosen_logps.detach().to(pair.policy_chosen),
            "logps/rejected": policy_rejected_logps.detach().to(pair.policy_chosen),
        }
        if has_reference:
            assert ref_chosen_logps is not None and ref_rejected_logps is not None
            metrics["logps/chosen_shift"] = metrics["logps/chosen"] - ref_chosen_logps.to(
                pair.policy_chosen
            )
            metrics["logps/rejected_shift"] = metrics["logps/rejected"] - ref_rejected_logps.to(
                pair.policy_chosen
            )
    return metrics


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

LossFn = Callable[..., Tensor]


class UnknownLossError(ConfigError, ValueError):
    """A loss name that is not in ``LOSSES``; the message lists the valid names."""


@dataclass(frozen=True)
class LossSpec:
    """One entry of the loss registry, for the trainer, the CLI, configs and docs.

    Attributes:
        name: the registry key (``mipo train --loss NAME``).
        fn: the per-example loss. For ``dpo_pg`` it is the DPO loss, logged to show that the
            projected update decreases it (seed 002 Cor. H.5.1); it is not back-propagated.
        needs_reference: whether reference log-probs must be supplied (for ``mi_dpo``, with
            the default prior; see ``loss_needs_reference``).
        citation: seed and equation.
        formula: the per-example loss in plain text.
        default_beta: the beta to use when the user gives none (from the paper's grid).
        length_normalize_default: whether the paper averages log-probs over tokens.
        extra_inputs: tensor keyword inputs the trainer must supply beyond the four log-prob
            tensors and the token counts (for ``mi_dpo`` they depend on the prior:
            ``priors.PRIORS[prior].inputs``).
        hyperparameters: other scalar keyword options and their defaults.
        gradient_rule: for update rules that are not gradients of ``fn`` (``dpo_pg``), the
            function combining per-side NLL gradients; None for ordinary losses.
    """

    name: str
    fn: LossFn
    needs_reference: bool
    citation: str
    formula: str
    default_beta: float
    length_normalize_default: bool
    extra_inputs: tuple[str, ...] = ()
    hyperparameters: Mapping[str, object] = field(default_factory=dict)
    gradient_rule: Callable[..., object] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))


def _spec_list() -> tuple[LossSpec, ...]:
    return (
        LossSpec(
            name="dpo",
            fn=dpo,
            needs_reference=True,
            citation="seed 004 eq. 5",
            formula="-log sigmoid(beta (D_c - D_r))",
            default_beta=0.1,
            length_normalize_default=False,
        ),
        LossSpec(
            name="mio",
            fn=mio,
            needs_reference=True,
            citation="seed 000 eq. 15, sec. 3.3",
            formula="s(-beta D_c) + 1/2 s(beta D_c) + 1/2 s(beta D_r)",
            default_beta=5.0,
            length_normalize_default=True,
        ),
        LossSpec(
            name="infopo",
            fn=infopo,
            needs_reference=True,
            citation="seed 001 eq. 13",
            formula="-beta l_theta(y_c) + exp(beta D_r)",
            default_beta=1.0,
            length_normalize_default=True,
        ),
        LossSpec(
            name="simpo",
            fn=simpo,
            needs_reference=False,
            citation="seed 003 sec. 4 (SimPO)",
            formula="-log sigmoid(beta (mean l_theta(y_c) - mean l_theta(y_r)) - gamma)",
            default_beta=2.0,
            length_normalize_default=True,
            hyperparameters={"gamma": 1.0},
        ),
        LossSpec(
            name="mi_dpo",
            fn=mi_dpo,
            needs_reference=True,
            citation="seed 003 sec. 3.2 (J_MI-DPO), sec. 4, App. B",
            formula="-log sigmoid(beta [(l_theta(y_c) - log zeta(y_c)) - (l_theta(y_r) - log zeta(y_r))])",
            default_beta=0.1,
            length_normalize_default=False,
            hyperparameters={"prior": "ref", "length_penalty": None, "gamma": None, "eta": None},
        ),
        LossSpec(
            name="infonce",
            fn=infonce,
            needs_reference=False,
            citation="seed 004 eq. 14",
            formula="1/2 [s(beta (b - a)) + s(beta (u - v))] - log 2 (cross-context scores)",
            default_beta=1.0,
            length_normalize_default=False,
            extra_inputs=("chosen_logps_on_rejected_input", "rejected_logps_on_rejected_input"),
        ),
        LossSpec(
            name="sft",
            fn=sft,
            needs_reference=False,
            citation="seed 004 eq. 3",
            formula="-l_theta(y_c) / |y_c|",
            default_beta=1.0,
            length_normalize_default=True,
        ),
        LossSpec(
            name="dpo_pg",
            fn=dpo,
            needs_reference=True,
            citation="seed 002 App. H (Def. H.1)",
            formula="update g_w - max(0, g_w . g_l) / |g_l|^2 g_l, g = grad of batch NLL",
            default_beta=0.1,
            length_normalize_default=False,
            gradient_rule=dpo_pg_direction,
        ),
    )


LOSSES: Mapping[str, LossSpec] = MappingProxyType({spec.name: spec for spec in _spec_list()})
"""The single registry of loss names; CLI choices, config validation and docs read it."""


def get_loss(name: str) -> LossSpec:
    """Return the registry entry for ``name``.

    Raises:
        UnknownLossError (a ValueError and a ConfigError): the name is not registered; the
            message lists the valid names.
    """
    try:
        return LOSSES[name]
    except KeyError:
        valid = ", ".join(LOSSES)
        raise UnknownLossError(f"unknown loss {name!r}; choose one of: {valid}") from None


def loss_needs_reference(name: str, *, prior: str | None = None) -> bool:
    """Whether ``name`` (with ``prior`` for ``mi_dpo``) needs reference log-probs."""
    spec = get_loss(name)
    if name == "mi_dpo" and prior is not None:
        return get_prior(prior).needs_reference
    return spec.needs_reference


def signature_defaults(fn: LossFn) -> dict[str, object]:
    """Keyword-only defaults of a loss function (the registry's defaults are checked against
    these in the tests, so the two cannot drift apart)."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(fn).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        and parameter.default is not inspect.Parameter.empty
    }
