"""Bradley-Terry preference losses: -log sigmoid(beta (h(y_c) - h(y_r))) for a log-ratio h.

- ``dpo``: h = l_theta - l_ref (seed 004 eq. 5).
- ``simpo``: h = per-token mean l_theta, with a target margin gamma (seed 003 sec. 4).
- ``mi_dpo``: h = l_theta - log zeta for a general prior zeta (seed 003 sec. 3.2, App. B);
  its named priors recover DPO, R-DPO, SimPO, H-DPO, TDPO and DICE (``priors.PRIORS``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mipo_engine.training.losses.inputs import (
    check_batch_tensor,
    check_finite,
    check_positive,
    normalize,
    prepare_pair,
)
from mipo_engine.training.priors import PRIORS, PriorInputs, get_prior


def bradley_terry_loss(beta: float, chosen_log_ratio: Tensor, rejected_log_ratio: Tensor) -> Tensor:
    """-log sigmoid(beta (h_c - h_r)), the shared core of DPO and MI-DPO."""
    return -F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio))


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
    check_positive("dpo", "beta", beta)
    pair = prepare_pair(
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
    return bradley_terry_loss(
        beta, pair.policy_chosen - pair.ref_chosen, pair.policy_rejected - pair.ref_rejected
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
    check_positive("simpo", "beta", beta)
    check_finite("simpo", "gamma", gamma)
    if gamma < 0:
        raise ValueError(f"simpo: gamma is a target margin and must be >= 0; got {gamma}")
    pair = prepare_pair(
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
    check_positive("mi_dpo", "beta", beta)
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
            check_finite("mi_dpo", name, given[name])  # type: ignore[arg-type]
    if gamma is not None and gamma < 0:
        raise ValueError(f"mi_dpo: gamma is SimPO's target margin and must be >= 0; got {gamma}")
    if eta is not None and eta <= 0:
        raise ValueError(f"mi_dpo: eta scales the policy log-prob and must be > 0; got {eta}")

    prior_uses_lengths = prior == "length" or (prior == "simpo" and not length_normalize)
    pair = prepare_pair(
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
        return normalize(
            check_batch_tensor("mi_dpo", name, value, shape), tokens, pair.policy_chosen
        )

    def optional_term(name: str, value: Tensor | None) -> Tensor | None:
        if value is None:
            return None
        return check_batch_tensor("mi_dpo", name, value, shape).to(pair.policy_chosen)

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
    return bradley_terry_loss(beta, chosen_log_ratio, rejected_log_ratio)
