"""Writing one scoring rubric per preference item, journaled and resumable.

Verifiable items (those ``constraint_type`` recognises, e.g. "Answer in at most 3
sentences.") take the built-in rubric of their constraint type from
``rubrics/verifiable.yaml`` and record its ``checker``; every other item's rubric is written
by the model, validated, and retried (only the failing items, each retry with a new derived
seed) up to ``max_attempts`` times. Items that still fail are listed with their reasons in
the manifest and have no rubric. ``write_rubrics`` is what ``mipo rubrics`` runs, and what
``mipo eval`` runs to make rubrics for judging.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine.artifacts import location
from mipo_engine.artifacts.run import StageRun, check_output_path
from mipo_engine.artifacts.schemas import CONTEXTS, PROMPTS, RUBRIC_FIELDS, RUBRICS
from mipo_engine.artifacts.store import parquet_columns, read_artifact
from mipo_engine.backends.base import Backend
from mipo_engine.chat import Message
from mipo_engine.errors import InputError, MipoError
from mipo_engine.judging.constraints import constraint_type
from mipo_engine.judging.rubric_sets import rubric_for_constraint
from mipo_engine.judging.validation import parse_json_object, validate_rubric
from mipo_engine.modelcalls.asking import Query, ask_with_retries
from mipo_engine.modelcalls.running import (
    BackendHandle,
    check_engine,
    console,
    finished_rows,
    run_model_chunks,
    unfinished,
    write_output,
)
from mipo_engine.modelcalls.settings import AskingConfig
from mipo_engine.templates import render

BUILTIN_ORIGIN = "builtin:verifiable"
GENERATED_ORIGIN = "generated"


def rubric_id(item: str) -> str:
    """Stable id of an item's rubric: the same item text always maps to the same id."""
    return "rubric-" + hashlib.sha256(item.strip().encode("utf-8")).hexdigest()[:16]


class RubricsFailed(MipoError):
    exit_code = 1


# --------------------------------------------------------------------------------------------
# Reading items
# --------------------------------------------------------------------------------------------


def read_preference_items(path: str | Path) -> list[str]:
    """Distinct preference items of a contexts or prompts artifact, in first-seen order."""
    path = location.as_location(path)
    columns = parquet_columns(path)
    if "item" in columns:
        items = read_artifact(path, CONTEXTS)["item"].to_list()
    elif "context_items" in columns:
        lists = read_artifact(path, PROMPTS)["context_items"].to_list()
        items = [item for items in lists if items for item in items]
    else:
        raise InputError(
            "expected a contexts artifact (with an 'item' column) or a prompts artifact (with "
            f"'context_items'); found columns {list(columns)}",
            file=path,
        )
    distinct = list(dict.fromkeys(item.strip() for item in items if item and item.strip()))
    if not distinct:
        raise InputError("no preference items found (all empty or null)", file=path)
    return distinct


# --------------------------------------------------------------------------------------------
# Built-in and generated rubrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemPlan:
    id: str
    item: str
    checker: str | None


def builtin_rubric_row(plan: ItemPlan) -> dict[str, Any]:
    """The verifiable rubric of the item's constraint type, keyed by the item."""
    assert plan.checker is not None
    rubric = rubric_for_constraint(plan.checker)
    return {
        "id": plan.id,
        "item": plan.item,
        **{field: rubric[field] for field in RUBRIC_FIELDS},
        "checker": plan.checker,
        "origin": BUILTIN_ORIGIN,
        "attempts": 0,
        "error": None,
        "raw": None,
    }


def rubric_messages(item: str) -> list[Message]:
    return [{"role": "user", "content": render("rubric_generation.txt", preference=item)}]


RUBRIC_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {field: {"type": "string", "minLength": 1} for field in RUBRIC_FIELDS},
    "required": list(RUBRIC_FIELDS),
    "additionalProperties": False,
}
"""Constrains a rubric reply on backends with structured output (vLLM)."""


def parse_rubric(text: str) -> dict[str, str]:
    """The validated rubric in a reply; ValueError with the reason otherwise."""
    found = parse_json_object(text)
    if found is None:
        raise ValueError("the reply holds no JSON object")
    return validate_rubric(found)


_JOURNAL_SCHEMA = {
    **RUBRICS.polars_schema(),
    "error": pl.String(),
    "raw": pl.String(),
}


