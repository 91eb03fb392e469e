"""Pair filters for ``mipo export``: each filter is a keep-mask over a generations frame.

Filters run in a fixed order (``apply_filters``); each sees only the pairs the earlier ones
kept, and the number it removes is recorded in the preferences manifest and dataset card.
Everything is a polars expression or a vectorised numpy pass, never a Python loop over rows:
the simple filters cost far less than reading the data; the near-duplicate ones about as
much.

Near-duplicates come in two strengths:

- ``normalized``: two pairs are duplicates when their texts agree after Unicode NFKC
  normalisation, lower-casing, and replacing every run of non-alphanumeric characters
  (punctuation, whitespace) by one space. Exact, cheap, and the right first pass.
- ``minhash``: two pairs for the same (normalised) prompt and context are duplicates when
  the Jaccard similarity of the byte 8-gram sets of their normalised responses is at least a
  threshold, estimated with MinHash and found with banded locality-sensitive hashing
  (Broder 1997; Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3). Only
  the responses are compared: a long shared prompt would otherwise make every two samples
  for it look alike. See ``minhash_keep_mask``.

In both, the first pair (in generations order) of a duplicate group is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

KeepMask = Callable[[pl.DataFrame], pl.Series]


@dataclass(frozen=True)
class PairFilter:
    """One filter: a name for the manifest, the setting it ran with, and its keep-mask."""

    name: str
    setting: Any
    keep: KeepMask
    description: str


def apply_filters(
    frame: pl.DataFrame, filters: list[PairFilter]
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Run ``filters`` in order; return the kept rows and one count record per filter."""
    counts = []
    for pair_filter in filters:
        before = frame.height
        frame = frame.filter(pair_filter.keep(frame))
        counts.append(
            {
                "filter": pair_filter.name,
                "setting": pair_filter.setting,
                "removed": before - frame.height,
                "description": pair_filter.description,
            }
        )
    return frame, counts


def _mask(frame: pl.DataFrame, expression: pl.Expr) -> pl.Series:
    """Evaluate a boolean expression over ``frame``; a null (unknown) means "drop"."""
    return frame.select(expression.fill_null(False).alias("keep"))["keep"]


# --------------------------------------------------------------------------------------------
# Simple filters
# --------------------------------------------------------------------------------------------


def non_empty() -> PairFilter:
    """Drop pairs with an empty or whitespace-only chosen or rejected response."""

    def keep(frame: pl.DataFrame) -> pl.Series:
        return _mask(
            frame,
            (pl.col("chosen").str.strip_chars().str.len_bytes() > 0)
            & (pl.col("rejected").str.strip_chars().str.len_bytes() > 0),
        )

    return PairFilter("empty", True, keep, "chosen or rejected is empty or whitespace")


def not_identical() -> PairFilter:
    """Drop pairs whose responses are equal once leading/trailing whitespace is removed.

    Such a pair carries no preference: every loss in the family sees D_c - D_r = 0.
    """

    def keep(frame: pl.DataFrame) -> pl.Series:
        return _mask(
            frame, pl.col("chosen").str.strip_chars() != pl.col("rejected").str.strip_chars()
        )

    return PairFilter("identical", True, keep, "chosen equals rejected (ignoring edge whitespace)")


def not_truncated() -> PairFilter:
    """Drop pairs where either response stopped at the token limit (finish reason ``length``)."""

    def keep(frame: pl.DataFrame) -> pl.Series:
        return _mask(
            frame,
            (pl.col("chosen_finish_reason") != "length")
            & (pl.col("rejected_finish_reason") != "length"),
        )

    return PairFilter("truncated", True, keep, "a response hit the max-new-tokens limit")


def token_bounds(min_tokens: int | None, max_tokens: int | None) -> PairFilter:
    """Keep pairs whose two responses both have ``min_tokens <= tokens <= max_tokens``.

    Token counts are the generations' ``chosen_tokens`` / ``rejected_tokens`` (the sampling
    model's tokenizer). A bound left as None is not checked.
    """
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise ValueError(f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens})")
    lower = 0 if min_tokens is None else min_tokens
    upper = np.iinfo(np.int64).max if max_tokens is None else max_tokens

    def keep(frame: pl.DataFrame) -> pl.Series:
        return _mask(
            frame,
            pl.col("chosen_tokens").is_between(lower, upper)
            & pl.col("rejected_tokens").is_between(lower, upper),
        )

    setting = {"min_tokens": min_tokens, "max_tokens": max_tokens}
    return PairFilter("length", setting, keep, "a response is outside the token bounds")


