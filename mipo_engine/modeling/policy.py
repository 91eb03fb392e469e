"""The policy forward: summed response log-probs of a causal LM on a stacked batch.

The forward goes through the (possibly DDP- or PEFT-wrapped) model's own ``forward``, so
data-parallel gradient synchronisation works as usual, while the vocabulary projection runs
chunk by chunk on the response positions only (``logps.linear_token_logps``): full-vocabulary
logits never exist for whole sequences. Batches come padded (one sequence per row) or packed
(several sequences per row, kept apart by their position ids).

Also here: the reference view of the same model (LoRA adapters disabled, no gradients) and
TDPO's per-sequence KL to it, computed from hidden states a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mipo_engine.modeling.logps import _causal_lm_parts, summed_token_logps

LOGPS_CHUNK_TOKENS = 512
"""Response positions projected onto the vocabulary at once (see ``logps.head_tiling``). On
CPU they meet the vocabulary in cache-sized blocks, and taller tiles read the [V, H] weight
fewer times; on an accelerator ``TILE_BYTES`` caps a tile at 256 rows for Gemma's 262k-token
vocabulary (268 MB of fp32 logits)."""


@dataclass
class SequenceLogps:
    """Per-row results of one stacked forward pass."""

    logps: Tensor  # [R] summed log-probs of each row's response tokens (fp32)
    counts: Tensor  # [R] response token counts
    states: Tensor | None = None  # [N, H] final hidden states predicting response tokens
    rows: Tensor | None = None  # [N] row of each state


def unwrap_model(model: Any) -> Any:
    """The module under DDP-style wrappers (``.module``); PEFT is handled by the caller."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def final_hidden_states(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    position_ids: Tensor | None = None,
) -> Tensor:
    """Final (normed) hidden states [R, T, H] from the model's own forward.

    The forward goes through ``model`` itself, wrappers included, so DDP prepares its gradient
    synchronisation as usual; ``logits_to_keep`` with no positions skips the vocabulary
    projection, and a hook on the decoder captures its output. Packed rows come with
    ``position_ids`` that restart per sequence and no attention mask.
    """
    decoder, _, _ = _causal_lm_parts(unwrap_model(model))
    captured: dict[str, Tensor] = {}

    def keep_output(module: Any, args: Any, output: Any) -> None:
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    extra = {} if position_ids is None else {"position_ids": position_ids}
    handle = decoder.register_forward_hook(keep_output)
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_to_keep=torch.zeros(0, dtype=torch.long, device=input_ids.device),
            use_cache=False,
            **extra,
        )
    finally:
        handle.remove()
    return captured["hidden"]


# Attention implementations that turn per-sequence position ids into a block-diagonal mask
# (transformers' masking utilities) or into variable-length kernels (flash attention).
PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def supports_packing(model: Any) -> bool:
    """Whether ``model`` keeps packed sequences apart given only their position ids."""
    config = getattr(_causal_lm_parts(unwrap_model(model))[0], "config", None)
    return getattr(config, "_attn_implementation", None) in PACKING_ATTENTION


def batch_sequence_logps(
    model: Any,
    batch: dict[str, Tensor],
    *,
    chunk_size: int = LOGPS_CHUNK_TOKENS,
    keep_states: bool = False,
) -> SequenceLogps:
    """``policy_sequence_logps`` of a ``PairCollator`` batch, padded or packed."""
    return policy_sequence_logps(
        model,
        batch["input_ids"],
        batch.get("attention_mask"),
        batch["response_mask"],
        position_ids=batch.get("position_ids"),
        sequence_ids=batch.get("sequence_ids"),
        chunk_size=chunk_size,
        keep_states=keep_states,
    )


