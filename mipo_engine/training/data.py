"""Preference pairs for training: tokenising and batching.

Pair tables come from ``artifacts.pairs.read_pairs``. Every response is tokenised by
``encode_pair``: the same ids in ``mipo score`` and ``mipo train``, which is what makes the
step-0 invariant hold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from torch.utils.data import Dataset, Sampler

from mipo_engine.artifacts.pairs import PRIOR_COLUMNS, REFERENCE_COLUMNS
from mipo_engine.errors import ConfigError
from mipo_engine.modeling.tokenization import EncodedPair, encode_pair

# --------------------------------------------------------------------------------------------
# Tokenised examples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairExample:
    """One tokenised pair: both responses under the training prompt, and optionally both
    under the rejected sample's conditioning (InfoNCE's cross-context terms)."""

    index: int
    chosen: EncodedPair
    rejected: EncodedPair
    values: dict[str, float]
    chosen_cross: EncodedPair | None = None
    rejected_cross: EncodedPair | None = None

    @property
    def length(self) -> int:
        """Padded width this pair needs: the longest of its sequences."""
        sequences = [self.chosen, self.rejected, self.chosen_cross, self.rejected_cross]
        return max(len(s.input_ids) for s in sequences if s is not None)


_TOKEN_CHECKS = (
    ("scored_chosen_tokens", "chosen", "reference scores"),
    ("scored_rejected_tokens", "rejected", "reference scores"),
    ("prior_chosen_tokens", "chosen", "prior scores"),
    ("prior_rejected_tokens", "rejected", "prior scores"),
)


def encode_examples(
    pairs: pl.DataFrame,
    tokenizer: Any,
    *,
    max_length: int,
    with_cross: bool = False,
) -> list[PairExample]:
    """Tokenise every pair with ``encode_pair`` (the tokenisation ``mipo score`` uses).

    Raises:
        ConfigError: stored scores were made with a different token count for some response
            (another tokenizer or ``--max-length``): the reference would not match the policy.
    """
    value_columns = [c for c in (*REFERENCE_COLUMNS, *PRIOR_COLUMNS) if c in pairs.columns]
    examples = []
    for index, row in enumerate(pairs.iter_rows(named=True)):
        chosen = encode_pair(tokenizer, row["prompt"], row["chosen"], max_length=max_length)
        rejected = encode_pair(tokenizer, row["prompt"], row["rejected"], max_length=max_length)
        _check_token_counts(row, chosen, rejected, max_length)
        cross_chosen = cross_rejected = None
        if with_cross:
            cross_prompt = row["rejected_input"]
            cross_chosen = encode_pair(
                tokenizer, cross_prompt, row["chosen"], max_length=max_length
            )
            cross_rejected = encode_pair(
                tokenizer, cross_prompt, row["rejected"], max_length=max_length
            )
        values = {column: float(row[column]) for column in value_columns}
        examples.append(PairExample(index, chosen, rejected, values, cross_chosen, cross_rejected))
    return examples


def _check_token_counts(
    row: dict[str, Any], chosen: EncodedPair, rejected: EncodedPair, max_length: int
) -> None:
    encoded = {"chosen": chosen.response_tokens, "rejected": rejected.response_tokens}
    for column, side, what in _TOKEN_CHECKS:
        stored = row.get(column)
        if stored is not None and int(stored) != encoded[side]:
            raise ConfigError(
                f"pair {row['id']!r}: the {what} cover {stored} {side} tokens but the trainer's "
                f"tokenisation gives {encoded[side]}. Scores must come from the same tokenizer "
                f"and max length: rerun `mipo score` with --max-length {max_length}.",
                key="scores",
            )


class PairDataset(Dataset):
    """Tokenised pairs; ``lengths`` feeds the length-grouped sampler."""

    def __init__(self, examples: Sequence[PairExample]) -> None:
        if not examples:
            raise ConfigError("no preference pairs to train on", key="preferences")
        self.examples = list(examples)
        self.lengths = [example.length for example in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> PairExample:
        return self.examples[index]


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


def pad_sequences(
    sequences: Sequence[EncodedPair], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad encoded sequences: (input_ids, attention_mask, response_mask), each [R, T]."""
    width = max(len(s.input_ids) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        length = len(sequence.input_ids)
        input_ids[row, :length] = torch.tensor(sequence.input_ids, dtype=torch.long)
        attention_mask[row, :length] = 1
        response_mask[row, sequence.response_start : length] = True
    return input_ids, attention_mask, response_mask


def pack_sequences(sequences: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Pack encoded sequences into rows no wider than the longest one, without padding
    between them (first fit, longest first).

    Returns ``input_ids``, ``position_ids`` (restarting at 0 for each sequence, which is how
    transformers builds a block-diagonal causal mask when no attention mask is given),
    ``response_mask`` (response tokens, never a sequence's first token: the token before it
    belongs to another sequence) and ``sequence_ids`` (the input index of each token's
    sequence, -1 for the padding that ends a row), each [P, W] with P <= len(sequences).

    Every row stays at most as wide as the padded batch, so attention, which on CPU is
    computed over the whole row, costs no more than with padding, and the rows saved are
    compute and activations saved.
    """
    width = max(len(s.input_ids) for s in sequences)
    rows: list[list[int]] = []  # sequence indices per row
    free: list[int] = []  # room left per row
    for index in sorted(range(len(sequences)), key=lambda i: -len(sequences[i].input_ids)):
        length = len(sequences[index].input_ids)
        row = next((r for r, room in enumerate(free) if room >= length), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(index)
        free[row] -= length
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    sequence_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for row, members in enumerate(rows):
        start = 0
        for index in sorted(members):
            sequence = sequences[index]
            stop = start + len(sequence.input_ids)
            input_ids[row, start:stop] = torch.tensor(sequence.input_ids, dtype=torch.long)
            position_ids[row, start:stop] = torch.arange(stop - start)
            response_mask[row, start + max(sequence.response_start, 1) : stop] = True
            sequence_ids[row, start:stop] = index
            start = stop
        # The padding that ends a row is one more sequence, seen by nothing else.
        position_ids[row, start:] = torch.arange(width - start)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "response_mask": response_mask,
        "sequence_ids": sequence_ids,
    }


class PairCollator:
    """Stack a batch of B pairs into ONE forward batch.

    Sequences 0..B-1 are the chosen responses, B..2B-1 the rejected ones (then, for InfoNCE,
    the chosen and rejected responses under the rejected sample's conditioning), so a single
    forward pass yields every log-prob the loss needs. Padded, sequence r is row r
    (``input_ids``, ``attention_mask``, ``response_mask``); packed (``pack=True``, when
    packing saves a row), the rows are ``pack_sequences``' (``input_ids``, ``position_ids``,
    ``response_mask``, ``sequence_ids``). Per-pair values (token counts, stored reference or prior log-probs,
    the dataset index) come as [B] tensors.
    """

    def __init__(self, pad_id: int, *, pack: bool = False) -> None:
        self.pad_id = pad_id
        self.pack = pack

    def __call__(self, examples: Sequence[PairExample]) -> dict[str, torch.Tensor]:
        sequences = [e.chosen for e in examples] + [e.rejected for e in examples]
        if examples[0].chosen_cross is not None:
            sequences += [e.chosen_cross for e in examples]  # type: ignore[misc]
            sequences += [e.rejected_cross for e in examples]  # type: ignore[misc]
        packed = pack_sequences(sequences, self.pad_id) if self.pack else None
        if packed is not None and packed["input_ids"].shape[0] < len(sequences):
            batch = packed
        else:  # nothing to pack: plain rows keep attention's causal fast path
            input_ids, attention_mask, response_mask = pad_sequences(sequences, self.pad_id)
            batch = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "response_mask": response_mask,
            }
        batch.update(
            {
                "index": torch.tensor([e.index for e in examples], dtype=torch.long),
                "chosen_tokens": torch.tensor(
                    [e.chosen.response_tokens for e in examples], dtype=torch.long
                ),
                "rejected_tokens": torch.tensor(
                    [e.rejected.response_tokens for e in examples], dtype=torch.long
                ),
            }
        )
        for name in examples[0].values:
            batch[name] = torch.tensor([e.values[name] for e in examples], dtype=torch.float32)
        return batch


class LengthGroupedSeededSampler(Sampler[int]):
    """Shuffled indices in which neighbours have similar lengths, reproducible per epoch.

    The order depends only on (seed, epoch): a permutation from a generator seeded with
    ``seed + epoch`` is cut into mega-batches of ``batch_size * group_factor`` examples, each
    sorted longest first, so consecutive batches pad little. Resuming from a checkpoint
    rebuilds exactly the same order and skips the batches already trained on.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, *, seed: int, group_factor: int = 50
    ) -> None:
        if batch_size < 1 or group_factor < 1:
            raise ValueError("batch_size and group_factor must be >= 1")
        self.lengths = list(lengths)
        self.mega_batch = batch_size * group_factor
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        for start in range(0, len(order), self.mega_batch):
            group = order[start : start + self.mega_batch]
            yield from sorted(group, key=lambda i: -self.lengths[i])