def length_ratio(max_ratio: float) -> PairFilter:
    """Keep pairs whose longer response has at most ``max_ratio`` times the other's tokens.

    A pair whose sides differ mostly in length teaches length rather than the context: DPO
    on such pairs lengthens (or shortens) every answer. Token counts of 0 count as 1.
    """
    if max_ratio < 1.0:
        raise ValueError(f"max_length_ratio must be >= 1, got {max_ratio}")

    def keep(frame: pl.DataFrame) -> pl.Series:
        chosen = pl.max_horizontal(pl.col("chosen_tokens"), pl.lit(1)).cast(pl.Float64)
        rejected = pl.max_horizontal(pl.col("rejected_tokens"), pl.lit(1)).cast(pl.Float64)
        ratio = pl.max_horizontal(chosen, rejected) / pl.min_horizontal(chosen, rejected)
        return _mask(frame, ratio <= max_ratio)

    return PairFilter(
        "length_ratio", max_ratio, keep, "one response is more than N times as long as the other"
    )


def not_copying(max_overlap: float) -> PairFilter:
    """Drop pairs whose chosen response repeats the user's message (the copy shortcut).

    ``copy_overlap`` (``evaluation.copying``) of the chosen response against the rendered
    user turn (``chat.user_turn(prompt, context)``) must stay below ``max_overlap``. A chosen
    response that restates the requirements is likely *because* the requirements were in
    its input, so training on it raises the pointwise MI without serving the user.
    """
    from mipo_engine.chat import user_turn
    from mipo_engine.evaluation.copying import copy_overlap

    def keep(frame: pl.DataFrame) -> pl.Series:
        values = [
            copy_overlap(chosen, user_turn(prompt, context)) < max_overlap
            for chosen, prompt, context in zip(
                frame["chosen"].to_list(),
                frame["prompt"].to_list(),
                frame["context"].to_list(),
                strict=True,
            )
        ]
        return pl.Series("keep", values, dtype=pl.Boolean)

    return PairFilter("copy", max_overlap, keep, "the chosen response repeats the user's message")


def at_least(column: str, threshold: float, *, name: str, description: str) -> PairFilter:
    """Keep pairs with ``column >= threshold``; a missing (null) value is dropped."""

    def keep(frame: pl.DataFrame) -> pl.Series:
        return _mask(frame, pl.col(column) >= threshold)

    return PairFilter(name, threshold, keep, description)


# --------------------------------------------------------------------------------------------
# Duplicates
# --------------------------------------------------------------------------------------------

EXACT_KEY = ("chosen_input", "chosen", "rejected")
"""A pair's identity for exact duplicates: the training prompt and the two responses."""


def exact_unique() -> PairFilter:
    """Drop repeats of the same (training prompt, chosen, rejected); the first is kept."""

    def keep(frame: pl.DataFrame) -> pl.Series:
        return _mask(frame, pl.struct(*EXACT_KEY).is_first_distinct())

    return PairFilter("exact_duplicate", True, keep, "same training prompt and responses")


def normalize_text(text: pl.Expr) -> pl.Expr:
    """NFKC, lower case, every run of non-alphanumeric characters -> one space, trimmed.

    The definition of "normalised" text; ``normalize_texts`` computes the same strings for a
    column about twice as fast.
    """
    return _fold(text.fill_null("").str.normalize("NFKC"))


