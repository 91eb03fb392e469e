"""``mipo contexts``: users' choices (or system messages) -> user contexts.

Seed 004 sec. 5.3 and App. C.2: real users pick one of several replies but never say why, so
an LLM reads each choice and writes the user's general, topic-agnostic preferences as a JSON
object (snake_case keys, values of at most two sentences); "then we aggregate all the values
as user-contexts". For Multifaceted-Bench the system-message preferences are rewritten into
first-person user statements instead (``mode="system-to-user"``).

Every reply is validated; only rows whose reply is unusable are asked again, each retry with a
new seed derived from the global seed, the row and the attempt, at most ``max_attempts``
times. Rows that still fail are recorded with their reasons in the manifest. Finished rows
(successes and final failures) are journaled in chunks, so a killed run resumes where it
stopped.

The ``contexts`` artifact has one row per inferred preference item; ``contexts_to_prompts``
(and ``as_prompts``) turns it into a prompts artifact with ``context``/``context_items`` for
``mipo generate``: one prompt row per source row, pairing the user's own prompt with the
context inferred from them.

The retry loop is ``modelcalls.asking.ask_with_retries``, shared with ``mipo rubrics`` and
``mipo judge``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from mipo_engine.artifacts import location
from mipo_engine.artifacts.location import Location
from mipo_engine.artifacts.run import StageRun, check_output_path
from mipo_engine.artifacts.schemas import CONTEXTS, PROMPTS
from mipo_engine.artifacts.store import is_complete, read_artifact
from mipo_engine.backends.base import (
    Backend,
)
from mipo_engine.chat import Message
from mipo_engine.commandline import Cli
from mipo_engine.errors import MipoError
from mipo_engine.judging.constraints import count_sentences
from mipo_engine.judging.validation import parse_json_object, validate_user_context
from mipo_engine.modelcalls.asking import Query, Reply, ask_with_retries
from mipo_engine.modelcalls.running import (
    BackendHandle,
    check_engine,
    console,
    finished_rows,
    run_model_chunks,
    unfinished,
)
from mipo_engine.modelcalls.settings import AskingConfig
from mipo_engine.sources.preferences import (
    PreferenceExample,
    SystemPreference,
    read_preferences,
    read_system_preferences,
    snake_case,
)
from mipo_engine.templates import render

# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


class ContextsConfig(AskingConfig):
    preferences: Location = Field(
        description="Users' choices (PRISM utterances, Community Alignment, or a pairwise file with prompt, option_a/option_b..., preferred) or, with --mode system-to-user, Multifaceted-Bench records. JSONL, JSON, CSV or Parquet; a local path or an s3:// or gs:// URL."
    )
    """Users' choices (PRISM, Community Alignment or pairwise layout) or system messages."""
    out: Annotated[Location, Cli("--out", "-o")] = Field(description="Output contexts .parquet.")
    mode: Literal["preferences", "system-to-user"] = Field(
        "preferences",
        description="preferences: infer each user's general preferences as JSON from their choice; system-to-user: rewrite system-message preferences as first-person statements.",
    )
    layout: Literal["auto", "pairwise", "prism", "community-alignment", "multifaceted"] = Field(
        "auto",
        description="Input layout: auto, pairwise, prism, community-alignment, multifaceted.",
    )
    id_column: str | None = Field(None, description="Column with the row id.")
    user_column: str | None = Field(None, description="Column with the user id.")
    prompt_column: str | None = Field(None, description="Column with the prompt.")
    option_columns: list[str] | None = Field(
        None, min_length=2, description="Comma-separated option columns, e.g. 'left,right'."
    )
    preferred_column: str | None = Field(
        None, description="Column naming the preferred option (letter, column, number or text)."
    )
    feedback_column: str | None = Field(
        None, description="Column with the user's comment on the choice."
    )
    turn: int | None = Field(
        None, ge=1, le=4, description="Conversation turn to read, 1 = first (CA, PRISM)."
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N source rows.")
    as_prompts: Location | None = Field(
        None,
        description="Also write a prompts .parquet (one row per source row, with context and context_items) to pass to mipo generate.",
    )
    """Also write a prompts artifact (one row per source row) for ``mipo generate``."""

    chunk_key: ClassVar[str] = "chunk_rows"

    @model_validator(mode="after")
    def _mode_matches_layout(self) -> ContextsConfig:
        if self.mode == "system-to-user" and self.layout not in ("auto", "multifaceted"):
            raise ValueError(
                f"mode system-to-user reads system messages; layout {self.layout!r} holds "
                "users' choices (use mode 'preferences', or layout 'multifaceted')"
            )
        if self.mode == "preferences" and self.layout == "multifaceted":
            raise ValueError(
                "layout 'multifaceted' holds system messages; use mode 'system-to-user'"
            )
        if self.as_prompts is not None and not str(self.as_prompts).endswith(".parquet"):
            raise ValueError(f"as_prompts must be a .parquet file, got {self.as_prompts}")
        return self

    def column_overrides(self) -> dict[str, Any]:
        return {
            "id": self.id_column,
            "user": self.user_column,
            "prompt": self.prompt_column,
            "options": self.option_columns,
            "preferred": self.preferred_column,
            "feedback": self.feedback_column,
        }

    def identity(self) -> dict[str, object]:
        """Settings that change the output (batching, concurrency and paths do not)."""
        identity = super().identity()
        identity.pop("as_prompts")
        return identity


class ContextsFailed(MipoError):
    exit_code = 1


# --------------------------------------------------------------------------------------------
# Source rows: what to ask, and how to read the answer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRow:
    """One row to infer a context from: the question to ask and what to record with it."""

    source_id: str
    prompt: str
    user_id: str | None
    context_group: str | None
    messages: list[Message]
    statement_key: str | None = None
    """system-to-user: the key of the single statement item."""


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


def extraction_messages(example: PreferenceExample) -> list[Message]:
    """The context-extraction question for one choice (seed 004 App. C.2)."""
    options = "\n\n".join(
        f"Option {option_letter(index)}:\n{text}" for index, text in enumerate(example.options)
    )
    content = render(
        "context_extraction.txt",
        prompt=example.prompt,
        options=options,
        preferred=f"Option {option_letter(example.preferred)}",
        feedback=example.feedback or "",
    )
    return [{"role": "user", "content": content}]


def system_to_user_messages(preference: SystemPreference) -> list[Message]:
    """The rewrite question for one system-message preference (seed 004 App. C.2)."""
    content = render(
        "system_to_user.txt",
        dimension=preference.dimension,
        subdimension=preference.subdimension,
        preference=preference.preference,
        description=preference.description,
    )
    return [{"role": "user", "content": content}]


USER_CONTEXT_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "string"},
}
"""Constrains a context reply to an object of strings on backends with structured output;
key and value rules are still checked by ``validate_user_context``."""


