"""The tiled token log-prob path against plain full-vocabulary logits, values and gradients.

The reference is written out independently here: ``log_softmax`` over the whole ``[N, V]``
logits (soft-capped as Gemma 2 does, ``cap * tanh(z / cap)``), then a gather, differentiated
by autograd.
"""

from __future__ import annotations

import pytest
import torch

from mipo_engine.training.logps import TILE_BYTES, linear_token_logps, tile_rows


def _full_logits_token_logps(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = hidden @ weight.T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_values_and_gradients_equal_full_logits(softcap: float | None, chunk_size: int) -> None:
    generator = torch.Generator().manual_seed(0)
    rows, width, vocab = 10, 16, 37
    hidden = torch.randn(rows, width, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, width, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    # Unequal upstream weights per row, so a mix-up of rows between tiles would show.
    upstream = torch.linspace(-1.0, 2.0, rows)

    ours = linear_token_logps(hidden, weight, targets, chunk_size=chunk_size, softcap=softcap)
    expected = _full_logits_token_logps(hidden, weight, targets, softcap)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)

    got = torch.autograd.grad((ours * upstream).sum(), [hidden, weight])
    want = torch.autograd.grad((expected * upstream).sum(), [hidden, weight])
    for ours_grad, expected_grad in zip(got, want, strict=True):
        torch.testing.assert_close(ours_grad, expected_grad, rtol=0, atol=1e-4)


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
    assert rows == 128
    assert tile_rows(100, 3) == 3  # a small vocabulary: the caller's bound decides
    assert tile_rows(10**9, 1024) == 1  # never zero rows
