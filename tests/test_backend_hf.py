"""hf backend: generation dtype choice, nucleus mask, separate generation and scoring weights."""

from __future__ import annotations

import re

import pytest
import torch

from mipo_engine.backends import hf
from mipo_engine.backends.base import GenerationRequest, SamplingConfig
from mipo_engine.backends.hf import HFBackend, nucleus, pick_generation_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("native", "generation_dtype", "dtype", "expected"),
    [
        (True, "auto", "auto", torch.bfloat16),  # native bf16 CPU: generate in bf16
        (False, "auto", "auto", torch.float32),  # emulated bf16 is slower than fp32
        (True, "auto", "float32", torch.float32),  # an explicit dtype holds for both
        (False, "bfloat16", "auto", torch.bfloat16),  # an explicit generation dtype wins
    ],
)
def test_generation_dtype(monkeypatch, native, generation_dtype, dtype, expected):
    monkeypatch.setattr(hf, "native_bf16_cpu", lambda: native)
    assert pick_generation_dtype(generation_dtype, dtype, CPU) == expected
    # Scores keep the training dtype whatever generation uses.
    assert hf.pick_dtype(dtype, CPU) == (torch.float32 if dtype == "auto" else expected)


def _reference_drop(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter written out per row: walk the tokens by falling probability and keep
    each one while the mass of the tokens kept before it is below top_p."""
    drop = torch.ones_like(scores, dtype=torch.bool)
    for row in range(scores.shape[0]):
        probs = torch.softmax(scores[row].double(), dim=-1)
        mass = 0.0
        for token in torch.argsort(probs, descending=True).tolist():
            if mass >= top_p:
                break
            drop[row, token] = False
            mass += float(probs[token])
    return drop


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("scale", [0.5, 4.0])  # flat and peaked distributions
def test_nucleus_mask_matches_a_plain_walk(top_p, scale):
    generator = torch.Generator().manual_seed(3)
    # 5000 tokens: the top-64 partial sort is used, then a full sort for wider nuclei.
    scores = torch.randn(3, 5000, generator=generator) * scale
    _, tokens, kept = nucleus(torch.softmax(scores, dim=-1), top_p)
    got = torch.ones_like(scores, dtype=torch.bool)  # dropped: every token not in the nucleus
    for row in range(scores.shape[0]):
        got[row, tokens[row, : int(kept[row])]] = False
    expected = _reference_drop(scores, top_p)
    assert (~got).sum(dim=-1).min() >= 1
    assert torch.equal(got, expected)


def _requests(count: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            id=str(i), messages=[{"role": "user", "content": f"Tip {i} for cooking?"}], seed=i
        )
        for i in range(count)
    ]


def test_bf16_generation_keeps_fp32_scores(tiny_model_dir):
    mixed = HFBackend(
        str(tiny_model_dir), device="cpu", generation_dtype="bfloat16", show_progress=False
    )
    plain = HFBackend(str(tiny_model_dir), device="cpu", dtype="float32", show_progress=False)
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.8, top_p=0.9)
    completions = mixed.generate(_requests(5), sampling)
    assert mixed.generation_model.dtype == torch.bfloat16
    assert mixed.model.dtype == torch.float32 and plain.generation_model is plain.model
    assert all(c.finish_reason in ("stop", "length") and c.num_tokens <= 6 for c in completions)
    prompts = [mixed.render(r.messages) for r in _requests(5)]
    responses = [c.text or "x" for c in completions]
    assert mixed.score(prompts, responses) == plain.score(prompts, responses)


def test_generation_only_loads_one_copy(tiny_model_dir):
    backend = HFBackend(
        str(tiny_model_dir), device="cpu", generation_dtype="bfloat16", show_progress=False
    )
    backend.generate(_requests(2), SamplingConfig(max_new_tokens=3, temperature=0))
    assert list(backend._networks) == [torch.bfloat16]


@pytest.mark.slow
def test_bf16_generation_is_sensible_on_the_default_model():
    """The default model, generating in bf16 (what ``auto`` picks on native-bf16 CPUs)."""
    from mipo_engine.models import resolve_model

    backend = HFBackend(
        resolve_model(None),
        device="cpu",
        generation_dtype="bfloat16",
        batch_size=4,
        show_progress=False,
    )
    questions = [
        "What is the capital of France?",
        "Give me one tip for learning to cook.",
        "Why is the sky blue?",
        "Name three fruits.",
    ]
    requests = [
        GenerationRequest(id=str(i), messages=[{"role": "user", "content": q}], seed=i)
        for i, q in enumerate(questions)
    ]
    completions = backend.generate(requests, SamplingConfig(max_new_tokens=40, temperature=0.7))
    assert backend.generation_model.dtype == torch.bfloat16
    texts = [c.text for c in completions]
    non_empty = [t for t in texts if t.strip()]
    assert len(non_empty) >= 3, texts
    for text in non_empty:
        letters = sum(ch.isalpha() or ch.isspace() for ch in text)
        assert letters / len(text) > 0.6, text
    assert len(re.findall(r"[A-Za-z]{3,}", " ".join(texts))) >= 15, texts


@pytest.mark.parametrize("top_p", [0.3, 0.9, 1.0])
def test_sampler_draws_from_the_renormalised_nucleus(top_p):
    """Token frequencies over 6,000 rows (one seed each, the same logits) against the
    top-p softmax worked out by the plain walk above, renormalised; within 4.5 standard
    errors per token, and never a token outside the nucleus."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, -9.0])
    temperature = 0.7
    rows = 6000
    sampler = hf._RowSeededSampler(range(rows), temperature, top_p)
    out = sampler(None, logits.expand(rows, -1).clone())
    drawn = out.argmax(dim=-1)
    assert torch.equal((out == 0).sum(dim=-1), torch.ones(rows, dtype=torch.long))
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        probs[_reference_drop((logits / temperature).unsqueeze(0), top_p)[0]] = 0.0
    expected = probs / probs.sum()
    counts = torch.bincount(drawn, minlength=len(logits)).double() / rows
    assert torch.all(counts[expected == 0] == 0)
    error = (expected * (1 - expected) / rows).sqrt()
    assert torch.all((counts - expected).abs() <= 4.5 * error + 1e-12), (counts, expected)


def test_sampler_row_draws_do_not_depend_on_the_batch():
    """A row's token comes from its own seed: the same logits and seed alone or in a batch of
    others (one of which needs a wide nucleus) draw the same token."""
    generator = torch.Generator().manual_seed(5)
    scores = torch.randn(4, 40000, generator=generator) * torch.tensor([[6.0], [0.3], [3.0], [1.0]])
    together = hf._RowSeededSampler([11, 12, 13, 14], 0.8, 0.95)(None, scores.clone())
    for row, seed in enumerate([11, 12, 13, 14]):
        alone = hf._RowSeededSampler([seed], 0.8, 0.95)(None, scores[row : row + 1].clone())
        assert int(alone.argmax()) == int(together[row].argmax())


def test_nucleus_widens_only_the_rows_that_need_it():
    """A peaked row and a flat one of 300,000 tokens: the flat one's nucleus needs more than
    16,384 tokens and matches the plain walk's size; the peaked one stays small."""
    generator = torch.Generator().manual_seed(9)
    scores = torch.randn(2, 300_000, generator=generator) * torch.tensor([[8.0], [0.05]])
    probs = torch.softmax(scores, dim=-1)
    head, tokens, kept = nucleus(probs, 0.9)
    expected = (~_reference_drop(scores, 0.9)).sum(dim=-1)
    assert kept.flatten().tolist() == expected.tolist()
    assert int(kept[1]) > 16384 and int(kept[0]) < 1024
    for row in range(2):
        n = int(kept[row])
        assert torch.equal(probs[row, tokens[row, :n]], head[row, :n])
        assert torch.all(head[row, n:] == 0)
