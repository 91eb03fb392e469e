"""Log-probabilities of given continuations after given contexts, from a transformers model.

For multiple-choice answers: the few candidate tokens at one position (the answer letters),
or short multi-token options. Contexts are left-padded so that rows end together, and only
the last positions' logits are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _left_padded(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), left-padded so that rows end together.

    Position ids count real tokens only, so a padded row sees the positions it would see
    alone and padding changes nothing but rounding.
    """
    width = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
        attention[row, width - len(sequence) :] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return ids, attention, positions


def _last_logprobs(model: Any, sequences: Sequence[Sequence[int]], pad_id: int, keep: int) -> Any:
    """Log-softmax over the vocabulary at the last ``keep`` positions of each row: (B, keep, V).

    Only those positions' logits are computed (``logits_to_keep``): full logits for a
    262k-token vocabulary would take gigabytes.
    """
    device = next(model.parameters()).device
    ids, attention, positions = _left_padded(sequences, pad_id)
    logits = model(
        input_ids=ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        logits_to_keep=keep,
    ).logits
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def next_token_logprobs(
    model: Any,
    contexts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 8,
) -> list[list[float]]:
    """Next-token log-probs of the given tokens after each context (a transformers model)."""
    order = sorted(range(len(contexts)), key=lambda index: -len(contexts[index]))
    results: list[list[float] | None] = [None] * len(contexts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        logprobs = _last_logprobs(model, [contexts[i] for i in batch], pad_id, keep=1)[:, -1]
        for row, index in enumerate(batch):
            wanted = torch.tensor(list(candidates[index]), device=logprobs.device)
            results[index] = logprobs[row, wanted].tolist()
    return [result for result in results if result is not None]


@torch.no_grad()
def sequence_continuation_logprobs(
    model: Any,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    batch_size: int,
) -> list[list[float]]:
    """Summed log-probs of multi-token continuations: one row per (context, option)."""
    rows = [
        (index, option, [*contexts[index], *continuations[index][option]])
        for index in range(len(contexts))
        for option in range(len(continuations[index]))
    ]
    rows.sort(key=lambda row: -len(row[2]))
    results = [[0.0] * len(options) for options in continuations]
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        keep = max(len(continuations[index][option]) for index, option, _ in batch) + 1
        logprobs = _last_logprobs(model, [sequence for *_, sequence in batch], pad_id, keep)
        for row, (index, option, _) in enumerate(batch):
            tokens = continuations[index][option]
            # Position -1 predicts the token after the sequence; token t of the continuation
            # (0-based, n tokens) is predicted at position t - n - 1.
            total = sum(
                logprobs[row, position - len(tokens) - 1, token].item()
                for position, token in enumerate(tokens)
            )
            results[index][option] = total
    return results
