"""The tiled token log-prob path against plain full-vocabulary logits, values and gradients,
and responses scored after a shared prompt against each whole sequence run alone.

The references are written out independently here: ``log_softmax`` over the whole ``[N, V]``
logits (soft-capped as Gemma 2 does, ``cap * tanh(z / cap)``), then a gather, differentiated
by autograd; and each prompt + response run through the model as one sequence.
"""

from __future__ import annotations

import pytest
import torch

from mipo_engine.backends.hf import group_by_prompt, shared_prompt_batches
from mipo_engine.modeling.logps import (
    CPU_BLOCK_BYTES,
    TILE_BYTES,
    full_logits_sequence_logps,
    head_tiling,
    linear_token_logps,
    shared_prompt_logps,
    tile_rows,
)
from mipo_engine.modeling.tokenization import EncodedPair


def _full_logits_token_logps(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = hidden @ weight.T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("vocab_block", [None, 1, 5, 36])
def test_values_and_gradients_equal_full_logits(
    softcap: float | None, chunk_size: int, vocab_block: int | None
) -> None:
    """Tiles of 1, 3 and all rows; blocks of the whole vocabulary, of one entry, of five
    (the last block holds two) and of all but one (the last holds one)."""
    generator = torch.Generator().manual_seed(0)
    rows, width, vocab = 10, 16, 37
    hidden = torch.randn(rows, width, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, width, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    # Targets in the first and the last block, and two rows of one tile sharing a target.
    targets[0], targets[1], targets[2] = 0, vocab - 1, vocab - 1
    # Unequal upstream weights per row, so a mix-up of rows between tiles would show.
    upstream = torch.linspace(-1.0, 2.0, rows)

    ours = linear_token_logps(
        hidden, weight, targets, chunk_size=chunk_size, softcap=softcap, vocab_block=vocab_block
    )
    expected = _full_logits_token_logps(hidden, weight, targets, softcap)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)

    got = torch.autograd.grad((ours * upstream).sum(), [hidden, weight])
    want = torch.autograd.grad((expected * upstream).sum(), [hidden, weight])
    for ours_grad, expected_grad in zip(got, want, strict=True):
        torch.testing.assert_close(ours_grad, expected_grad, rtol=0, atol=1e-4)


def test_under_autocast_the_product_runs_in_the_autocast_dtype() -> None:
    """Mixed-precision training calls this under bf16 autocast: the tile product runs in
    bf16 (as autocast would run ``hidden @ weight.T``), the log-softmax in fp32."""
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(6, 32, generator=generator, requires_grad=True)
    weight = torch.randn(50, 32, generator=generator) / 4
    targets = torch.randint(0, 50, (6,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_token_logps(hidden, weight, targets, chunk_size=4, vocab_block=7)
    bf16_logits = (hidden.bfloat16() @ weight.bfloat16().T).float()
    expected = torch.log_softmax(bf16_logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    assert ours.dtype == torch.float32
    # An fp32 product would differ from this by about 5e-3 here.
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    (grad,) = torch.autograd.grad(ours.sum(), [hidden])
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_bf16_inputs_accumulate_gradients_in_fp32() -> None:
    """A bf16 model (LoRA's frozen base on GPU): products in bf16, and the gradients summed
    over vocabulary blocks and row tiles in fp32 before the one rounding to bf16."""
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(6, 32, generator=generator).bfloat16().requires_grad_()
    weight = (torch.randn(50, 32, generator=generator) / 4).bfloat16().requires_grad_()
    targets = torch.randint(0, 50, (6,), generator=generator)
    upstream = torch.linspace(-1.0, 2.0, 6)
    ours = linear_token_logps(hidden, weight, targets, chunk_size=4, vocab_block=7)
    got = torch.autograd.grad((ours * upstream).sum(), [hidden, weight])
    # Reference: fp32 copies of the same bf16 values, full logits.
    hidden32 = hidden.detach().float().requires_grad_()
    weight32 = weight.detach().float().requires_grad_()
    expected = _full_logits_token_logps(hidden32, weight32, targets, None)
    want = torch.autograd.grad((expected * upstream).sum(), [hidden32, weight32])
    torch.testing.assert_close(ours, expected, rtol=0, atol=3e-2)
    for ours_grad, expected_grad in zip(got, want, strict=True):
        assert ours_grad.dtype == torch.bfloat16
        torch.testing.assert_close(ours_grad.float(), expected_grad, rtol=2e-2, atol=2e-2)


def test_gradient_only_for_the_inputs_that_need_it() -> None:
    """A frozen head (LoRA) gets no weight gradient; a frozen input gets no hidden gradient."""
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(11, 8)
    targets = torch.tensor([0, 3, 10, 5])
    out = linear_token_logps(hidden, weight, targets, chunk_size=2)
    (grad_hidden,) = torch.autograd.grad(out.sum(), [hidden])
    expected = _full_logits_token_logps(hidden, weight, targets, None)
    (want,) = torch.autograd.grad(expected.sum(), [hidden])
    torch.testing.assert_close(grad_hidden, want, rtol=0, atol=1e-5)


def test_no_rows_gives_an_empty_result() -> None:
    out = linear_token_logps(torch.zeros(0, 8), torch.randn(5, 8), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)


def test_tile_rows_keep_the_logits_tile_within_its_byte_budget() -> None:
    gemma_vocab = 262_144
    rows = tile_rows(gemma_vocab, 1024)
    assert rows * gemma_vocab * 4 <= TILE_BYTES
    assert rows == 256
    assert tile_rows(100, 3) == 3  # a small vocabulary: the caller's bound decides
    assert tile_rows(10**9, 1024) == 1  # never zero rows


def test_head_tiling_splits_the_vocabulary_on_cpu_only() -> None:
    gemma_vocab = 262_144
    rows, block = head_tiling(gemma_vocab, 512, torch.device("cpu"))
    assert (rows, block) == (512, 2048)
    assert rows * block * 4 <= CPU_BLOCK_BYTES
    assert head_tiling(100, 512, torch.device("cpu")) == (512, 100)  # one block: all of it
    # An accelerator takes the whole vocabulary per product, the tile within TILE_BYTES.
    assert head_tiling(gemma_vocab, 512, torch.device("cuda")) == (256, gemma_vocab)


# --------------------------------------------------------------------------------------------
# Responses sharing a prompt: the prompt's keys and values computed once
# --------------------------------------------------------------------------------------------


def _full_sequence_logp(model, prompt: list[int], response: list[int]) -> float:
    """Independent: the whole sequence through the model, full logits, log_softmax."""
    ids = torch.tensor([prompt + response])
    attention = torch.ones_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, len(prompt) :] = True
    logps, _ = full_logits_sequence_logps(model, ids, attention, mask)
    return float(logps[0])


def test_shared_prompt_logps_equal_whole_sequences(tiny_model_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(1)

    def tokens(n: int) -> list[int]:
        return torch.randint(3, 300, (n,), generator=generator).tolist()

    # Prompts of unequal length (the short one is left-padded), a group of three and a group
    # of two, responses from one token (nothing fed after the prompt) to twelve.
    prompts = [tokens(9), tokens(4)]
    responses = [tokens(12), tokens(1), tokens(7), tokens(3), tokens(10)]
    owners = [0, 0, 0, 1, 1]
    with torch.no_grad():
        ours = shared_prompt_logps(model, prompts, responses, owners, pad_id=0, chunk_size=4)
        expected = [
            _full_sequence_logp(model, prompts[g], r)
            for g, r in zip(owners, responses, strict=True)
        ]
    torch.testing.assert_close(ours, torch.tensor(expected), rtol=0, atol=1e-4)


def _pair(prompt_tokens: int, response_tokens: int, prompt_id: int = 1) -> EncodedPair:
    return EncodedPair([prompt_id] * prompt_tokens + [7] * response_tokens, prompt_tokens)


def test_pairs_are_grouped_by_identical_prompt_ids_within_the_window() -> None:
    pairs = [
        _pair(5, 3),  # 0: shares with 1
        _pair(5, 9),  # 1
        _pair(5, 2, prompt_id=2),  # 2: its prompt is its own
        _pair(0, 4),  # 3: empty prompt, nothing to share
        _pair(0, 6),  # 4
        _pair(30, 3, prompt_id=3),  # 5: shares with 6, but 6 reaches the window
        _pair(30, 10, prompt_id=3),  # 6
    ]
    groups, singles = group_by_prompt(pairs, window=40)
    assert groups == [[0, 1]]
    assert singles == [2, 3, 4, 5, 6]
    groups, singles = group_by_prompt(pairs, window=None)
    assert groups == [[0, 1], [5, 6]]
    assert singles == [2, 3, 4]


def test_shared_batches_hold_at_most_batch_size_responses_and_fit_the_window() -> None:
    pairs = [_pair(4, 4, prompt_id=g) for g in range(3) for _ in range(2)]  # 3 groups of 2
    pairs += [_pair(20, 2, prompt_id=9)] * 3  # a group of 3: more than the batch alone
    groups = [[0, 1], [2, 3], [4, 5], [6, 7, 8]]
    batches = shared_prompt_batches(groups, pairs, batch_size=4, window=None)
    assert batches == [[[6, 7, 8]], [[0, 1], [2, 3]], [[4, 5]]]
    # With a window of 24 the two groups may not share a batch: its padded width would be
    # 20 (the longest prompt) + 4 (the longest response).
    batches = shared_prompt_batches([[6, 7, 8], [0, 1]], pairs, batch_size=8, window=24)
    assert batches == [[[6, 7, 8]], [[0, 1]]]
