"""Pair tables: ``generations`` and ``preferences`` artifacts read as one layout (torch-free).

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
which artifact it came from; ``attach_scores`` joins a ``scores`` artifact onto it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine.artifacts.location import as_location
from mipo_engine.artifacts.preferences import REFERENCE_COLUMNS
from mipo_engine.artifacts.schemas import (
    GENERATIONS,
    SCORES,
    ArtifactSchema,
    Column,
    validate_frame,
)
from mipo_engine.artifacts.store import read_artifact, read_parquet
from mipo_engine.chat import Message
from mipo_engine.errors import InputError

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
    path = as_location(path)
    frame = read_parquet(path)
    if "chosen_input" in frame.columns:
        return _pairs_from_generations(validate_frame(frame, GENERATIONS, file=path))
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