def parse_user_context(text: str) -> dict[str, str]:
    """The validated JSON user context in a reply; ValueError with the reason otherwise."""
    found = parse_json_object(text)
    if found is None:
        raise ValueError("the reply holds no JSON object")
    return validate_user_context(found)


MAX_STATEMENT_SENTENCES = 3
MAX_STATEMENT_CHARS = 600
_FIRST_PERSON = re.compile(r"\b(?:I|I'm|I'd|I've|me|my|mine)\b", re.IGNORECASE)
_LABEL_PREFIX = re.compile(r"^\s*(?:user(?:'s)? statement|user|statement)\s*:\s*", re.I)


def parse_user_statement(text: str) -> str:
    """A first-person statement of one to three sentences; ValueError with the reason otherwise.

    A leading label ("User:") and surrounding quotes are removed first, since models add them
    despite being told not to.
    """
    statement = _LABEL_PREFIX.sub("", text.strip()).strip().strip("\"'“”").strip()
    if not statement:
        raise ValueError("the reply is empty")
    if statement.startswith(("{", "[")):
        raise ValueError("the reply is JSON, not a plain statement")
    if len(statement) > MAX_STATEMENT_CHARS:
        raise ValueError(
            f"the statement has {len(statement)} characters (at most {MAX_STATEMENT_CHARS})"
        )
    sentences = count_sentences(statement, rule="reply")
    if sentences > MAX_STATEMENT_SENTENCES:
        raise ValueError(
            f"the statement has {sentences} sentences (at most {MAX_STATEMENT_SENTENCES})"
        )
    if not _FIRST_PERSON.search(statement):
        raise ValueError("the statement is not in the first person (no I/me/my)")
    return statement