def policy_sequence_logps(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    response_mask: Tensor,
    *,
    position_ids: Tensor | None = None,
    sequence_ids: Tensor | None = None,
    chunk_size: int = LOGPS_CHUNK_TOKENS,
    keep_states: bool = False,
) -> SequenceLogps:
    """Summed log-probs of the masked response tokens of each sequence (as
    ``logps.sequence_logps``, whose numbers it reproduces, but through the wrapped model's
    forward).

    Padded batches have one sequence per row. Packed ones (``data.pack_sequences``) give
    ``position_ids`` and ``sequence_ids`` (the sequence of each token); the results are then
    per sequence, in input order.
    """
    _, head, softcap = _causal_lm_parts(unwrap_model(model))
    hidden = final_hidden_states(model, input_ids, attention_mask, position_ids)  # (P, T, H)
    predict_mask = response_mask[:, 1:]  # (P, T-1): position t-1 predicts token t
    rows, cols = predict_mask.nonzero(as_tuple=True)
    # Under mixed precision the decoder runs in bf16 while fp32 master weights stay fp32:
    # project in the head's dtype (the logits themselves are fp32 either way).
    states = hidden[:, :-1][rows, cols].to(head.weight.dtype)  # (N, H)
    targets = input_ids[:, 1:][rows, cols]  # (N,)
    if sequence_ids is None:
        num_sequences = input_ids.shape[0]
        counts = predict_mask.sum(dim=1)
    else:
        num_sequences = int(sequence_ids.max()) + 1
        rows = sequence_ids[:, 1:][rows, cols]
        counts = torch.bincount(rows, minlength=num_sequences)
    sums = summed_token_logps(
        states, targets, rows, num_sequences, head, softcap, chunk_size=chunk_size
    )
    return SequenceLogps(
        logps=sums,
        counts=counts,
        states=states if keep_states else None,
        rows=rows if keep_states else None,
    )


def _capped_logits(states: Tensor, weight: Tensor, softcap: float | None) -> Tensor:
    logits = (states @ weight.T).float()
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def _kl_chunk(
    policy_states: Tensor, ref_states: Tensor, weight: Tensor, softcap: float | None
) -> Tensor:
    """KL(pi_ref || pi_theta) of each position's next-token distribution, [n]."""
    ref_logp = torch.log_softmax(_capped_logits(ref_states, weight.detach(), softcap), dim=-1)
    policy_logp = torch.log_softmax(_capped_logits(policy_states, weight, softcap), dim=-1)
    return (ref_logp.exp() * (ref_logp - policy_logp)).sum(dim=-1)


def response_kl(
    policy_states: Tensor,
    ref_states: Tensor,
    weight: Tensor,
    rows: Tensor,
    num_rows: int,
    *,
    softcap: float | None = None,
    chunk_size: int = 256,
) -> Tensor:
    """TDPO's SeqKL(y) = sum_t KL(pi_ref(.|x, y_<t) || pi_theta(.|x, y_<t)) per row ([R]).

    The same quantity as ``priors.sequence_kl`` (seed 003 sec. 4, TDPO prior), computed from
    hidden states a chunk of positions at a time; each chunk's logits are recomputed in the
    backward pass (activation checkpointing) instead of being kept.
    """
    parts = []
    for start in range(0, policy_states.shape[0], chunk_size):
        stop = start + chunk_size
        parts.append(
            checkpoint(
                _kl_chunk,
                policy_states[start:stop],
                ref_states[start:stop],
                weight,
                softcap,
                use_reentrant=False,
            )
        )
    per_position = torch.cat(parts) if parts else policy_states.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(num_rows, dtype=torch.float32, device=policy_states.device)
    return sums.index_add(0, rows, per_position)


def is_peft_model(model: Any) -> bool:
    return hasattr(unwrap_model(model), "disable_adapter")


@contextmanager
def reference_mode(model: Any) -> Iterator[None]:
    """Run ``model`` as the reference policy: LoRA adapters disabled, no gradients.

    For a full fine-tune, call this before the first update: the model IS the reference then.
    """
    inner = unwrap_model(model)
    adapters_off = inner.disable_adapter() if is_peft_model(inner) else nullcontext()
    with torch.no_grad(), adapters_off:
        yield


def batch_response_kl(model: Any, batch: dict[str, Tensor], result: SequenceLogps) -> Tensor:
    """Per-row SeqKL for the TDPO prior: reference = the base model with adapters disabled.

    ``result`` is the policy's ``batch_sequence_logps(..., keep_states=True)`` of ``batch``.
    """
    with reference_mode(model):
        ref_hidden = final_hidden_states(
            unwrap_model(model),
            batch["input_ids"],
            batch.get("attention_mask"),
            batch.get("position_ids"),
        )
    rows, cols = batch["response_mask"][:, 1:].nonzero(as_tuple=True)
    _, head, softcap = _causal_lm_parts(unwrap_model(model))
    ref_states = ref_hidden[:, :-1][rows, cols].to(head.weight.dtype)
    assert result.states is not None and result.rows is not None
    return response_kl(
        result.states,
        ref_states,
        head.weight,
        result.rows,
        result.logps.shape[0],
        softcap=softcap,
    )
