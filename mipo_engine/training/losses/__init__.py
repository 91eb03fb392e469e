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
ignore them, so callers can treat all losses alike. The names, their paper settings and
citations live in the torch-free registry ``training.loss_registry.LOSSES``.
"""

from mipo_engine.training.losses.bradley_terry import dpo, mi_dpo, simpo
from mipo_engine.training.losses.likelihood import sft
from mipo_engine.training.losses.metrics import preference_metrics
from mipo_engine.training.losses.mutual_information import (
    INFOPO_EXP_LINEAR_FROM,
    infonce,
    infopo,
    mio,
)
from mipo_engine.training.losses.projected_gradient import dpo_pg_direction, dpo_pg_gradients

__all__ = [
    "INFOPO_EXP_LINEAR_FROM",
    "dpo",
    "dpo_pg_direction",
    "dpo_pg_gradients",
    "infonce",
    "infopo",
    "mi_dpo",
    "mio",
    "preference_metrics",
    "sft",
    "simpo",
]
