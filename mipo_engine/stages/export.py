"""``mipo export``: generations (+ scores, judgments) -> a ``preferences`` artifact.

Steps, top to bottom: read and cross-check the inputs; run the filters (``filters.py``), each
counted in the manifest; assign splits by prompt; lay the pairs out in the requested format;
write Parquet plus manifest. The whole stage is column expressions over polars frames (no
Python loop over rows): about 2 s of CPU time for 100,000 pairs, most of it Parquet I/O.

Formats (the ``prompt`` / ``chosen`` / ``rejected`` columns; DESIGN.md section 2):

- ``trl``: standard (non-conversational) TRL preference data. ``prompt`` is the rendered
  training prompt, the generations' ``chosen_input`` (chat template already applied; both
  responses are trained under it, DESIGN.md section 3); ``chosen``/``rejected`` are the
  response strings. For TRL's ``DPOTrainer`` and ``mipo train`` as is.
- ``trl-conversational``: TRL's conversational preference data. ``prompt`` is
  ``[{"role": "user", "content": <user turn>}]`` with the user turn rebuilt exactly as
  ``mipo_engine.chat.build_messages(prompt, context)`` does (no context for random-prompt
  pairs); ``chosen``/``rejected`` are ``[{"role": "assistant", "content": <response>}]``.
  The trainer applies the model's own chat template.
- ``openrlhf``: OpenRLHF's chat layout with an implicit prompt: ``chosen`` and ``rejected``
  are complete conversations ``[user turn, assistant response]`` and there is no ``prompt``
  column. Train with OpenRLHF's ``--apply_chat_template --chosen_key chosen
  --rejected_key rejected`` and leave ``--prompt_key`` unset (its DPO dataset then takes the
  prompt as the conversation minus its last turn). TRL reads the same layout as "implicit
  prompt" preference data.

Every format also carries ``id``, ``prompt_id``, ``strategy`` and ``split``, and, when scores
are given, ``ref_chosen_logps`` / ``ref_rejected_logps`` (the names TRL's DPO collator reads).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator
from rich.console import Console

from mipo_engine import filters
from mipo_engine.artifacts.preferences import REFERENCE_COLUMNS, validate_preferences
from mipo_engine.artifacts.run import StageConfig, StageRun, check_output_path, derive_seed
from mipo_engine.artifacts.schemas import (
    GENERATIONS,
    JUDGMENTS,
    PREFERENCES,
    SCORES,
)
from mipo_engine.artifacts.store import read_artifact
from mipo_engine.commandline import Cli
from mipo_engine.errors import ConfigError, InputError, MipoError
from mipo_engine.judging.summary import aggregate_judgments
from mipo_engine.templates import load_template, placeholders

console = Console(stderr=True)

ExportFormat = Literal["trl", "trl-conversational", "openrlhf"]
FORMATS: tuple[str, ...] = ("trl", "trl-conversational", "openrlhf")
NearDuplicates = Literal["off", "normalized", "minhash"]

USER_TURN_TEMPLATE = "user_turn_with_context.txt"
_SPLIT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class EmptyExport(MipoError):
    """Every pair was removed: nothing worth writing."""

    exit_code = 1


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def _split_text(text: str) -> dict[str, float]:
    """``"train=0.95,test=0.05"`` -> ``{"train": 0.95, "test": 0.05}``; ``"train"`` -> all."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if len(parts) == 1 and "=" not in parts[0]:
        return {parts[0]: 1.0}
    parsed: dict[str, float] = {}
    for part in parts:
        name, sep, fraction = (piece.strip() for piece in part.partition("="))
        if not sep:
            raise ValueError(f"expected name=fraction, got {part!r} (e.g. train=0.95,test=0.05)")
        if name in parsed:
            raise ValueError(f"split {name!r} is given twice")
        try:
            parsed[name] = float(fraction)
        except ValueError:
            raise ValueError(f"fraction of split {name!r} is not a number: {fraction!r}") from None
    return parsed


