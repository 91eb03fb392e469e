"""Token log-probabilities from hidden states, without full-vocabulary logits for whole
sequences.

Gemma's vocabulary has 262k entries: the logits of one 512-token sequence take 0.5 GB in
fp32. Only the response tokens' log-probs are needed, so we (1) keep only the hidden states
at positions that predict a response token, and (2) project them onto the vocabulary a chunk
at a time. The backward pass recomputes each chunk's logits instead of keeping them, so
memory no longer grows with the number of response tokens times the vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _chunk_logits(hidden: Tensor, weight: Tensor, softcap: float | None) -> tuple[Tensor, Tensor]:
    """Logits of one chunk in fp32, and the pre-cap values (needed by the cap's gradient)."""
    raw = (hidden @ weight.T).float()
    if softcap is None:
        return raw, raw
    return softcap * torch.tanh(raw / softcap), raw


class _LinearTokenLogProb(torch.autograd.Function):
    """log softmax(h W^T)[target] per row, computed and differentiated chunk by chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        chunk_size: int,
        softcap: float | None,
    ) -> Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            stop = start + chunk_size
            logits, _ = _chunk_logits(hidden[start:stop], weight, softcap)
            picked = logits.gather(1, targets[start:stop, None]).squeeze(1)
            out[start:stop] = picked - torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk_size = chunk_size
        ctx.softcap = softcap
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, targets = ctx.saved_tensors
        softcap = ctx.softcap
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            h = hidden[start:stop]
            logits, raw = _chunk_logits(h, weight, softcap)
            g = grad_out[start:stop].float()
            # d/dz [z_t - logsumexp(z)] = onehot(t) - softmax(z)
            grad_logits = -torch.softmax(logits, dim=-1) * g[:, None]
            grad_logits.scatter_add_(1, targets[start:stop, None], g[:, None])
            if softcap is not None:
                grad_logits = grad_logits * (1 - torch.tanh(raw / softcap) ** 2)
            grad_logits = grad_logits.to(h.dtype)
            if grad_hidden is not None:
                grad_hidden[start:stop] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_token_logps(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 1024,
    softcap: float | None = None,
) -> Tensor:
    """``log_softmax(hidden @ weight.T)[i, targets[i]]`` for rows of ``hidden`` ([N, H])."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    return _LinearTokenLogProb.apply(hidden, weight, targets, chunk_size, softcap)


def _causal_lm_parts(model: Any) -> tuple[Any, Any, float | None]:
    """(decoder that returns final hidden states, output embedding, final logit soft-cap)."""
    inner = model
    # PEFT wraps the causal LM; its LoRA layers live inside the wrapped modules.
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings()
    config = getattr(inner, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text_config, "final_logit_softcapping", None)
    if decoder is None or head is None:
        raise ValueError(f"cannot find the decoder and output head of {type(inner).__name__}")
    return decoder, head, softcap


def sequence_logps(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    *,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the masked response tokens of each row, and their counts.

    ``response_mask[b, t]`` is True when token ``t`` of row ``b`` belongs to the response;
    its log-prob is read from the hidden state at ``t - 1``.
    Returns (logps [B] fp32, token counts [B]).
    """
    decoder, head, softcap = _causal_lm_parts(model)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    predict_mask = response_mask[:, 1:]  # [B, T-1]: position t-1 predicts token t
    rows, cols = predict_mask.nonzero(as_tuple=True)
    states = hidden[:, :-1][rows, cols]  # [N, H] only where a response token is predicted
    targets = input_ids[:, 1:][rows, cols]
    token_logps = linear_token_logps(
        states, head.weight, targets, chunk_size=chunk_size, softcap=softcap
    )
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    sums = sums.index_add(0, rows, token_logps)
    counts = predict_mask.sum(dim=1)
    return sums, counts


def full_logits_sequence_logps(
    model: Any, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Plain reference implementation: full logits, log_softmax, gather (for tests)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    picked = logprobs.gather(2, input_ids[:, 1:, None]).squeeze(2)
    mask = response_mask[:, 1:]
    return (picked * mask).sum(dim=1), mask.sum(dim=1)
