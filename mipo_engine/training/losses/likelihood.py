"""Supervised fine-tuning on the chosen response, the baseline of seed 004 sec. 5.1."""

from __future__ import annotations

from torch import Tensor

from mipo_engine.training.losses.inputs import (
    check_batch_tensor,
    check_tokens,
    compute_dtype,
    normalize,
)


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
    chosen = check_batch_tensor("sft", "policy_chosen_logps", policy_chosen_logps, shape)
    tokens = None
    if length_normalize:
        if chosen_tokens is None:
            raise ValueError(
                "sft: length_normalize=True averages over tokens; pass chosen_tokens "
                "(response token counts) or set length_normalize=False"
            )
        counts = check_tokens("sft", "chosen_tokens", chosen_tokens, shape)
        tokens = counts.to(device=chosen.device, dtype=compute_dtype(chosen))
    return -normalize(chosen, tokens, chosen)