def parse_splits(value: str | Mapping[str, float]) -> dict[str, float]:
    """Split names and fractions from ``"train=0.95,test=0.05"`` or a mapping.

    Names are letters, digits and underscores (they become Hub file names); fractions are in
    (0, 1] and sum to 1.
    """
    if isinstance(value, str):
        parsed = _split_text(value)
    else:
        parsed = {str(name): float(fraction) for name, fraction in value.items()}
    if not parsed:
        raise ValueError("no split given (e.g. train=0.95,test=0.05)")
    for name, fraction in parsed.items():
        if not _SPLIT_NAME.match(name):
            raise ValueError(
                f"split name {name!r} must start with a letter and hold only letters, digits "
                "and underscores"
            )
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction of split {name!r} must be in (0, 1], got {fraction}")
    total = sum(parsed.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total:g} ({value})")
    return parsed


class ExportConfig(StageConfig):
    """Settings of ``mipo export``; every filter is switched by its own option."""

    generations: Path = Field(description="Input generations .parquet (from mipo generate).")
    out: Annotated[Path, Cli("--out", "-o")] = Field(description="Output preferences .parquet.")
    scores: Path | None = Field(
        None,
        description="Scores .parquet (from mipo score): adds ref_chosen_logps/ref_rejected_logps and enables --min-pmi. Its ids must match the generations exactly.",
    )
    judgments: Path | None = Field(
        None, description="Judgments .parquet (from mipo judge): enables --min-judge-margin."
    )
    format: Annotated[ExportFormat, Cli("--format", param="file_format")] = Field(
        "trl",
        description="trl (rendered prompt + response strings), trl-conversational (message lists) or openrlhf (chosen/rejected full conversations, implicit prompt).",
    )
    split: Annotated[dict[str, float], Cli(text=True, default="train=1")] = Field(
        default_factory=lambda: {"train": 1.0},
        description="Splits and their fractions, e.g. train=0.95,test=0.05. Whole prompts are assigned to one split.",
    )
    seed: int = Field(0, description="Seed of the split assignment.")
    drop_empty: Annotated[bool, Cli("--drop-empty/--keep-empty")] = Field(
        True, description="Drop pairs with an empty or blank response."
    )
    drop_identical: Annotated[bool, Cli("--drop-identical/--keep-identical")] = Field(
        True,
        description="Drop pairs whose chosen and rejected are equal (edge whitespace ignored).",
    )
    drop_truncated: Annotated[bool, Cli("--drop-truncated/--keep-truncated")] = Field(
        False,
        description="Drop pairs with a response cut at max-new-tokens (finish reason length).",
    )
    min_tokens: int | None = Field(
        None, ge=0, description="Drop pairs with a response shorter than this (tokens)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Drop pairs with a response longer than this (tokens)."
    )
    drop_duplicates: Annotated[bool, Cli("--drop-duplicates/--keep-duplicates")] = Field(
        True,
        description="Drop exact repeats of (training prompt, chosen, rejected); the first is kept.",
    )
    near_duplicates: NearDuplicates = Field(
        "off",
        description="Near-duplicate pairs: off; normalized (same text after folding case, punctuation and spaces); minhash (estimated byte-8-gram Jaccard >= --near-duplicate-threshold).",
    )
    near_duplicate_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Jaccard similarity counted as a near-duplicate (minhash)."
    )
    max_length_ratio: float | None = Field(
        None,
        ge=1.0,
        description="Drop pairs whose longer response has more than this many times the "
        "other's tokens.",
    )
    max_copy: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Drop pairs whose chosen response repeats at least this share (0-1] of the "
        "user turn's word 4-grams (the copy shortcut).",
    )
    min_pmi: float | None = Field(
        None,
        description="Drop pairs with pmi_chosen below this (MI-margin filter; needs --scores).",
    )
    min_judge_margin: float | None = Field(
        None,
        description="Drop pairs whose judge score(chosen) - score(rejected) is below this "
        "(needs --judgments).",
    )

    @field_validator("split", mode="before")
    @classmethod
    def _parse_split(cls, value: Any) -> dict[str, float]:
        if not isinstance(value, (str, Mapping)):
            raise ValueError("expected name=fraction pairs, e.g. train=0.95,test=0.05")
        return parse_splits(value)

    @model_validator(mode="after")
    def _check_requirements(self) -> ExportConfig:
        if self.min_pmi is not None and self.scores is None:
            raise ConfigError(
                "--min-pmi needs --scores (pmi_chosen comes from mipo score)", key="min_pmi"
            )
        if self.min_judge_margin is not None and self.judgments is None:
            raise ConfigError(
                "--min-judge-margin needs --judgments (from mipo judge)", key="min_judge_margin"
            )
        if (
            self.min_tokens is not None
            and self.max_tokens is not None
            and self.min_tokens > self.max_tokens
        ):
            raise ConfigError(
                f"min_tokens ({self.min_tokens}) is larger than max_tokens ({self.max_tokens})",
                key="min_tokens",
            )
        return self


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _first_row(mask: pl.Series) -> int:
    return int(mask.arg_true()[0]) + 1


