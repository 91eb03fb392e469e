"""Losses from mutual-information bounds with the critic beta log(pi_theta / pi_ref) or beta l.

- ``mio``: the Jensen-Shannon estimator (seed 000 eq. 15, sec. 3.3).
- ``infopo``: the NWJ bound (seed 001 eq. 13), with a guarded exponential.
- ``infonce``: K = 2 contrast over the contexts sharing a prompt (seed 004 eq. 14).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mipo_engine.training.losses.inputs import (
    check_batch_tensor,
    check_positive,
    normalize,
    prepare_pair,
    require_reference,
)

INFOPO_EXP_LINEAR_FROM = 20.0
"""Exponent above which InfoPO's exp(z) continues as the tangent line exp(T) (1 + z - T).

exp(20) ≈ 4.85e8: per-example gradient weights stay below ~5e8 * beta, so squared gradient
norms summed over billions of parameters stay finite in fp32 (gradient clipping keeps
working). Below the bound the loss is exactly the paper's."""


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
    check_positive("mio", "beta", beta)
    pair = prepare_pair(
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
    check_positive("infopo", "beta", beta)
    pair = prepare_pair(
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
        require_reference("infopo", None, None)
    ref_rejected = normalize(
        check_batch_tensor(
            "infopo", "ref_rejected_logps", ref_rejected_logps, pair.policy_chosen.shape
        ),
        pair.tokens.rejected if length_normalize else None,
        pair.policy_chosen,
    )
    rejected_exponent = beta * (pair.policy_rejected - ref_rejected)
    return -beta * pair.policy_chosen + _exp_with_linear_tail(
        rejected_exponent, INFOPO_EXP_LINEAR_FROM
    )


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
    check_positive("infonce", "beta", beta)
    pair = prepare_pair(
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
    chosen_cross = check_batch_tensor(
        "infonce", "chosen_logps_on_rejected_input", chosen_logps_on_rejected_input, shape
    )
    rejected_own = check_batch_tensor(
        "infonce", "rejected_logps_on_rejected_input", rejected_logps_on_rejected_input, shape
    )
    chosen_cross = normalize(
        chosen_cross, pair.tokens.chosen if length_normalize else None, pair.policy_chosen
    )
    rejected_own = normalize(
        rejected_own, pair.tokens.rejected if length_normalize else None, pair.policy_chosen
    )
    chosen_term = F.softplus(beta * (chosen_cross - pair.policy_chosen))
    rejected_term = F.softplus(beta * (pair.policy_rejected - rejected_own))
    return 0.5 * (chosen_term + rejected_term) - math.log(2.0)
