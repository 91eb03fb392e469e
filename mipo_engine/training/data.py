"""Preference pairs for scoring and training: reading, tokenising, batching.

Two artifacts can feed ``mipo score`` and ``mipo train``:

- ``generations`` (from ``mipo generate``): the training prompt is ``chosen_input``, the exact
  rendered conditioning of the chosen sample (x with c for personalization, x for
  random-prompt; DESIGN.md section 3). ``rejected_input`` is kept for InfoNCE and PMI.
- ``preferences`` (from ``mipo export``, TRL-compatible): ``prompt`` is the rendered training
  prompt (or a message list, rendered with the model's chat template), ``chosen`` and
  ``rejected`` are strings (or message lists whose last assistant turn is the response), with
  optional ``ref_chosen_logps`` / ``ref_rejected_logps`` and ``split``. Without a ``prompt``
  column (OpenRLHF's implicit-prompt layout) the prompt is the chosen conversation minus its
  last turn.

Both are normalised to one "pair table" (``PAIR_COLUMNS``) so the rest of the code never asks
which artifact it came from. Every response is tokenised by ``encode_pair``: the same ids in
``mipo score`` and ``mipo train``, which is what makes the step-0 invariant hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch.utils.data import Dataset, Sampler

from mipo_engine.artifacts.schemas import (
    GENERATIONS,
    SCORES,
    ArtifactSchema,
    Column,
    validate_frame,
)
from mipo_engine.artifacts.store import parquet_columns, read_artifact
from mipo_engine.chat import Message
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.tokenization import EncodedPair, encode_pair

PAIR_COLUMNS = (
    "id",
    "prompt",  # the training prompt text: both responses are scored under it
    "chosen",
    "rejected",
    "rejected_input",  # conditioning the rejected sample was drawn under (generations only)
    "user_prompt",  # the request x alone, without the user context (generations only)
    "context",
    "strategy",
)
"""Columns of a normalised pair table, in order; reference columns may follow."""

REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
PRIOR_COLUMNS = ("prior_chosen_logps", "prior_rejected_logps")

_PREFERENCE_TEXT = ArtifactSchema(
    "preferences",
    (
        Column("id", pl.String()),
        Column("prompt", pl.String()),
        Column("chosen", pl.String()),
        Column("rejected", pl.String()),
    ),
)
"""The text columns of a ``preferences`` artifact once message lists are rendered."""

Render = Callable[[list[Message]], str]


# --------------------------------------------------------------------------------------------
# Reading pair tables
# --------------------------------------------------------------------------------------------


def read_pairs(
    path: str | Path, *, render: Render | None = None, split: str | None = None
) -> pl.DataFrame:
    """Read a ``generations`` or ``preferences`` artifact as a pair table.

    ``render`` turns a message list into prompt text (the model's chat template); it is only
    needed, and only called, for conversational ``preferences`` rows. ``split`` keeps only the
    rows of that ``split`` (``mipo export`` assigns them); inputs without the column are kept
    whole.

    Raises:
        InputError: naming the file, the 1-based row and the column at fault.
    """
    path = Path(path)
    columns = parquet_columns(path)
    if "chosen_input" in columns:
        return _pairs_from_generations(read_artifact(path, GENERATIONS))
    frame = pl.read_parquet(path)
    if split is not None and "split" in frame.columns:
        frame = _only_split(frame, split, path)
    return _pairs_from_preferences(frame, path, render)


def _only_split(frame: pl.DataFrame, split: str, path: Path) -> pl.DataFrame:
    kept = frame.filter(pl.col("split") == split)
    if kept.height == 0:
        found = sorted(str(s) for s in frame["split"].unique().drop_nulls().to_list())
        raise InputError(
            f"no rows with split {split!r} (found {found}); choose one with --split",
            file=path,
            field="split",
        )
    return kept


def _pairs_from_generations(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        pl.col("id"),
        pl.col("chosen_input").alias("prompt"),
        pl.col("chosen"),
        pl.col("rejected"),
        pl.col("rejected_input"),
        pl.col("prompt").alias("user_prompt"),
        pl.col("context"),
        pl.col("strategy"),
    )


def _pairs_from_preferences(frame: pl.DataFrame, path: Path, render: Render | None) -> pl.DataFrame:
    if "prompt" not in frame.columns and "chosen" in frame.columns:
        frame = frame.with_columns(_implicit_prompt(frame, path))
    missing = [c for c in ("id", "prompt", "chosen", "rejected") if c not in frame.columns]
    if missing:
        raise InputError(
            f"missing column(s) {missing}: expected a 'generations' artifact (with chosen_input) "
            f"or a 'preferences' artifact (id, prompt, chosen, rejected); found {frame.columns}",
            file=path,
            field=missing[0],
        )
    frame = frame.with_columns(
        _prompt_text(frame, path, render),
        _response_text(frame, "chosen", path),
        _response_text(frame, "rejected", path),
    )
    frame = _validate_text(frame, path)
    reference = _optional_reference(frame, path)
    strategy = (
        pl.col("strategy").cast(pl.String)
        if "strategy" in frame.columns
        else pl.lit(None, pl.String).alias("strategy")
    )
    return frame.select(
        pl.col("id"),
        pl.col("prompt"),
        pl.col("chosen"),
        pl.col("rejected"),
        pl.lit(None, pl.String).alias("rejected_input"),
        pl.lit(None, pl.String).alias("user_prompt"),
        pl.lit(None, pl.String).alias("context"),
        strategy,
        *reference,
    )


def _is_message_list(series: pl.Series) -> bool:
    dtype = series.dtype
    return isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)


def _messages(value: Any, path: Path, row: int, column: str) -> list[Message]:
    if not value:
        raise InputError("message list is empty", file=path, row=row, field=column)
    messages = []
    for message in value:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise InputError(
                "each message needs 'role' and 'content'", file=path, row=row, field=column
            )
        messages.append({"role": str(message["role"]), "content": str(message["content"])})
    return messages


def _prompt_text(frame: pl.DataFrame, path: Path, render: Render | None) -> pl.Series:
    series = frame["prompt"]
    if not _is_message_list(series):
        return series
    if render is None:
        raise InputError(
            "conversational prompts (message lists) need a chat template to render",
            file=path,
            field="prompt",
        )
    texts = [
        render(_messages(value, path, row, "prompt"))
        for row, value in enumerate(series.to_list(), start=1)
    ]
    return pl.Series("prompt", texts, dtype=pl.String)


def _implicit_prompt(frame: pl.DataFrame, path: Path) -> pl.Series:
    """OpenRLHF layout: the prompt is the chosen conversation without its last turn."""
    if not _is_message_list(frame["chosen"]):
        raise InputError(
            "no prompt column, and chosen is not a conversation to take it from",
            file=path,
            field="prompt",
        )
    prompts = []
    for row, value in enumerate(frame["chosen"].to_list(), start=1):
        messages = _messages(value, path, row, "chosen")
        if len(messages) < 2:
            raise InputError(
                "an implicit-prompt conversation needs the prompt turns and the response",
                file=path,
                row=row,
                field="chosen",
            )
        prompts.append(messages[:-1])
    return pl.Series("prompt", prompts)


def _response_text(frame: pl.DataFrame, column: str, path: Path) -> pl.Series:
    """A response string; for a message list, the content of its last assistant turn."""
    series = frame[column]
    if not _is_message_list(series):
        return series
    texts = []
    for row, value in enumerate(series.to_list(), start=1):
        turns = [m for m in _messages(value, path, row, column) if m["role"] == "assistant"]
        if not turns:
            raise InputError("no assistant message in the list", file=path, row=row, field=column)
        texts.append(turns[-1]["content"])
    return pl.Series(column, texts, dtype=pl.String)


def _validate_text(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    frame = validate_frame(frame, _PREFERENCE_TEXT, file=path)
    blank = frame["prompt"].str.strip_chars().str.len_chars() == 0
    if blank.any():
        row = int(blank.arg_true()[0]) + 1
        raise InputError("prompt is empty or whitespace", file=path, row=row, field="prompt")
    return frame


def _optional_reference(frame: pl.DataFrame, path: Path) -> list[pl.Expr]:
    """The ``ref_*_logps`` columns when both are present and complete; [] when neither is."""
    present = [c for c in REFERENCE_COLUMNS if c in frame.columns]
    if not present:
        return []
    if len(present) == 1:
        other = next(c for c in REFERENCE_COLUMNS if c not in present)
        raise InputError(
            f"{present[0]} is given without {other}: provide both or neither",
            file=path,
            field=other,
        )
    for column in REFERENCE_COLUMNS:
        values = frame[column].cast(pl.Float64, strict=False)
        bad = values.is_null() | ~values.is_finite().fill_null(False)
        if bad.all():
            return []  # an export without reference scores writes the columns empty
        if bad.any():
            row = int(bad.arg_true()[0]) + 1
            raise InputError(
                "reference log-prob is missing or not finite", file=path, row=row, field=column
            )
    return [pl.col(c).cast(pl.Float64) for c in REFERENCE_COLUMNS]


def has_reference(pairs: pl.DataFrame) -> bool:
    return all(c in pairs.columns for c in REFERENCE_COLUMNS)


def attach_scores(
    pairs: pl.DataFrame, scores_path: str | Path, *, as_prior: bool = False
) -> pl.DataFrame:
    """Join a ``scores`` artifact onto ``pairs`` by id.

    As reference scores (default) it fills ``ref_chosen_logps`` / ``ref_rejected_logps``
    (replacing any already there) and records the token counts the scores were made with in
    ``scored_chosen_tokens`` / ``scored_rejected_tokens``, so tokenisation can be checked. As a
    prior (``as_prior=True``, MI-DPO's DICE prior: the previous round's policy) it fills
    ``prior_chosen_logps`` / ``prior_rejected_logps``.

    Raises:
        InputError: the scores lack a pair id (named, with the scores file).
    """
    scores_path = Path(scores_path)
    scores = read_artifact(scores_path, SCORES)
    missing = pairs.join(scores.select("id"), on="id", how="anti")
    if missing.height:
        raise InputError(
            f"no scores for pair id {missing['id'][0]!r} ({missing.height} of {pairs.height} "
            "pairs missing): score the same pairs you train on",
            file=scores_path,
            field="id",
        )
    if as_prior:
        renamed = scores.select(
            "id",
            pl.col("ref_chosen_logps").alias("prior_chosen_logps"),
            pl.col("ref_rejected_logps").alias("prior_rejected_logps"),
            pl.col("chosen_tokens").alias("prior_chosen_tokens"),
            pl.col("rejected_tokens").alias("prior_rejected_tokens"),
        )
    else:
        pairs = pairs.drop([c for c in REFERENCE_COLUMNS if c in pairs.columns])
        renamed = scores.select(
            "id",
            *(pl.col(c) for c in REFERENCE_COLUMNS),
            pl.col("chosen_tokens").alias("scored_chosen_tokens"),
            pl.col("rejected_tokens").alias("scored_rejected_tokens"),
        )
    return pairs.join(renamed, on="id", how="left", maintain_order="left")


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