def join_scores(
    pairs: pl.DataFrame, scores: pl.DataFrame, *, generations_file: Path, scores_file: Path
) -> pl.DataFrame:
    """Add ``ref_chosen_logps``, ``ref_rejected_logps`` and ``pmi_chosen`` by pair id.

    Both files must hold exactly the same ids: a pair without a score, or a score without a
    pair, is an error naming the file, row and id (a score computed on other generations
    would silently pair reference log-probs with the wrong responses).
    """
    unscored = ~pairs["id"].is_in(scores["id"].implode())
    if unscored.any():
        row = _first_row(unscored)
        raise InputError(
            f"id {pairs['id'][row - 1]!r} has no row in the scores file {scores_file}; "
            "score these generations with mipo score",
            file=generations_file,
            row=row,
            field="id",
        )
    unknown = ~scores["id"].is_in(pairs["id"].implode())
    if unknown.any():
        row = _first_row(unknown)
        raise InputError(
            f"id {scores['id'][row - 1]!r} is not in the generations file {generations_file}; "
            "the scores belong to other generations",
            file=scores_file,
            row=row,
            field="id",
        )
    columns = scores.select("id", *REFERENCE_COLUMNS, "pmi_chosen")
    return pairs.join(columns, on="id", how="left", maintain_order="left")


def judge_margins(path: Path) -> pl.DataFrame:
    """Per pair: ``judge_margin`` = judge score of the chosen response - of the rejected one.

    Reads a ``judgments`` artifact from ``mipo judge`` run on the generations and aggregates
    it with the judge's own rule (``aggregate_judgments``: mean over rubric items, null item
    scores skipped). A pair missing either response's score gets a null margin, which
    the margin filter drops.
    """
    per_response = aggregate_judgments(read_artifact(path, JUDGMENTS))

    def role_scores(role: str) -> pl.DataFrame:
        rows = per_response.filter(pl.col("role") == role)
        return rows.select("id", pl.col("score").alias(role))

    return (
        role_scores("chosen")
        .join(role_scores("rejected"), on="id", how="full", coalesce=True)
        .select("id", (pl.col("chosen") - pl.col("rejected")).alias("judge_margin"))
    )


def read_inputs(config: ExportConfig) -> pl.DataFrame:
    """Generations, with reference log-probs / PMI and judge margins joined when given."""
    pairs = read_artifact(config.generations, GENERATIONS)
    if config.scores is not None:
        scores = read_artifact(config.scores, SCORES)
        pairs = join_scores(
            pairs, scores, generations_file=config.generations, scores_file=config.scores
        )
    if config.judgments is not None:
        margins = judge_margins(config.judgments)
        pairs = pairs.join(margins, on="id", how="left", maintain_order="left")
    return pairs


# --------------------------------------------------------------------------------------------
# Filters, splits, formats
# --------------------------------------------------------------------------------------------