def _source_rows(config: ContextsConfig) -> list[SourceRow]:
    with location.local_copy(config.preferences, key="preferences") as source:
        return _read_source_rows(config, Path(source))


def _read_source_rows(config: ContextsConfig, source: Path) -> list[SourceRow]:
    if config.mode == "system-to-user":
        preferences = read_system_preferences(source)
        rows = [
            SourceRow(
                source_id=p.source_id,
                prompt=p.prompt,
                user_id=None,
                context_group=p.group,
                messages=system_to_user_messages(p),
                statement_key=snake_case(p.subdimension, fallback="statement"),
            )
            for p in preferences
        ]
    else:
        examples = read_preferences(
            source,
            layout=config.layout,  # type: ignore[arg-type]
            columns=config.column_overrides(),
            turn=config.turn,
        )
        rows = [
            SourceRow(
                source_id=e.source_id,
                prompt=e.prompt,
                user_id=e.user_id,
                context_group=None,  # inferred contexts are independent of prompts (Table 5)
                messages=extraction_messages(e),
            )
            for e in examples
        ]
    return rows[: config.limit] if config.limit is not None else rows


# --------------------------------------------------------------------------------------------
# Journal rows and the artifact
# --------------------------------------------------------------------------------------------

_JOURNAL_SCHEMA = {
    "source_id": pl.String(),
    "user_id": pl.String(),
    "prompt": pl.String(),
    "context_group": pl.String(),
    "keys": pl.List(pl.String()),
    "items": pl.List(pl.String()),
    "attempts": pl.Int64(),
    "error": pl.String(),
    "raw": pl.String(),
}


def _journal_rows(rows: list[SourceRow], replies: list[Reply[dict[str, str]]]) -> pl.DataFrame:
    records = []
    for row, reply in zip(rows, replies, strict=True):
        items = reply.value or {}
        records.append(
            {
                "source_id": row.source_id,
                "user_id": row.user_id,
                "prompt": row.prompt,
                "context_group": row.context_group,
                "keys": list(items),
                "items": list(items.values()),
                "attempts": reply.attempts,
                "error": reply.error,
                "raw": reply.raw,
            }
        )
    return pl.DataFrame(records, schema=_JOURNAL_SCHEMA)


def _artifact_rows(finished: pl.DataFrame, source: str) -> pl.DataFrame:
    """One contexts row per item of every successful source row."""
    records = []
    for row in finished.filter(pl.col("error").is_null()).iter_rows(named=True):
        context = " ".join(row["items"])
        for key, item in zip(row["keys"], row["items"], strict=True):
            records.append(
                {
                    "id": f"{row['source_id']}:{key}",
                    "source_id": row["source_id"],
                    "user_id": row["user_id"],
                    "key": key,
                    "item": item,
                    "context": context,
                    "prompt": row["prompt"],
                    "context_group": row["context_group"],
                    "source": source,
                    "attempts": row["attempts"],
                }
            )
    return pl.DataFrame(records, schema=CONTEXTS.polars_schema()) if records else CONTEXTS.empty()


def contexts_to_prompts(contexts: pl.DataFrame, *, source: str = "contexts") -> pl.DataFrame:
    """A prompts-schema frame: one personalization row per source row of a contexts frame.

    ``id`` is the source id, ``prompt`` the source row's prompt, ``context_items`` its items in
    order and ``context`` their text joined by spaces (as ``mipo ingest`` joins items).
    """
    grouped = contexts.group_by("source_id", maintain_order=True).agg(
        pl.col("prompt").first(),
        pl.col("item").alias("context_items"),
        pl.col("context_group").first(),
    )
    return grouped.select(
        pl.col("source_id").alias("id"),
        pl.col("prompt"),
        pl.col("context_items").list.join(" ").alias("context"),
        pl.col("context_items"),
        pl.col("context_group"),
        pl.lit("personalization").alias("task"),
        pl.lit(None, dtype=pl.String()).alias("answer"),
        pl.lit(None, dtype=pl.List(pl.String())).alias("choices"),
        pl.lit(source).alias("source"),
    )


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _infer(
    backend: Backend, rows: list[SourceRow], config: ContextsConfig
) -> list[Reply[dict[str, str]]]:
    """Ask for every row's context; a system-to-user statement becomes a one-item context."""
    queries = [Query(row.source_id, row.messages) for row in rows]
    if config.mode == "preferences":
        schema = USER_CONTEXT_JSON_SCHEMA if config.structured else None
        return ask_with_retries(
            backend, queries, parse_user_context, config.policy(), json_schema=schema
        )
    statements = ask_with_retries(backend, queries, parse_user_statement, config.policy())
    return [
        Reply(
            {row.statement_key or "statement": reply.value} if reply.value is not None else None,
            reply.raw,
            reply.error,
            reply.attempts,
        )
        for row, reply in zip(rows, statements, strict=True)
    ]


