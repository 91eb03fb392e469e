"""Token log-probabilities from hidden states, without full-vocabulary logits for whole
sequences.

Gemma's vocabulary has 262k entries: the logits of one 512-token sequence take 0.5 GB in
fp32. Only the response tokens' log-probs are needed, so we (1) keep only the hidden states
at positions that predict a response token, and (2) project them onto the vocabulary a tile
of rows at a time and, on CPU, a block of vocabulary entries at a time, with an online
logsumexp across blocks. The forward pass keeps each row's log-normalizer; the backward pass
recomputes each block's logits and turns them into their gradient in place, accumulating
both gradients with in-place ``addmm``. So the step's extra memory is one block (or, on an
accelerator, one or two tiles) plus the weight gradient itself, whatever the number of
response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

# Bytes of fp32 logits per tile where the vocabulary is not split (accelerators): 256 rows of
# Gemma's 262k vocabulary. Each tile is one more pass over the [V, H] weight, so bigger tiles
# are faster and cost memory.
TILE_BYTES = 256 * 2**20

# Bytes of fp32 logits per block on CPU: a block small enough to stay in cache between the
# product that writes it and the softmax that reads it, instead of a round trip through
# memory per tile. For 512 Gemma rows on 2 CPU cores (benchmarks/head.py), forward +
# backward went from 4.17 s (256-row tiles over the whole vocabulary) to 3.48 s in
# 512 x 2048 blocks, the forward alone from 1.22 s to 0.87 s. In one sweep, blocks of
# 512 x 1024 and 512 x 4096 were about 9% slower than 512 x 2048 and 256 x 2048 24% slower:
# each weight block is read once per row tile, so taller tiles read the weight fewer times.
CPU_BLOCK_BYTES = 4 * 2**20


def tile_rows(vocab_size: int, chunk_size: int) -> int:
    """Rows per tile over the whole vocabulary: at most ``chunk_size``, and no more than fit
    in ``TILE_BYTES``."""
    return max(1, min(chunk_size, TILE_BYTES // (4 * vocab_size)))


def head_tiling(vocab_size: int, chunk_size: int, device: torch.device) -> tuple[int, int]:
    """(rows per tile, vocabulary entries per block) for the head on ``device``.

    On CPU a tile is ``chunk_size`` rows and the vocabulary is split into cache-sized blocks.
    Elsewhere a block is the whole vocabulary (one kernel per tile, not hundreds of small
    ones) and the tile is bounded by ``TILE_BYTES``.
    """
    if device.type == "cpu":
        rows = max(1, chunk_size)
        return rows, max(1, min(vocab_size, CPU_BLOCK_BYTES // (4 * rows)))
    return tile_rows(vocab_size, chunk_size), vocab_size


def _matmul_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype autocast would give ``hidden @ weight.T`` (``out=`` products bypass it)."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _block_logits(
    hidden: Tensor, weight_block: Tensor, softcap: float | None, buffer: Tensor
) -> Tensor:
    """fp32 logits of one tile's rows against one vocabulary block, soft-capped in place when
    the model caps them. The product goes into ``buffer``, which every block of a call
    reuses, instead of a fresh tensor paged in per block."""
    block = buffer[: hidden.shape[0], : weight_block.shape[0]]
    torch.mm(hidden, weight_block.T, out=block)
    logits = block.float()  # the buffer itself when it is fp32
    if softcap is not None:
        logits.div_(softcap).tanh_().mul_(softcap)
    return logits


def _rows_by_block(targets: Tensor, block: int, vocab_size: int) -> list[Tensor]:
    """For each vocabulary block, the indices of the rows whose target falls in it."""
    num_blocks = -(-vocab_size // block)
    if num_blocks == 1:
        return [torch.arange(targets.shape[0], device=targets.device)]
    owner = torch.div(targets, block, rounding_mode="floor")
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=num_blocks).tolist()
    return list(torch.split(order, counts))


def _write_product(out: Tensor, left: Tensor, right: Tensor, *, add: bool) -> None:
    """``out`` (fp32) = or += ``left @ right``; in fp32 straight into ``out``, so no
    product-sized temporary is allocated."""
    if left.dtype == torch.float32:
        if add:
            out.addmm_(left, right)
        else:
            torch.mm(left, right, out=out)
    elif add:
        out += (left @ right).float()
    else:
        out.copy_(left @ right)


class _LinearTokenLogProb(torch.autograd.Function):
    """log softmax(h W^T)[target] per row, computed and differentiated a block at a time."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        rows: int,
        block: int,
        softcap: float | None,
    ) -> Tensor:
        vocab = weight.shape[0]
        dtype = _matmul_dtype(hidden)
        states, matrix = hidden.to(dtype), weight.to(dtype)
        buffer = torch.empty((min(rows, hidden.shape[0]), block), dtype=dtype, device=hidden.device)
        picked = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        log_norm = torch.empty_like(picked)
        for start in range(0, hidden.shape[0], rows):
            stop = min(start + rows, hidden.shape[0])
            h, t = states[start:stop], targets[start:stop]
            owned = _rows_by_block(t, block, vocab)
            # Online logsumexp: running max and the sum of exp(logit - max) so far.
            peak = torch.full((stop - start,), -torch.inf, device=hidden.device)
            total = torch.zeros(stop - start, device=hidden.device)
            tile_picked = picked[start:stop]
            for index, first in enumerate(range(0, vocab, block)):
                logits = _block_logits(h, matrix[first : first + block], softcap, buffer)
                mine = owned[index]
                tile_picked[mine] = logits[mine, t[mine] - first]
                new_peak = torch.maximum(peak, logits.amax(dim=-1))
                total.mul_((peak - new_peak).exp_())
                total.add_(logits.sub_(new_peak[:, None]).exp_().sum(dim=-1))
                peak = new_peak
            log_norm[start:stop] = total.log_().add_(peak)
        ctx.save_for_backward(hidden, weight, targets, log_norm)
        ctx.rows, ctx.block, ctx.softcap = rows, block, softcap
        return picked - log_norm

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, targets, log_norm = ctx.saved_tensors
        rows, block, softcap = ctx.rows, ctx.block, ctx.softcap
        vocab = weight.shape[0]
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # fp32 accumulators: a bf16 sum over hundreds of blocks would lose the gradient. Each
        # is written by its first product and added to by the rest (no memset of zeros).
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if need_hidden else None
        grad_weight = torch.empty_like(weight, dtype=torch.float32) if need_weight else None
        grad_out = grad_out.float()
        matrix = weight.to(hidden.dtype)
        buffer = torch.empty(
            (min(rows, hidden.shape[0]), block), dtype=hidden.dtype, device=hidden.device
        )
        for start in range(0, hidden.shape[0], rows):
            stop = min(start + rows, hidden.shape[0])
            h, t = hidden[start:stop], targets[start:stop]
            owned = _rows_by_block(t, block, vocab)
            g = grad_out[start:stop]
            norm = log_norm[start:stop, None]
            for index, first in enumerate(range(0, vocab, block)):
                weight_block = matrix[first : first + block]
                grad = _block_logits(h, weight_block, softcap, buffer)
                # tanh cap: dz/draw = 1 - tanh^2 = 1 - (z / cap)^2, read before z is overwritten
                cap_slope = None if softcap is None else 1 - (grad / softcap).square()
                # d/dz [z_t - logsumexp(z)] = onehot(t) - softmax(z), softmax = exp(z - log_norm)
                grad.sub_(norm).exp_().mul_(-g[:, None])
                mine = owned[index]
                grad.index_put_((mine, t[mine] - first), g[mine], accumulate=True)
                if cap_slope is not None:
                    grad.mul_(cap_slope)
                grad = grad.to(hidden.dtype)  # itself in fp32
                if grad_hidden is not None:
                    _write_product(grad_hidden[start:stop], grad, weight_block, add=index > 0)
                if grad_weight is not None:
                    rows_of_block = grad_weight[first : first + block]
                    _write_product(rows_of_block, grad.T, h, add=start > 0)
        if grad_hidden is not None:
            grad_hidden = grad_hidden.to(hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def linear_token_logps(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 512,
    softcap: float | None = None,
    vocab_block: int | None = None,
) -> Tensor:
    """``log_softmax(hidden @ weight.T)[i, targets[i]]`` for rows of ``hidden`` ([N, H]).

    ``chunk_size`` bounds the rows per tile and ``vocab_block`` sets the vocabulary entries
    per block; by default ``head_tiling`` picks both for the device.
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    rows, block = head_tiling(weight.shape[0], chunk_size, hidden.device)
    if vocab_block is not None:
        block = max(1, min(vocab_block, weight.shape[0]))
    return _LinearTokenLogProb.apply(hidden, weight, targets, rows, block, softcap)


def _text_config(model: Any) -> Any:
    """The language model's config (a multimodal config nests it)."""
    config = getattr(model, "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def attention_window(model: Any) -> int | None:
    """Tokens a sliding-window layer sees, or None when every layer attends to all."""
    window = getattr(_text_config(model), "sliding_window", None)
    return int(window) if window else None


def summed_token_logps(
    states: Tensor,
    targets: Tensor,
    rows: Tensor,
    num_rows: int,
    head: Any,
    softcap: float | None,
    *,
    chunk_size: int,
) -> Tensor:
    """Per-row sums ([num_rows] fp32) of ``log_softmax(states @ head.weight.T)[targets]``,
    token ``i`` belonging to row ``rows[i]``."""
    token_logps = linear_token_logps(
        states, head.weight, targets, chunk_size=chunk_size, softcap=softcap
    )
    sums = torch.zeros(num_rows, dtype=torch.float32, device=states.device)
    return sums.index_add(0, rows, token_logps)


def _causal_lm_parts(model: Any) -> tuple[Any, Any, float | None]:
    """(decoder that returns final hidden states, output embedding, final logit soft-cap)."""
    inner = model
    # PEFT wraps the causal LM; its LoRA layers live inside the wrapped modules.
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings()
    softcap = getattr(_text_config(inner), "final_logit_softcapping", None)
    if decoder is None or head is None:
        raise ValueError(f"cannot find the decoder and output head of {type(inner).__name__}")
    return decoder, head, softcap


def sequence_logps(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    *,
    chunk_size: int = 512,
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
    sums = summed_token_logps(
        states, targets, rows, input_ids.shape[0], head, softcap, chunk_size=chunk_size
    )
    return sums, predict_mask.sum(dim=1)


def shared_prompt_logps(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    owners: Sequence[int],
    pad_id: int,
    *,
    chunk_size: int = 512,
) -> Tensor:
    """Summed log-probs of responses that share prompts: each prompt runs through the decoder
    once, and every response that follows it reuses its keys and values.

    A preference pair scores two responses under one prompt, so this skips a prompt's worth
    of decoder work per pair (a quarter of it for a 128-token prompt and two 128-token
    responses). ``prompts`` are G non-empty token lists, ``responses`` R token lists, and
    ``owners[r]`` the index of the prompt response ``r`` follows. Returns logps [R] fp32.
    """
    decoder, head, softcap = _causal_lm_parts(model)
    device = head.weight.device
    # Prompts left-padded, so each one's last token (which predicts its responses' first
    # token) sits in the last column; positions count real tokens only.
    width = max(len(p) for p in prompts)
    prompt_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        prompt_ids[row, width - len(ids) :] = torch.tensor(ids)
        prompt_mask[row, width - len(ids) :] = 1
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    out = decoder(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
        use_cache=True,
    )
    owner = torch.tensor(list(owners), dtype=torch.long, device=device)
    first_states = out.last_hidden_state[:, -1][owner]  # [R, H]

    # Each response's tokens but its last are fed after its prompt's cached keys and values.
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.long)
    span = max(int(lengths.max()), 1)
    targets = torch.full((len(responses), span), pad_id, dtype=torch.long)
    for row, ids in enumerate(responses):
        targets[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    targets, lengths = targets.to(device), lengths.to(device)
    states = first_states[:, None]
    if span > 1:
        cache = out.past_key_values
        cache.batch_select_indices(owner)
        fed = torch.arange(span - 1, device=device)[None] < (lengths[:, None] - 1)
        hidden = decoder(
            input_ids=targets[:, :-1],
            attention_mask=torch.cat([prompt_mask[owner], fed.long()], dim=1),
            position_ids=prompt_mask.sum(1)[owner][:, None] + torch.arange(span - 1, device=device),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        states = torch.cat([states, hidden], dim=1)  # [R, span, H]: state j predicts token j
    valid = torch.arange(span, device=device)[None] < lengths[:, None]
    rows, cols = valid.nonzero(as_tuple=True)
    return summed_token_logps(
        states[rows, cols].to(head.weight.dtype),
        targets[rows, cols],
        rows,
        len(responses),
        head,
        softcap,
        chunk_size=chunk_size,
    )


def full_logits_sequence_logps(
    model: Any, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Plain reference implementation: full logits, log_softmax, gather (for tests)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    picked = logprobs.gather(2, input_ids[:, 1:, None]).squeeze(2)
    mask = response_mask[:, 1:]
    return (picked * mask).sum(dim=1), mask.sum(dim=1)