def _generated_rows(backend: Backend, plans: list[ItemPlan], settings: AskingConfig) -> list[dict]:
    queries = [Query(plan.id, rubric_messages(plan.item)) for plan in plans]
    schema = RUBRIC_JSON_SCHEMA if settings.structured else None
    replies = ask_with_retries(
        backend, queries, parse_rubric, settings.policy(), json_schema=schema
    )
    rows = []
    for plan, reply in zip(plans, replies, strict=True):
        fields = reply.value or {}
        rows.append(
            {
                "id": plan.id,
                "item": plan.item,
                **{field: fields.get(field) for field in RUBRIC_FIELDS},
                "checker": None,
                "origin": GENERATED_ORIGIN,
                "attempts": reply.attempts,
                "error": reply.error,
                "raw": reply.raw,
            }
        )
    return rows


def _chunk_rows(
    model: BackendHandle, chunk: list[ItemPlan], settings: AskingConfig
) -> pl.DataFrame:
    builtin = {p.id: builtin_rubric_row(p) for p in chunk if p.checker is not None}
    to_generate = [p for p in chunk if p.checker is None]
    generated = {}
    if to_generate:
        generated = {row["id"]: row for row in _generated_rows(model.get(), to_generate, settings)}
    rows = [builtin.get(p.id) or generated[p.id] for p in chunk]
    return pl.DataFrame(rows, schema=_JOURNAL_SCHEMA)


def _stats(finished: pl.DataFrame, seconds: float) -> dict[str, Any]:
    failed = finished.filter(pl.col("error").is_not_null())
    return {
        "items": finished.height,
        "builtin": finished.filter(pl.col("origin") == BUILTIN_ORIGIN).height,
        "generated": finished.filter(
            (pl.col("origin") == GENERATED_ORIGIN) & pl.col("error").is_null()
        ).height,
        "failed": [
            {
                "item": row["item"],
                "reason": row["error"],
                "attempts": row["attempts"],
                "raw": (row["raw"] or "")[:300],
            }
            for row in failed.iter_rows(named=True)
        ],
        "seconds_this_run": round(seconds, 3),
    }


MAX_NEW_TOKENS = 384
"""Rubric replies are longer than most: a criteria question and five score descriptions."""


def rubrics_identity(
    settings: AskingConfig, *, contexts: Path, limit: int | None
) -> dict[str, object]:
    """The settings that decide a rubrics artifact (``mipo rubrics``'s identity)."""
    return {**settings.identity(), "contexts": str(contexts), "limit": limit}


def write_rubrics(
    settings: AskingConfig,
    *,
    contexts: Path,
    out: Path,
    limit: int | None,
    identity: dict[str, object],
    backend: Backend | None = None,
) -> Path:
    """Write one rubric per distinct preference item of ``contexts`` to ``out``, resumably.

    ``settings``: the model and its retry settings; ``identity``: what decides the output
    (``rubrics_identity``); ``backend``: a backend to use instead of making one.
    """
    output = check_output_path(out, contexts)
    check_engine(settings, shared_backend=backend is not None)
    run = StageRun("rubrics", output, identity, {"contexts": contexts})
    if run.up_to_date():
        console.print(f"{output} is up to date.")
        return output
    items = read_preference_items(contexts)
    if limit is not None:
        items = items[:limit]
    plans = [ItemPlan(rubric_id(item), item, constraint_type(item)) for item in items]
    journal = run.journal()
    todo, _ = unfinished(journal, plans, "items already done", key=lambda plan: plan.id)
    started = time.perf_counter()
    options = settings.backend_options()
    with BackendHandle(settings.backend, settings.model, options, backend) as model:
        if any(plan.checker is None for plan in todo) and settings.engine == "local":
            model.get()
        run_model_chunks(
            todo,
            partial(_chunk_rows, settings=settings),
            journal,
            settings=settings,
            local=model,
            opener=partial(BackendHandle, settings.backend, settings.model, options),
            label="rubrics",
            total=len(plans),
            done=len(plans) - len(todo),
        )
    finished = finished_rows(
        journal, pl.DataFrame(schema=_JOURNAL_SCHEMA), [plan.id for plan in plans]
    )
    stats = _stats(finished, time.perf_counter() - started)
    rubrics = finished.filter(pl.col("error").is_null()).select(RUBRICS.names)
    if rubrics.height == 0:
        journal.finish()  # nothing usable: let a rerun start over rather than replay failures
        shown = "; ".join(f"{f['item'][:40]!r}: {f['reason']}" for f in stats["failed"][:3])
        raise RubricsFailed(
            f"no item got a valid rubric ({len(plans)} items, {settings.max_attempts} attempts "
            f"each; {shown}). Check the model and backend settings."
        )
    return write_output(
        run,
        journal,
        rubrics,
        RUBRICS,
        model=settings.model or "default",
        backend=settings.backend,
        seed=settings.seed,
        stats={**stats, "engine": settings.engine_settings()},
    )
