"""``mipo rubrics``: preference items -> one scoring rubric per item.

Seed 004 App. C.2 grades personalization item by item: every preference item gets a rubric
with a ``criteria`` question and ``score1_description`` .. ``score5_description`` (the
Prometheus absolute-grading layout), and the judge scores a response once per item.

Items come from a ``contexts`` artifact (its ``item`` column) or a ``prompts`` artifact (its
``context_items``); each distinct item text gets one rubric. Verifiable items (those
``constraint_type`` recognises, e.g. "Answer in at most 3 sentences.") take the built-in rubric
of their constraint type from ``rubrics/verifiable.yaml`` and record its ``checker``; every
other item's rubric is written by the model, validated, and retried (only the failing items,
each retry with a new derived seed) up to ``max_attempts`` times. Items that still fail are
listed with their reasons in the manifest and have no rubric; ``mipo judge`` records a null
score with that reason for them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field

from mipo_engine.artifacts.run import StageConfig, StageRun, check_output_path
from mipo_engine.artifacts.schemas import CONTEXTS, PROMPTS, RUBRIC_FIELDS, RUBRICS
from mipo_engine.artifacts.store import parquet_columns, read_artifact
from mipo_engine.backends.base import Backend, SamplingConfig, create_backend
from mipo_engine.chat import Message
from mipo_engine.errors import InputError, MipoError
from mipo_engine.judging.constraints import constraint_type
from mipo_engine.judging.rubric_sets import rubric_for_constraint
from mipo_engine.judging.validation import parse_json_object, validate_rubric
from mipo_engine.stages.contexts import (
    Query,
    RetryPolicy,
    ask_with_retries,
    backend_options,
    console,
    keep_order,
    progress_bar,
)
from mipo_engine.templates import render

BUILTIN_ORIGIN = "builtin:verifiable"
GENERATED_ORIGIN = "generated"


def rubric_id(item: str) -> str:
    """Stable id of an item's rubric: the same item text always maps to the same id."""
    return "rubric-" + hashlib.sha256(item.strip().encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


class RubricsConfig(StageConfig):
    contexts: Path
    """A contexts artifact (``item`` column) or a prompts artifact (``context_items``)."""
    out: Path
    backend: Literal["hf", "vllm", "openai"] = "hf"
    model: str | None = None
    max_new_tokens: int = Field(384, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="first attempt (0 = greedy)")
    retry_temperature: float = Field(0.7, ge=0.0, description="attempts after the first")
    max_attempts: int = Field(3, ge=1, le=20)
    structured: bool = True
    """Constrain replies to the rubric's JSON layout when the backend supports it (vLLM)."""
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    chunk_items: int = Field(32, ge=1, description="items per saved chunk (resume unit)")
    limit: int | None = Field(None, ge=1, description="use only the first N distinct items")
    base_url: str | None = None
    concurrency: int = Field(8, ge=1)

    def identity(self) -> dict[str, object]:
        """Settings that change the output (batching, concurrency and paths do not)."""
        return self.model_dump(
            mode="json", exclude={"batch_size", "chunk_items", "concurrency", "out"}
        )

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            sampling=SamplingConfig(
                max_new_tokens=self.max_new_tokens, temperature=self.temperature
            ),
            retry_temperature=self.retry_temperature,
            max_attempts=self.max_attempts,
            seed=self.seed,
        )


class RubricsFailed(MipoError):
    exit_code = 1


# --------------------------------------------------------------------------------------------
# Reading items
# --------------------------------------------------------------------------------------------


def read_preference_items(path: Path) -> list[str]:
    """Distinct preference items of a contexts or prompts artifact, in first-seen order."""
    path = Path(path)
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


def _generated_rows(backend: Backend, plans: list[ItemPlan], config: RubricsConfig) -> list[dict]:
    queries = [Query(plan.id, rubric_messages(plan.item)) for plan in plans]
    schema = RUBRIC_JSON_SCHEMA if config.structured else None
    replies = ask_with_retries(backend, queries, parse_rubric, config.policy(), json_schema=schema)
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
    backend: Backend | None, chunk: list[ItemPlan], config: RubricsConfig
) -> list[dict]:
    builtin = {p.id: builtin_rubric_row(p) for p in chunk if p.checker is not None}
    to_generate = [p for p in chunk if p.checker is None]
    generated = {}
    if to_generate:
        assert backend is not None
        generated = {row["id"]: row for row in _generated_rows(backend, to_generate, config)}
    return [builtin.get(p.id) or generated[p.id] for p in chunk]


def _run_pending(
    backend: Backend | None, todo: list[ItemPlan], total: int, config: RubricsConfig, journal: Any
) -> None:
    with progress_bar() as progress:
        task = progress.add_task("rubrics", total=total, completed=total - len(todo))
        for start in range(0, len(todo), config.chunk_items):
            chunk = todo[start : start + config.chunk_items]
            journal.append(
                pl.DataFrame(_chunk_rows(backend, chunk, config), schema=_JOURNAL_SCHEMA)
            )
            progress.advance(task, len(chunk))


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


def _make_backend(config: RubricsConfig) -> Backend:
    return create_backend(
        config.backend,
        config.model,
        **backend_options(
            config.backend,
            batch_size=config.batch_size,
            base_url=config.base_url,
            concurrency=config.concurrency,
        ),
    )


def run_rubrics(config: RubricsConfig, *, backend: Backend | None = None) -> Path:
    """Write one rubric per distinct preference item of ``config.contexts`` to ``config.out``."""
    output = check_output_path(config.out, config.contexts)
    run = StageRun("rubrics", output, config.identity(), {"contexts": config.contexts})
    if run.up_to_date():
        console.print(f"{output} is up to date.")
        return output
    items = read_preference_items(config.contexts)
    if config.limit is not None:
        items = items[: config.limit]
    plans = [ItemPlan(rubric_id(item), item, constraint_type(item)) for item in items]
    journal = run.journal()
    done = journal.done_ids()
    todo = [plan for plan in plans if plan.id not in done]
    if done:
        console.print(f"Resuming: {len(done)} of {len(plans)} items already done.")
    started = time.perf_counter()
    needs_model = any(plan.checker is None for plan in todo)
    owns_backend = backend is None and needs_model
    if owns_backend:
        backend = _make_backend(config)
    try:
        _run_pending(backend, todo, len(plans), config, journal)
    finally:
        if owns_backend and backend is not None:
            backend.close()
    loaded = journal.load()
    finished = keep_order(
        loaded if loaded is not None else pl.DataFrame(schema=_JOURNAL_SCHEMA),
        "id",
        [plan.id for plan in plans],
    )
    stats = _stats(finished, time.perf_counter() - started)
    rubrics = finished.filter(pl.col("error").is_null()).select(RUBRICS.names)
    if rubrics.height == 0:
        journal.finish()  # nothing usable: let a rerun start over rather than replay failures
        shown = "; ".join(f"{f['item'][:40]!r}: {f['reason']}" for f in stats["failed"][:3])
        raise RubricsFailed(
            f"no item got a valid rubric ({len(plans)} items, {config.max_attempts} attempts "
            f"each; {shown}). Check the model and backend settings."
        )
    path = run.write(
        rubrics,
        RUBRICS,
        model=config.model or "default",
        backend=config.backend,
        seed=config.seed,
        stats=stats,
    )
    journal.finish()
    return path


def load_rubrics(path: Path) -> dict[str, dict[str, Any]]:
    """Rubrics of a rubrics artifact keyed by item text (for ``mipo judge``)."""
    frame = read_artifact(path, RUBRICS)
    return {row["item"]: row for row in frame.iter_rows(named=True)}
