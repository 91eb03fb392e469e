"""One schema per artifact: column names, types and nullability (DESIGN.md section 2).

``validate_frame`` is the single gate every artifact passes through when it is read or
written; errors name the file, the 1-based row and the column.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mipo_engine.errors import InputError

TASKS = ("general", "personalization", "math", "mcq")
STRATEGIES = ("missing-context", "random-context", "random-prompt", "prompt")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    nullable: bool = False
    doc: str = ""
    # A column added to the schema after artifacts of it were already written: files that
    # lack it are read with the column all null (it must then be nullable).
    added_later: bool = False

    def __post_init__(self) -> None:
        if self.added_later and not self.nullable:
            raise ValueError(f"column {self.name!r}: a column added later must be nullable")


@dataclass(frozen=True)
class ArtifactSchema:
    name: str
    columns: tuple[Column, ...]
    key: str = "id"

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def polars_schema(self) -> dict[str, pl.DataType]:
        return {column.name: column.dtype for column in self.columns}

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.polars_schema())


_STR = pl.String()
_I64 = pl.Int64()
_F64 = pl.Float64()
_STR_LIST = pl.List(pl.String())
_BOOL = pl.Boolean()

PROMPTS = ArtifactSchema(
    "prompts",
    (
        Column("id", _STR, doc="unique row id"),
        Column("prompt", _STR, doc="the user request x"),
        Column("context", _STR, True, doc="the user context c as text"),
        Column("context_items", _STR_LIST, True, doc="the preference items making up c"),
        Column("context_group", _STR, True, doc="pool of contexts eligible for this prompt"),
        Column("task", _STR, doc="general | personalization | math | mcq"),
        Column("answer", _STR, True, doc="gold answer, evaluation only"),
        Column("choices", _STR_LIST, True, doc="answer options for mcq"),
        Column("source", _STR, doc="where the row came from"),
    ),
)

GENERATIONS = ArtifactSchema(
    "generations",
    (
        Column("id", _STR, doc="pair id"),
        Column("prompt_id", _STR),
        Column("prompt", _STR),
        Column("context", _STR, True),
        Column("chosen", _STR),
        Column("rejected", _STR),
        Column("strategy", _STR),
        Column("negative_source", _STR, doc="context or prompt id used for the rejected sample"),
        Column("chosen_input", _STR, doc="exact rendered conditioning of the chosen sample"),
        Column("rejected_input", _STR, doc="exact rendered conditioning of the rejected sample"),
        Column("model", _STR),
        Column("seed", _I64),
        Column("chosen_finish_reason", _STR),
        Column("rejected_finish_reason", _STR),
        Column("chosen_tokens", _I64),
        Column("rejected_tokens", _I64),
    ),
)

SCORES = ArtifactSchema(
    "scores",
    (
        Column("id", _STR),
        Column("ref_chosen_logps", _F64),
        Column("ref_rejected_logps", _F64),
        Column("chosen_tokens", _I64),
        Column("rejected_tokens", _I64),
        Column("pmi_chosen", _F64, True),
    ),
)

CONTEXTS = ArtifactSchema(
    "contexts",
    (
        Column("id", pl.String(), doc="'<source_id>:<key>'"),
        Column("source_id", pl.String(), doc="the preference row the item was inferred from"),
        Column("user_id", pl.String(), True, doc="the user who made the choice, if known"),
        Column("key", pl.String(), doc="snake_case label of the preference"),
        Column("item", pl.String(), doc="the preference, at most two sentences"),
        Column("context", pl.String(), doc="all items of the source row: the user context"),
        Column("prompt", pl.String(), doc="the source row's prompt"),
        Column("context_group", pl.String(), True, doc="prompt-tied pool (system-to-user)"),
        Column("source", pl.String(), doc="input file name"),
        Column("attempts", pl.Int64(), doc="model calls the row needed"),
    ),
)


RUBRIC_FIELDS = (
    "criteria",
    "score1_description",
    "score2_description",
    "score3_description",
    "score4_description",
    "score5_description",
)
"""Rubric layout used throughout the project (Prometheus absolute grading: criteria + 5 levels)."""

RUBRICS = ArtifactSchema(
    "rubrics",
    (
        Column("id", pl.String(), doc="rubric_id(item): stable id from the item text"),
        Column("item", pl.String(), doc="the preference item the rubric grades"),
        *(Column(field, pl.String()) for field in RUBRIC_FIELDS),
        Column("checker", pl.String(), True, doc="constraint type of a verifiable item"),
        Column("origin", pl.String(), doc="'builtin:verifiable' or 'generated'"),
        Column("attempts", pl.Int64(), doc="model calls (0 for built-in rubrics)"),
    ),
)


RESPONSES = ArtifactSchema(
    "responses",
    (
        Column("id", pl.String(), doc="response id (matches the reference's id)"),
        Column("prompt", pl.String(), doc="the user request x"),
        Column("context", pl.String(), True, doc="the user context c as text"),
        Column("context_items", pl.List(pl.String()), True, doc="the items making up c"),
        Column("response", pl.String(), doc="the response to judge"),
        Column("task", pl.String(), True, doc="win rates are also reported per task"),
    ),
)


JUDGMENTS = ArtifactSchema(
    "judgments",
    (
        Column("id", pl.String(), doc="'<role>:<response_id>:<item_index>'"),
        Column("response_id", pl.String(), doc="generation pair id or responses id"),
        Column("role", pl.String(), doc="chosen | rejected | response | reference"),
        Column("task", pl.String(), True),
        Column("mode", pl.String(), doc="rubric | rlaif | verify"),
        Column("item_index", pl.Int64(), doc="position of the item in the response's items"),
        Column("item", pl.String(), doc="the preference item (rlaif: the whole context)"),
        Column("rubric_id", pl.String(), True),
        Column("checker", pl.String(), True, doc="constraint type of a verifiable item"),
        Column("passed", pl.Boolean(), True, doc="the checker's verdict (verifiable items)"),
        Column("score", pl.Float64(), True, doc="1-5; null when no usable score"),
        Column("raw", pl.String(), True, doc="the judge's last reply"),
        Column("error", pl.String(), True, doc="why the score is null"),
        Column("attempts", pl.Int64(), doc="judge calls made for this item"),
    ),
)


PREFERENCES = ArtifactSchema(
    "preferences",
    (
        Column("id", pl.String(), doc="pair id (the generations id)"),
        Column("prompt_id", pl.String(), doc="prompt row the pair was generated for"),
        Column("strategy", pl.String(), doc="negative strategy that made the pair"),
        Column("split", pl.String(), doc="train / test / ... (all pairs of a prompt share one)"),
    ),
)
"""The format-independent columns of a ``preferences`` artifact.