def build_filters(config: ExportConfig) -> list[filters.PairFilter]:
    """The filters switched on in ``config``, in the order they run."""
    selected: list[filters.PairFilter] = []
    if config.drop_empty:
        selected.append(filters.non_empty())
    if config.drop_identical:
        selected.append(filters.not_identical())
    if config.drop_truncated:
        selected.append(filters.not_truncated())
    if config.min_tokens is not None or config.max_tokens is not None:
        selected.append(filters.token_bounds(config.min_tokens, config.max_tokens))
    if config.max_length_ratio is not None:
        selected.append(filters.length_ratio(config.max_length_ratio))
    if config.max_copy is not None:
        selected.append(filters.not_copying(config.max_copy))
    if config.min_pmi is not None:
        selected.append(
            filters.at_least(
                "pmi_chosen",
                config.min_pmi,
                name="min_pmi",
                description="pmi_chosen below the minimum (or missing)",
            )
        )
    if config.min_judge_margin is not None:
        selected.append(
            filters.at_least(
                "judge_margin",
                config.min_judge_margin,
                name="min_judge_margin",
                description="judge margin below the minimum (or a response not judged)",
            )
        )
    if config.drop_duplicates:
        selected.append(filters.exact_unique())
    if config.near_duplicates == "normalized":
        selected.append(filters.normalized_unique())
    elif config.near_duplicates == "minhash":
        selected.append(filters.minhash_unique(config.near_duplicate_threshold, seed=config.seed))
    return selected


def assign_splits(prompt_ids: pl.Series, splits: Mapping[str, float], seed: int) -> pl.Series:
    """The split of each row: whole prompts are dealt to splits, never divided.

    Distinct prompt ids are sorted, shuffled with a generator seeded from ``seed`` (numpy's
    legacy ``RandomState``, whose stream never changes), and cut at the cumulative fractions,
    so the result depends only on the set of prompt ids and the seed.
    """
    unique = prompt_ids.unique().sort()
    count = len(unique)
    names = list(splits)
    fractions = np.array([splits[name] for name in names])
    bounds = np.rint(np.cumsum(fractions) * count).astype(np.int64)
    bounds[-1] = count
    shuffled = np.random.RandomState(derive_seed(seed, "split")).permutation(count)
    split_of_slot = np.searchsorted(bounds, np.arange(count), side="right")
    split_index = np.empty(count, dtype=np.int64)
    split_index[shuffled] = split_of_slot
    lookup = pl.DataFrame(
        {
            "prompt_id": unique,
            "split": pl.Series(names, dtype=pl.String).gather(split_index),
        }
    )
    return prompt_ids.to_frame("prompt_id").join(
        lookup, on="prompt_id", how="left", maintain_order="left"
    )["split"]


