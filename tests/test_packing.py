"""Packed training batches: the layout by hand, and the same log-probs, loss and gradients as
padded batches on tiny models (an independent reference: each sequence alone, full logits)."""

from __future__ import annotations

import pytest
import torch

from mipo_engine.modeling.logps import full_logits_sequence_logps
from mipo_engine.modeling.policy import (
    batch_sequence_logps,
    response_kl,
    supports_packing,
)
from mipo_engine.modeling.tokenization import EncodedPair
from mipo_engine.training.data import PairCollator, PairExample, pack_sequences
from mipo_engine.training.losses import dpo


def _pair(ids: list[int], start: int) -> EncodedPair:
    return EncodedPair(input_ids=ids, response_start=start)


def test_pack_sequences_layout() -> None:
    """Lengths 5, 3, 2, 4 in rows of width 5 (the longest), first fit by falling length:
    seq 0 (5) -> row 0; seq 3 (4) -> row 1; seq 1 (3) -> row 2; seq 2 (2) -> row 2 (room 2).
    Within a row, sequences keep their input order; a row's tail padding restarts positions.
    """
    sequences = [
        _pair([1, 10, 11, 12, 13], 2),
        _pair([1, 20, 21], 1),
        _pair([1, 30], 1),
        _pair([1, 40, 41, 42], 3),
    ]
    batch = pack_sequences(sequences, pad_id=0)
    assert batch["input_ids"].tolist() == [
        [1, 10, 11, 12, 13],
        [1, 40, 41, 42, 0],
        [1, 20, 21, 1, 30],
    ]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch["sequence_ids"].tolist() == [[0] * 5, [3, 3, 3, 3, -1], [1, 1, 1, 2, 2]]
    assert batch["response_mask"].int().tolist() == [
        [0, 0, 1, 1, 1],
        [0, 0, 0, 1, 0],
        [0, 1, 1, 0, 1],
    ]


def test_a_sequence_start_is_never_predicted() -> None:
    """An empty prompt (response_start 0): the first token has no predecessor in its own
    sequence, so it is not a target even when another sequence precedes it in the row."""
    batch = pack_sequences([_pair([1, 2, 3], 1), _pair([4, 5], 0)], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    batch = pack_sequences([_pair([1, 2, 3, 9], 1), _pair([4, 5], 0), _pair([6, 7], 0)], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9], [4, 5, 6, 7]]
    assert batch["response_mask"].int().tolist() == [[0, 1, 1, 1], [0, 1, 0, 1]]


def test_collator_pads_when_packing_saves_no_row() -> None:
    same = [
        PairExample(index=i, chosen=_pair([1, 2, 3], 1), rejected=_pair([1, 4, 5], 1), values={})
        for i in range(2)
    ]
    batch = PairCollator(pad_id=0, pack=True)(same)
    assert "position_ids" not in batch and batch["attention_mask"].shape == (4, 3)


def _random_examples(vocab: int, count: int, seed: int) -> list[PairExample]:
    """Pairs of very different lengths (prompts 2-9 tokens, responses 1-24)."""
    generator = torch.Generator().manual_seed(seed)

    def sequence() -> EncodedPair:
        prompt = int(torch.randint(2, 10, (1,), generator=generator))
        response = int(torch.randint(1, 25, (1,), generator=generator))
        ids = torch.randint(4, vocab, (prompt + response,), generator=generator).tolist()
        return EncodedPair(input_ids=[2, *ids[1:]], response_start=prompt)

    return [
        PairExample(index=i, chosen=sequence(), rejected=sequence(), values={})
        for i in range(count)
    ]


def _tiny(kind: str) -> torch.nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    common = {
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "pad_token_id": 0,
    }
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, attn_implementation="sdpa"))
    else:
        # Gemma 3: a sliding-window layer (window 8, shorter than most sequences) and a
        # global one, soft-capped logits.
        config = Gemma3TextConfig(
            **common,
            head_dim=8,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            final_logit_softcapping=30.0,
            attn_implementation="sdpa",
        )
        model = Gemma3ForCausalLM(config)
    return model.float().eval()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_packed_and_padded_give_the_same_logps_loss_and_gradients(kind: str) -> None:
    model = _tiny(kind)
    assert supports_packing(model)
    examples = _random_examples(96, 6, seed=1)
    padded = PairCollator(pad_id=0)(examples)
    packed = PairCollator(pad_id=0, pack=True)(examples)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # rows were saved

    # Independent reference: each sequence alone, full logits, no padding at all.
    sequences = [e.chosen for e in examples] + [e.rejected for e in examples]
    alone = []
    for sequence in sequences:
        ids = torch.tensor([sequence.input_ids])
        response = torch.zeros_like(ids, dtype=torch.bool)
        response[0, sequence.response_start :] = True
        with torch.no_grad():
            alone.append(full_logits_sequence_logps(model, ids, torch.ones_like(ids), response)[0])
    expected = torch.cat(alone)

    results = {}
    for name, batch in (("padded", padded), ("packed", packed)):
        model.zero_grad()
        result = batch_sequence_logps(model, batch, chunk_size=7)
        chosen, rejected = result.logps.split(len(examples))
        loss = dpo(
            chosen, rejected, torch.zeros_like(chosen), torch.zeros_like(rejected), beta=0.1
        ).mean()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[name] = (result.logps.detach(), result.counts, loss.detach(), grads)
        torch.testing.assert_close(result.logps.detach(), expected, rtol=0, atol=1e-5)
    (a_logps, a_counts, a_loss, a_grads), (b_logps, b_counts, b_loss, b_grads) = (
        results["padded"],
        results["packed"],
    )
    assert a_counts.tolist() == b_counts.tolist()
    assert b_counts.tolist() == [len(s.input_ids) - s.response_start for s in sequences]
    torch.testing.assert_close(b_logps, a_logps, rtol=0, atol=1e-5)
    torch.testing.assert_close(b_loss, a_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(b_grads, a_grads, rtol=1e-4, atol=1e-6)


def test_packed_sequence_kl_matches_padded() -> None:
    """TDPO's per-sequence KL reads hidden states by position: the same in both layouts."""
    model = _tiny("llama")
    other = _tiny("llama")
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    examples = _random_examples(96, 4, seed=2)
    values = []
    for pack in (False, True):
        batch = PairCollator(pad_id=0, pack=pack)(examples)
        policy = batch_sequence_logps(model, batch, keep_states=True)
        ref = batch_sequence_logps(other, batch, keep_states=True)
        values.append(
            response_kl(
                policy.states,
                ref.states,
                model.lm_head.weight,
                policy.rows,
                policy.logps.shape[0],
            ).detach()
        )
    assert bool((values[0] > 0).all())
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-6)