The text columns' types depend on the format (strings or message lists), so they are
checked by ``validate_preferences`` rather than by this dtype-strict schema.
"""


EVAL = ArtifactSchema(
    "eval",
    (
        Column("id", _STR, doc="response id: the item id, plus '#k' for sample k > 0"),
        Column("item_id", _STR, doc="id of the evaluated prompt row"),
        Column("sample", _I64, doc="sample index for the item (0 unless --samples > 1)"),
        Column("task", _STR, doc="eval task: gsm8k, svamp, mmlu, arc_easy, ..."),
        Column("prompt", _STR, doc="the question or user request"),
        Column("context", _STR, True, doc="the user context (personalization)"),
        Column("context_items", pl.List(_STR), True, doc="the context's preference items"),
        Column("input", _STR, doc="exact text the model was conditioned on"),
        Column("response", _STR, doc="the model's output"),
        Column("finish_reason", _STR, True, doc="stop or length; null for scored --responses"),
        Column("response_tokens", _I64, True, doc="null for scored --responses"),
        Column("seed", _I64, doc="sampling seed of this response"),
        Column("answer", _STR, True, doc="gold answer (math, mcq)"),
        Column("prediction", _STR, True, doc="extracted answer (math, mcq)"),
        Column("correct", _BOOL, True, doc="prediction equals the gold answer"),
        Column(
            "letter_logprobs",
            pl.List(_F64),
            True,
            doc="next-token log-probs of ' A', ' B', ... after 'The answer is:' (mcq)",
        ),
        Column("entropy", _F64, True, doc="entropy (nats) over the answer letters (mcq)"),
        Column("verifiable_items", _I64, True, doc="checkable items in the context"),
        Column("items_met", _I64, True, doc="checkable items the response satisfies"),
        Column("logp_with_context", _F64, True, doc="log pi_base(y | x, c)"),
        Column("logp_without_context", _F64, True, doc="log pi_base(y | x)"),
        Column("pmi", _F64, True, doc="log pi_base(y | x, c) - log pi_base(y | x)"),
        Column(
            "copy_overlap",
            _F64,
            True,
            doc="share of the user turn's word 4-grams the response repeats (personalization)",
            added_later=True,
        ),
        Column("judge_score", _F64, True, doc="aggregated rubric score of the response"),
        Column("reference_score", _F64, True, doc="same for the reference response"),
        Column("win", _F64, True, doc="1 if judge_score >= reference_score (ties win)"),
        Column(
            "instruction_ids",
            pl.List(_STR),
            True,
            doc="IFEval instruction ids (ifeval)",
            added_later=True,
        ),
        Column(
            "instruction_kwargs",
            _STR,
            True,
            doc="their kwargs as a JSON list (ifeval)",
            added_later=True,
        ),
        Column(
            "strict_followed",
            pl.List(_BOOL),
            True,
            doc="per instruction: the response as is passes its verifier (ifeval)",
            added_later=True,
        ),
        Column(
            "loose_followed",
            pl.List(_BOOL),
            True,
            doc="per instruction: the response or a loose variant passes (ifeval)",
            added_later=True,
        ),
    ),
)

SCHEMAS: dict[str, ArtifactSchema] = {
    schema.name: schema
    for schema in (
        PROMPTS,
        GENERATIONS,
        SCORES,
        CONTEXTS,
        RUBRICS,
        RESPONSES,
        JUDGMENTS,
        PREFERENCES,
        EVAL,
    )
}
"""Every artifact the stages read and write, by name."""


def get_schema(name: str) -> ArtifactSchema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ValueError(f"unknown artifact {name!r}; known: {sorted(SCHEMAS)}") from None


def first_repeat(ids: Iterable[Hashable]) -> tuple[int, int] | None:
    """The first id that occurs twice: its 1-based position and that of its first occurrence.

    None when every id is distinct. Readers of records that do not yet form a frame use it
    (``validate_frame`` checks a frame's key column itself).
    """
    seen: dict[Hashable, int] = {}
    for position, value in enumerate(ids, start=1):
        first = seen.setdefault(value, position)
        if first != position:
            return position, first
    return None


def _first_bad_row(mask: pl.Series) -> int:
    """1-based index of the first True in a boolean mask."""
    return int(mask.arg_true()[0]) + 1


def validate_frame(
    frame: pl.DataFrame,
    schema: ArtifactSchema,
    *,
    file: str | Path | None = None,
    allow_extra: bool = True,
) -> pl.DataFrame:
    """Check ``frame`` against ``schema``; return it cast and ordered (extra columns last).

    Raises InputError naming the file, row and column on the first problem found: a missing
    column, a value of the wrong type, a null in a required column, an empty key or a
    duplicated key.
    """
    backfill = [c for c in schema.columns if c.added_later and c.name not in frame.columns]
    if backfill:
        frame = frame.with_columns(pl.lit(None, dtype=c.dtype).alias(c.name) for c in backfill)
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise InputError(
            f"missing column(s) {missing} for a '{schema.name}' artifact (found {frame.columns})",
            file=file,
            field=missing[0],
        )
    casts = []
    for column in schema.columns:
        series = frame[column.name]
        if series.dtype == column.dtype:
            continue
        if series.dtype == pl.Null:
            casts.append(pl.col(column.name).cast(column.dtype))
            continue
        try:
            cast = series.cast(column.dtype, strict=True)
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
            try:
                cast = series.cast(column.dtype, strict=False)
                bad = cast.is_null() & series.is_not_null()
                row = _first_bad_row(bad) if bad.any() else None
            except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError):
                row = None  # no value of this type converts (e.g. text where a list belongs)
            raise InputError(
                f"expected {column.dtype}, got {series.dtype}",
                file=file,
                row=row,
                field=column.name,
            ) from None
        if column.dtype in (_I64, _F64) and series.dtype == pl.String():
            raise InputError(
                f"expected a number, got text ({series.dtype})", file=file, field=column.name
            )
        frame = frame.with_columns(cast.alias(column.name))
    if casts:
        frame = frame.with_columns(casts)
    for column in schema.columns:
        series = frame[column.name]
        if not column.nullable and series.null_count():
            raise InputError(
                "value is missing (null)",
                file=file,
                row=_first_bad_row(series.is_null()),
                field=column.name,
            )
        if column.dtype == _F64:
            non_finite = series.is_not_null() & ~series.is_finite()
            if non_finite.any():
                raise InputError(
                    "value is not a finite number (NaN or inf)",
                    file=file,
                    row=_first_bad_row(non_finite.fill_null(False)),
                    field=column.name,
                )
    key = frame[schema.key]
    empty = key.str.strip_chars().str.len_chars() == 0
    if empty.any():
        raise InputError("empty id", file=file, row=_first_bad_row(empty), field=schema.key)
    repeated = ~key.is_first_distinct()
    if repeated.any():
        row = _first_bad_row(repeated)
        first = _first_bad_row(key == key[row - 1])
        raise InputError(
            f"duplicate id {key[row - 1]!r} (first at row {first})",
            file=file,
            row=row,
            field=schema.key,
        )
    extra = [name for name in frame.columns if name not in schema.names]
    if extra and not allow_extra:
        raise InputError(f"unexpected column(s) {extra}", file=file, field=extra[0])
    return frame.select(schema.names + extra)
