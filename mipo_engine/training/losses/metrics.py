"""Per-example preference metrics under TRL's names, logged by the trainer.

Rewards are the implicit ones beta D; the log-prob shifts from the reference show likelihood
displacement (seeds 000, 001, 002).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mipo_engine.training.losses.inputs import check_positive, prepare_pair


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
    check_positive("preference_metrics", "beta", beta)
    has_reference = ref_chosen_logps is not None and ref_rejected_logps is not None
    with torch.no_grad():
        pair = prepare_pair(
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