def _fold(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars(" ")


def normalize_texts(texts: pl.Series) -> pl.Series:
    """``normalize_text`` over a column, skipping NFKC (the costly step) on ASCII-only texts,
    which it leaves unchanged."""
    frame = pl.DataFrame({"text": texts.cast(pl.String).fill_null("")}).with_row_index()
    ascii_only = pl.col("text").str.len_bytes() == pl.col("text").str.len_chars()
    other = frame.filter(~ascii_only)
    if other.height:
        other = other.with_columns(pl.col("text").str.normalize("NFKC"))
        frame = pl.concat([frame.filter(ascii_only), other]).sort("index")
    return frame.select(_fold(pl.col("text")))["text"].alias(texts.name)


def _joined(frame: pl.DataFrame, *names: str) -> pl.Series:
    columns = {name: normalize_texts(frame[name]) for name in names}
    return pl.DataFrame(columns).select(pl.concat_str(list(names), separator="\n"))[names[0]]


def pair_texts(frame: pl.DataFrame) -> pl.Series:
    """The normalised text of each pair: user prompt, context, chosen, rejected.

    The user prompt and context are used rather than the rendered ``chosen_input`` so chat
    template boilerplate shared by every pair does not enter the comparison.
    """
    return _joined(frame, "prompt", "context", "chosen", "rejected")


def prompt_texts(frame: pl.DataFrame) -> pl.Series:
    """The normalised user prompt and context of each pair."""
    return _joined(frame, "prompt", "context")


def response_texts(frame: pl.DataFrame) -> pl.Series:
    """The normalised chosen and rejected responses of each pair."""
    return _joined(frame, "chosen", "rejected")


def normalized_unique() -> PairFilter:
    """Drop pairs whose normalised text (``pair_texts``) repeats an earlier pair's."""

    def keep(frame: pl.DataFrame) -> pl.Series:
        return pair_texts(frame).is_first_distinct()

    return PairFilter(
        "near_duplicate", "normalized", keep, "same text after normalising case and punctuation"
    )


def minhash_unique(threshold: float, *, num_perm: int = 32, seed: int = 0) -> PairFilter:
    """Drop pairs whose responses' estimated byte-8-gram Jaccard similarity to those of an
    earlier pair for the same prompt and context is at least ``threshold``
    (see ``minhash_keep_mask``)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")

    def keep(frame: pl.DataFrame) -> pl.Series:
        mask = minhash_keep_mask(
            response_texts(frame),
            groups=prompt_texts(frame).hash(seed=seed).to_numpy(),
            threshold=threshold,
            num_perm=num_perm,
            seed=seed,
        )
        return pl.Series("keep", mask)

    setting = {"method": "minhash", "threshold": threshold, "num_perm": num_perm}
    return PairFilter("near_duplicate", setting, keep, "estimated Jaccard >= threshold")


# --------------------------------------------------------------------------------------------
# MinHash, vectorised
# --------------------------------------------------------------------------------------------

SHINGLE_BYTES = 8
SAMPLE_RATE = 8  # keep 1 shingle in 8 (the same ones in every text) before MinHash
_CHUNK_BYTES = 1 << 22  # texts are hashed in chunks of about 4 MB to bound memory
_U64_MAX = np.uint64(np.iinfo(np.uint64).max)
_SAMPLE_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so x -> x * m is a bijection


def _mix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, in place: a bijection on uint64 with good avalanche."""
    values ^= values >> np.uint64(30)
    values *= np.uint64(0xBF58476D1CE4E5B9)
    values ^= values >> np.uint64(27)
    values *= np.uint64(0x94D049BB133111EB)
    values ^= values >> np.uint64(31)
    return values


def _text_buffer(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of all texts back to back (plus padding) and their int64 offsets."""
    array = texts.to_arrow().cast(pa.large_string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)
    offsets = offsets[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8) if array.buffers()[2] else None
    data = np.zeros(0, np.uint8) if data is None else data
    # Padding lets the last 8-gram window of the buffer be read without going past its end.
    data = np.concatenate([data[: offsets[-1]], np.zeros(SHINGLE_BYTES, np.uint8)])
    return data, offsets


def _chunk_end(offsets: np.ndarray, first: int) -> int:
    """End (exclusive) of a run of texts from ``first`` holding about ``_CHUNK_BYTES``."""
    last = int(np.searchsorted(offsets, offsets[first] + _CHUNK_BYTES, side="right")) - 1
    return min(max(last, first + 1), len(offsets) - 1)


def _sampled_shingles(
    data: np.ndarray, offsets: np.ndarray, first: int, last: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the byte 8-grams of texts ``first..last-1`` kept by the sample, and the text
    index of each (ascending). A text shorter than 8 bytes has no 8-gram.

    The sample keeps an 8-gram when the top 3 bits of its value times an odd constant (mod
    2^64, multiply-shift hashing) are zero: 1 in 8, and the same 8-grams in every text.
    """
    start, end = int(offsets[first]), int(offsets[last])
    # Every byte position read as the little-endian uint64 of the 8 bytes there (no copy).
    windows = np.ndarray(
        (max(end - start, 0),), dtype="<u8", buffer=data, offset=start, strides=(1,)
    )
    scrambled = windows * _SAMPLE_MULTIPLIER
    position = np.flatnonzero(scrambled < np.uint64((1 << 64) // SAMPLE_RATE)) + start
    text_of = np.searchsorted(offsets, position, side="right") - 1
    inside = position <= offsets[text_of + 1] - SHINGLE_BYTES  # ends within its own text
    position, text_of = position[inside], text_of[inside]
    return _mix64(windows[position - start].astype(np.uint64)), text_of


def minhash_signatures(texts: pl.Series, *, num_perm: int = 32, seed: int = 0) -> np.ndarray:
    """MinHash signatures, shape (len(texts), num_perm), of each text's byte 8-gram set.

    Shingles are first thinned by consistent sampling (a shingle is kept in every text or in
    none; ``_sampled_shingles``): the Jaccard similarity of the samples estimates that of the
    full sets, at an eighth of the work. The j-th signature entry is the minimum over the
    text's sampled shingles of ``a_j * h + b_j`` (mod 2^64), a multiply-add family over
    already-mixed hashes. Texts left with no sampled shingle (very short ones) get the hash of
    their whole text in every entry, so they only ever match an identical text.
    """
    data, offsets = _text_buffer(texts)
    count = len(texts)
    rng = np.random.RandomState(seed)  # legacy generator: its stream is frozen across numpy
    odd = rng.randint(0, 2**62, size=num_perm, dtype=np.uint64)
    multipliers = odd * np.uint64(2) + np.uint64(1)
    increments = rng.randint(0, 2**62, size=num_perm, dtype=np.uint64)
    signatures = np.full((count, num_perm), _U64_MAX, dtype=np.uint64)
    has_shingle = np.zeros(count, dtype=bool)
    first = 0
    while first < count:
        last = _chunk_end(offsets, first)
        hashes, text_of = _sampled_shingles(data, offsets, first, last)
        if hashes.size:
            starts = np.flatnonzero(np.diff(text_of, prepend=-1))  # first shingle of each text
            present = text_of[starts]
            has_shingle[present] = True
            for j in range(num_perm):
                permuted = hashes * multipliers[j] + increments[j]
                signatures[present, j] = np.minimum.reduceat(permuted, starts)
        first = last
    if not has_shingle.all():
        whole = texts.hash(seed=seed).to_numpy().astype(np.uint64)
        signatures[~has_shingle] = whole[~has_shingle, None]
    return signatures


def lsh_bands(threshold: float, num_perm: int, *, recall: float = 0.97) -> tuple[int, int]:
    """(bands, rows per band) with bands * rows = num_perm for banded LSH.

    A pair with Jaccard J shares at least one band with probability 1 - (1 - J^r)^b. Rows r
    are as many as possible (fewer chance candidates) while a pair exactly at ``threshold``
    is still a candidate with probability >= ``recall``.
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


def minhash_keep_mask(
    texts: pl.Series,
    *,
    threshold: float,
    groups: np.ndarray | None = None,
    num_perm: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """Boolean keep-mask: False for a text estimated >= ``threshold`` similar to an earlier one.

    ``groups`` (uint64, one per text) restricts comparisons to texts of the same group.
    Candidates come from banded LSH (``lsh_bands``): within each band, texts of one group
    with equal band values form a bucket, and each is compared with the earliest text of its
    bucket. The
    estimated Jaccard is the fraction of equal signature entries (standard error about
    sqrt(J(1-J)/num_perm)). A text estimated similar to the earliest member of any bucket it
    shares is dropped; the earliest member itself is always kept.
    """
    count = len(texts)
    keep = np.ones(count, dtype=bool)
    if count < 2:
        return keep
    signatures = minhash_signatures(texts, num_perm=num_perm, seed=seed)
    group_key = np.zeros(count, np.uint64) if groups is None else groups.astype(np.uint64)
    bands, rows = lsh_bands(threshold, num_perm)
    needed = math.ceil(threshold * num_perm - 1e-9)  # equal entries for estimate >= threshold
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        key = _mix64(block[:, 0] ^ group_key)
        for column in range(1, rows):
            key = _mix64(key ^ block[:, column])
        # np.unique returns each bucket's first occurrence, i.e. its earliest text.
        _, first_index, bucket = np.unique(key, return_index=True, return_inverse=True)
        leader = first_index[bucket]
        candidate = np.flatnonzero(leader != np.arange(count))
        if candidate.size == 0:
            continue
        equal = (signatures[candidate] == signatures[leader[candidate]]).sum(axis=1)
        keep[candidate[equal >= needed]] = False
    return keep