def _stats(finished: pl.DataFrame, contexts: pl.DataFrame, seconds: float) -> dict[str, Any]:
    failed = finished.filter(pl.col("error").is_not_null())
    return {
        "source_rows": finished.height,
        "succeeded": finished.height - failed.height,
        "items": contexts.height,
        "failed": [
            {
                "source_id": row["source_id"],
                "reason": row["error"],
                "attempts": row["attempts"],
                "raw": (row["raw"] or "")[:300],
            }
            for row in failed.iter_rows(named=True)
        ],
        "attempts": finished["attempts"].value_counts().sort("attempts").to_dicts(),
        "seconds_this_run": round(seconds, 3),
    }


def _write_prompts(config: ContextsConfig, contexts: pl.DataFrame, source: str) -> None:
    if config.as_prompts is None:
        return
    output = check_output_path(config.as_prompts, config.preferences, config.out)
    prompts = contexts_to_prompts(contexts, source=f"contexts:{source}")
    run = StageRun("contexts", output, config.identity(), {"contexts": config.out})
    run.write(
        prompts,
        PROMPTS,
        model=config.model or "default",
        backend=config.backend,
        stats={"rows": prompts.height},
    )


def _infer_chunk(
    model: BackendHandle, chunk: list[SourceRow], *, config: ContextsConfig
) -> pl.DataFrame:
    return _journal_rows(chunk, _infer(model.get(), chunk, config))


def run_contexts(config: ContextsConfig, *, backend: Backend | None = None) -> Path:
    """Infer user contexts from ``config.preferences`` into ``config.out``; return its path."""
    output = check_output_path(config.out, config.preferences)
    check_engine(config, shared_backend=backend is not None)
    run = StageRun("contexts", output, config.identity(), {"preferences": config.preferences})
    source = location.name(config.preferences)
    if run.up_to_date():
        if config.as_prompts is not None and not is_complete(config.as_prompts):
            _write_prompts(config, read_artifact(output, CONTEXTS), source)
        console.print(f"{output} is up to date.")
        return output
    rows = _source_rows(config)
    journal = run.journal(key="source_id")
    todo, _ = unfinished(journal, rows, "rows already done", key=lambda row: row.source_id)
    started = time.perf_counter()
    options = config.backend_options()
    with BackendHandle(config.backend, config.model, options, backend) as model:
        run_model_chunks(
            todo,
            partial(_infer_chunk, config=config),
            journal,
            settings=config,
            local=model,
            opener=partial(BackendHandle, config.backend, config.model, options),
            label="contexts",
            total=len(rows),
            done=len(rows) - len(todo),
        )
    finished = finished_rows(
        journal,
        pl.DataFrame(schema=_JOURNAL_SCHEMA),
        [row.source_id for row in rows],
        key="source_id",
    )
    contexts = _artifact_rows(finished, source)
    stats = _stats(finished, contexts, time.perf_counter() - started)
    if contexts.height == 0:
        journal.finish()  # nothing usable: let a rerun start over rather than replay failures
        shown = "; ".join(f"{f['source_id']}: {f['reason']}" for f in stats["failed"][:3])
        raise ContextsFailed(
            f"no row gave a valid context ({len(rows)} rows, {config.max_attempts} attempts "
            f"each; {shown}). Check the model and backend settings."
        )
    path = run.write(
        contexts,
        CONTEXTS,
        model=config.model or "default",
        backend=config.backend,
        seed=config.seed,
        stats={**stats, "engine": config.engine_settings()},
    )
    _write_prompts(config, contexts, source)
    journal.finish()
    return path
