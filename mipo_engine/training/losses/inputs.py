"""Input checks and the length-normalisation rule shared by every preference loss.

Each loss validates its tensors here (shape [batch], floating dtype, positive token counts)
and turns summed log-probs into the values l(y) its formula uses: summed as given, or divided
by the response's token count when ``length_normalize`` is on (DESIGN.md sec. 4). Values are
computed in float32 or wider, whatever the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mipo_engine.training.loss_registry import reference_free_losses


def compute_dtype(reference: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype when it is already wider."""
    return torch.promote_types(reference.dtype, torch.float32)


def check_batch_tensor(loss: str, name: str, value: object, batch_shape: torch.Size) -> Tensor:
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


def check_tokens(loss: str, name: str, value: object, batch_shape: torch.Size) -> Tensor:
    """Raise a ValueError unless ``value`` holds one positive token count per example."""
    if not isinstance(value, Tensor) or value.dim() != 1 or value.shape != batch_shape:
        raise ValueError(
            f"{loss}: {name} must be a tensor of shape [batch] = {list(batch_shape)} holding "
            f"each response's token count; got {value!r}"
        )
    if bool((value < 1).any()):
        raise ValueError(f"{loss}: every entry of {name} must be >= 1 (a response has tokens)")
    return value


def check_positive(loss: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{loss}: {name} must be a finite number > 0; got {value!r}")


def check_finite(loss: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{loss}: {name} must be a finite number; got {value!r}")


def require_reference(loss: str, ref_chosen: Tensor | None, ref_rejected: Tensor | None) -> None:
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(
            f"{loss} needs ref_chosen_logps and ref_rejected_logps (summed reference log-probs, "
            "from the `scores` artifact or a reference forward pass); or use a "
            "reference-free loss: " + ", ".join(reference_free_losses())
        )


@dataclass(frozen=True)
class TokenCounts:
    """Token counts of both responses, in the compute dtype, or None when not given."""

    chosen: Tensor | None
    rejected: Tensor | None


def token_counts(
    loss: str,
    batch_shape: torch.Size,
    like: Tensor,
    chosen_tokens: Tensor | None,
    rejected_tokens: Tensor | None,
    *,
    required: bool,
    why: str,
) -> TokenCounts:
    """Validate the token counts; they must be present when ``required`` (``why`` says why)."""
    if chosen_tokens is None and rejected_tokens is None and not required:
        return TokenCounts(None, None)
    if chosen_tokens is None or rejected_tokens is None:
        raise ValueError(
            f"{loss}: pass both chosen_tokens and rejected_tokens ({why}); "
            "they are the response token counts, as in the `scores` artifact"
        )
    chosen = check_tokens(loss, "chosen_tokens", chosen_tokens, batch_shape)
    rejected = check_tokens(loss, "rejected_tokens", rejected_tokens, batch_shape)
    dtype = compute_dtype(like)
    return TokenCounts(
        chosen.to(device=like.device, dtype=dtype), rejected.to(device=like.device, dtype=dtype)
    )


def normalize(values: Tensor, tokens: Tensor | None, like: Tensor) -> Tensor:
    """l(y) on ``like``'s device in the compute dtype: summed as given, or per-token mean."""
    values = values.to(device=like.device, dtype=compute_dtype(like))
    return values if tokens is None else values / tokens


@dataclass(frozen=True)
class PairValues:
    """Validated per-example sequence values l(y) of one preference pair batch."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None
    ref_rejected: Tensor | None
    tokens: TokenCounts


def prepare_pair(
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
) -> PairValues:
    """Check the four log-prob inputs and apply the length-normalisation rule."""
    if not isinstance(policy_chosen_logps, Tensor):
        raise ValueError(f"{loss}: policy_chosen_logps must be a torch.Tensor of shape [batch]")
    shape = policy_chosen_logps.shape
    policy_chosen = check_batch_tensor(loss, "policy_chosen_logps", policy_chosen_logps, shape)
    policy_rejected = check_batch_tensor(
        loss, "policy_rejected_logps", policy_rejected_logps, shape
    )
    tokens = token_counts(
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
        require_reference(loss, ref_chosen_logps, ref_rejected_logps)
        ref_chosen = normalize(
            check_batch_tensor(loss, "ref_chosen_logps", ref_chosen_logps, shape),
            divide_chosen,
            policy_chosen,
        )
        ref_rejected = normalize(
            check_batch_tensor(loss, "ref_rejected_logps", ref_rejected_logps, shape),
            divide_rejected,
            policy_chosen,
        )
    return PairValues(
        policy_chosen=normalize(policy_chosen, divide_chosen, policy_chosen),
        policy_rejected=normalize(policy_rejected, divide_rejected, policy_chosen),
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
        tokens=tokens,
    )
