"""What a judge scores: the responses of an input artifact and their preference items.

A response's preference items are its ``context_items``; when it has only a ``context`` text
(generations), they are the rubric items found in that text (``mipo ingest`` joins items with
spaces), or else the text's sentences. ``plan_judgments`` turns the responses into the
(response, item) pairs to score, in input order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine.artifacts import location
from mipo_engine.artifacts.schemas import (
    GENERATIONS,
    RESPONSES,
    ArtifactSchema,
    Column,
    validate_frame,
)
from mipo_engine.artifacts.store import parquet_columns, read_artifact, read_parquet
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.judging.constraints import constraint_type


@dataclass(frozen=True)
class JudgedResponse:
    response_id: str
    role: str
    prompt: str
    response: str
    context: str | None
    items: tuple[str, ...]
    task: str | None


@dataclass(frozen=True)
class Judgment:
    """One (response, item) to score."""

    id: str
    target: JudgedResponse
    item_index: int
    item: str
    rubric: dict[str, Any] | None
    checker: str | None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”’)])\s+")


def _sentences(text: str, offset: int) -> list[tuple[int, str]]:
    """(position, sentence) pairs of ``text``, positions shifted by ``offset``."""
    found, start = [], 0
    for match in [*_SENTENCE_END.finditer(text), None]:
        end = match.start() if match else len(text)
        piece = text[start:end].strip()
        if piece:
            found.append((offset + start + text[start:end].find(piece), piece))
        start = match.end() if match else len(text)
    return found


def context_items(context: str | None, known_items: Sequence[str]) -> tuple[str, ...]:
    """The preference items of a context text, in text order.

    Known items (those with rubrics) are found verbatim, longest first; the text around them
    is split into sentences, each of which is an item too (``mipo ingest`` joins a context's
    items with spaces, so known items come back exactly and unknown ones as sentences).
    """
    if context is None or not context.strip():
        return ()
    found: list[tuple[int, str]] = []
    taken = [False] * len(context)
    for item in sorted({i for i in known_items if i and i.strip()}, key=len, reverse=True):
        start = context.find(item)
        while start != -1 and any(taken[start : start + len(item)]):
            start = context.find(item, start + 1)
        if start != -1:
            found.append((start, item))
            taken[start : start + len(item)] = [True] * len(item)
    segment_start = None
    for index, is_taken in enumerate([*taken, True]):
        if not is_taken and segment_start is None:
            segment_start = index
        elif is_taken and segment_start is not None:
            found.extend(_sentences(context[segment_start:index], segment_start))
            segment_start = None
    return tuple(item for _, item in sorted(found))


def _generation_targets(frame: pl.DataFrame, known: Sequence[str]) -> list[JudgedResponse]:
    targets = []
    for row in frame.iter_rows(named=True):
        items = context_items(row["context"], known)
        for role in ("chosen", "rejected"):
            targets.append(
                JudgedResponse(
                    row["id"], role, row["prompt"], row[role], row["context"], items, None
                )
            )
    return targets


def _response_target(row: dict[str, Any], known: Sequence[str], role: str) -> JudgedResponse:
    items = tuple(i for i in row["context_items"] or () if i and i.strip())
    context = row["context"] or (" ".join(items) if items else None)
    return JudgedResponse(
        row["id"],
        role,
        row["prompt"],
        row["response"],
        context,
        items or context_items(context, known),
        row["task"],
    )


def _read_reference(path: Path) -> dict[str, str]:
    """Reference responses by id from a Parquet file with ``id`` and ``response`` columns."""
    columns = list(parquet_columns(path))
    for column in ("id", "response"):
        if column not in columns:
            raise InputError(
                f"a reference file needs columns 'id' and 'response' (found {columns})",
                file=path,
                field=column,
            )
    frame = validate_frame(
        read_parquet(path, columns=["id", "response"]),
        ArtifactSchema("reference", (Column("id", pl.String()), Column("response", pl.String()))),
        file=path,
    )
    return dict(frame.iter_rows())


def read_targets(
    responses: Path,
    known_items: Sequence[str],
    *,
    reference: Path | None = None,
    limit: int | None = None,
) -> tuple[str, list[JudgedResponse]]:
    """The input's kind (generations / responses) and every response to judge, in order.

    ``reference`` (responses only): a file of reference responses by id, each judged too;
    ``limit``: judge only the first N input rows.
    """
    path = location.as_location(responses)
    columns = list(parquet_columns(path))
    if "chosen" in columns and "rejected" in columns:
        if reference is not None:
            raise ConfigError(
                "a reference is compared with a responses artifact (id, prompt, context, "
                "response); judge the generations without it",
                key="reference",
            )
        frame = read_artifact(path, GENERATIONS)
        frame = frame.head(limit) if limit else frame
        return "generations", _generation_targets(frame, known_items)
    frame = read_artifact(path, RESPONSES)
    frame = frame.head(limit) if limit else frame
    references = _read_reference(reference) if reference is not None else {}
    targets = []
    for row in frame.iter_rows(named=True):
        targets.append(_response_target(row, known_items, "response"))
        if row["id"] in references:
            targets.append(
                _response_target(
                    {**row, "response": references[row["id"]]}, known_items, "reference"
                )
            )
    return "responses", targets


def plan_judgments(
    targets: Sequence[JudgedResponse], mode: str, rubrics: dict[str, dict[str, Any]]
) -> list[Judgment]:
    """Every (response, item) to score, in input order."""
    plans = []
    for target in targets:
        if mode == "rlaif":
            if target.context:
                plans.append(
                    Judgment(
                        f"{target.role}:{target.response_id}:0",
                        target,
                        0,
                        target.context,
                        None,
                        None,
                    )
                )
            continue
        for index, item in enumerate(target.items):
            checker = constraint_type(item)
            if mode == "verify" and checker is None:
                continue
            plans.append(
                Judgment(
                    f"{target.role}:{target.response_id}:{index}",
                    target,
                    index,
                    item,
                    rubrics.get(item),
                    checker,
                )
            )
    return plans