def user_turn() -> pl.Expr:
    """The user turn of each pair's training prompt, as ``chat.user_turn`` builds it.

    ``chat.user_turn(prompt, context)`` fills ``prompts/user_turn_with_context.txt`` and
    strips the result, or returns the bare prompt when the context is missing or blank. This
    is the same text built column-wise: the template is cut at its placeholders and the
    pieces concatenated with the columns. Random-prompt pairs are trained without a context.
    """
    template = load_template(USER_TURN_TEMPLATE)
    unknown = placeholders(template) - {"prompt", "context"}
    if unknown:
        raise ValueError(f"{USER_TURN_TEMPLATE} uses unsupported placeholders {sorted(unknown)}")
    context = (
        pl.when(pl.col("strategy") == "random-prompt")
        .then(pl.lit(None, pl.String))
        .otherwise(pl.col("context"))
        .str.strip_chars()
    )
    columns = {"prompt": pl.col("prompt"), "context": context}
    # re.split with one capturing group alternates literal text and placeholder names.
    pieces = re.split(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", template)
    parts = [columns[piece] if index % 2 else pl.lit(piece) for index, piece in enumerate(pieces)]
    with_context = pl.concat_str(parts).str.strip_chars()
    no_context = context.is_null() | (context.str.len_bytes() == 0)
    return pl.when(no_context).then(pl.col("prompt")).otherwise(with_context)


def _message(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(pl.lit(role).alias("role"), content.alias("content"))


def format_columns(export_format: str) -> list[pl.Expr]:
    """Expressions for the text columns of ``export_format`` over a generations frame."""
    if export_format == "trl":
        return [
            pl.col("chosen_input").alias("prompt"),
            pl.col("chosen"),
            pl.col("rejected"),
        ]
    user = _message("user", user_turn())
    if export_format == "trl-conversational":
        return [
            pl.concat_list([user]).alias("prompt"),
            pl.concat_list([_message("assistant", pl.col("chosen"))]).alias("chosen"),
            pl.concat_list([_message("assistant", pl.col("rejected"))]).alias("rejected"),
        ]
    if export_format == "openrlhf":
        return [
            pl.concat_list([user, _message("assistant", pl.col("chosen"))]).alias("chosen"),
            pl.concat_list([user, _message("assistant", pl.col("rejected"))]).alias("rejected"),
        ]
    raise ValueError(f"unknown format {export_format!r}; choose one of {', '.join(FORMATS)}")


def to_preferences(pairs: pl.DataFrame, export_format: str, split_names: list[str]) -> pl.DataFrame:
    """Lay filtered, split pairs out as a preferences frame, ordered by split."""
    reference = [pl.col(name) for name in REFERENCE_COLUMNS if name in pairs.columns]
    order = {name: index for index, name in enumerate(split_names)}
    return (
        pairs.select(
            "id",
            "prompt_id",
            "strategy",
            "split",
            *format_columns(export_format),
            *reference,
        )
        .with_columns(pl.col("split").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
        .sort("_order", maintain_order=True)
        .drop("_order")
    )


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _split_stats(frame: pl.DataFrame, split_names: list[str]) -> dict[str, dict[str, int]]:
    counts = frame.group_by("split").agg(
        pl.len().alias("pairs"), pl.col("prompt_id").n_unique().alias("prompts")
    )
    by_name = {row["split"]: row for row in counts.to_dicts()}
    return {
        name: {
            "pairs": int(by_name.get(name, {}).get("pairs", 0)),
            "prompts": int(by_name.get(name, {}).get("prompts", 0)),
        }
        for name in split_names
    }


def run_export(config: ExportConfig) -> Path:
    """Filter, split and format ``config.generations`` into ``config.out``; return the path."""
    output = check_output_path(config.out, config.generations, config.scores, config.judgments)
    pairs = read_inputs(config)
    input_pairs = pairs.height
    kept, counts = filters.apply_filters(pairs, build_filters(config))
    if kept.height == 0:
        removed = ", ".join(f"{c['filter']}: {c['removed']}" for c in counts)
        raise EmptyExport(
            f"every one of the {input_pairs} pairs was removed by the filters ({removed}); "
            "relax the filter options"
        )
    split_names = list(config.split)
    kept = kept.with_columns(assign_splits(kept["prompt_id"], config.split, config.seed))
    preferences = validate_preferences(
        to_preferences(kept, config.format, split_names), file=output
    )
    split_stats = _split_stats(preferences, split_names)
    for name, stats in split_stats.items():
        if stats["pairs"] == 0:
            console.print(
                f"[yellow]warning:[/] split {name!r} is empty ({kept['prompt_id'].n_unique()} "
                "prompts are too few for its fraction)"
            )
    inputs = {
        "generations": config.generations,
        "scores": config.scores,
        "judgments": config.judgments,
    }
    run = StageRun("export", output, config.model_dump(mode="json"), inputs)
    stats = {
        "format": config.format,
        "input_pairs": input_pairs,
        "output_pairs": preferences.height,
        "filters": counts,
        "splits": split_stats,
        "reference_logps": config.scores is not None,
    }
    return run.write(preferences, PREFERENCES, seed=config.seed, stats=stats)
