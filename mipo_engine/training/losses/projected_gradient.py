"""DPO-PG, a gradient rule rather than a loss (seed 002 App. H).

The update direction removes from the chosen-response NLL gradient its component along the
rejected-response NLL gradient, so the chosen likelihood is never pushed down with the
rejected one (the likelihood displacement of seeds 000, 001 and 002).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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


def _max_abs(parts: Sequence[Tensor | None]) -> Tensor:
    """max |x| over every entry of ``parts`` (float64; 0 when there is none)."""
    peaks = [
        p.detach().abs().max().to(torch.float64).cpu() for p in parts if p is not None and p.numel()
    ]
    return torch.stack(peaks).max() if peaks else torch.zeros((), dtype=torch.float64)


def _scaled(part: Tensor, scale: Tensor) -> Tensor:
    """``part / scale`` in float32 at least (``part`` unchanged when ``scale`` is 0)."""
    dtype = torch.promote_types(part.dtype, torch.float32)
    if float(scale) == 0.0:
        return part.to(dtype)
    return part.to(dtype) / scale.to(device=part.device, dtype=dtype)


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
    # The projection is invariant to the scale of g_l: with u = g_l / s, s = max |g_l|,
    # (g_w.g_l / |g_l|^2) g_l = (g_w.u / |u|^2) u. Working with u keeps |u|^2 >= 1, so a tiny
    # g_l cannot underflow |g_l|^2 to 0 and leave its component in the direction.
    scale = _max_abs(rejected_parts)
    unit_parts = [None if g_l is None else _scaled(g_l, scale) for g_l in rejected_parts]
    overlap = _dot(chosen_parts, unit_parts)
    unit_norm_sq = _dot(unit_parts, unit_parts)
    # Projection coefficient max(0, g_w.u) / |u|^2; zero when g_l vanishes.
    safe_norm_sq = torch.where(unit_norm_sq > 0, unit_norm_sq, torch.ones_like(overlap))
    coefficient = torch.where(
        unit_norm_sq > 0, overlap.clamp(min=0) / safe_norm_sq, torch.zeros_like(overlap)
    )
    directions: list[Tensor | None] = []
    for g_w, g_l, unit in zip(chosen_parts, rejected_parts, unit_parts, strict=True):
        if g_l is None or unit is None:
            directions.append(g_w)
            continue
        # Subtract in float32 at least, so bf16 gradients stay orthogonal to g_l.
        dtype = torch.promote_types(g_l.dtype, torch.float32)
        step = coefficient.to(device=g_l.device, dtype=dtype) * unit.to(dtype)
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
