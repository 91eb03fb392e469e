"""``mipo revise``: generations -> the same pairs with ``chosen`` revised by the model itself.

SFT (Revision), seed 004 sec. 5.1: the model improves its own response and SFT (``mipo train
--loss sft``) trains on the revisions. Two kinds of revision, by what is known:

- ``examples`` (personalization): the model sees the user's context, its response written
  with the context (the pair's ``chosen``, the draft to improve) and one written without it
  or for another user (``rejected``, what to move away from) and rewrites the first
  (``prompts/revise_with_examples.txt``);
- ``answer`` (math, MCQ): the model sees its response and the gold answer from the prompts
  artifact and writes a corrected solution ending in the answer line the evaluation reads
  (``prompts/revise_with_answer.txt``). The gold answer is not available to MIPO or plain
  SFT; seed 004 marks these runs "(ground truth)".

The output is a ``generations`` artifact: ``chosen`` is the revision, still conditioned on
the pair's ``chosen_input`` (what SFT trains under); ``rejected`` and the rest are kept, and
extra columns record ``original_chosen``, ``revision_input`` (the exact rendered request
the model answered), ``revision_mode`` and ``revision_seed``. Chunks of finished rows are
journal parts, so a killed run resumes at the first unfinished chunk with the same result
(each row's sampling seed derives from the global seed and the pair id).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import polars as pl
from pydantic import Field
from rich.console import Console

from mipo_engine.artifacts.run import StageRun, check_output_path, derive_seed
from mipo_engine.artifacts.schemas import GENERATIONS, PROMPTS
from mipo_engine.artifacts.store import read_artifact
from mipo_engine.backends.base import (
    Backend,
    GenerationRequest,
    SamplingConfig,
)
from mipo_engine.chat import Message
from mipo_engine.commandline import Cli
from mipo_engine.errors import ConfigError, InputError, MipoError
from mipo_engine.evaluation.tasks import ANSWER_MARKER
from mipo_engine.modelcalls.running import (
    BackendHandle,
    check_engine,
    run_model_chunks,
    unfinished,
    write_output,
)
from mipo_engine.modelcalls.settings import ServedModelConfig
from mipo_engine.models import resolve_model
from mipo_engine.templates import render

console = Console(stderr=True)

EXTRA_COLUMNS = {
    "original_chosen": pl.String,
    "revision_input": pl.String,
    "revision_mode": pl.String,
    "revision_seed": pl.Int64,
}


class ReviseConfig(ServedModelConfig):
    """Settings of ``mipo revise``."""

    generations: Path = Field(
        description="Pairs from mipo generate whose chosen responses to revise."
    )
    """Pairs from ``mipo generate``; their ``chosen`` responses are revised."""
    out: Annotated[Path, Cli("--out", "-o")] = Field(description="Output generations .parquet.")
    mode: Literal["examples", "answer"] = Field(
        "examples",
        description="examples: improve the response given the user's context and the rejected response; answer: correct it given the gold answer from --prompts.",
    )
    prompts: Path | None = Field(
        None, description="Prompts artifact with gold answers (--mode answer)."
    )
    """The prompts artifact the pairs came from (``answer`` mode reads its gold answers)."""
    model: str | None = Field(
        None, description="The model that revises (the one that wrote the pairs)."
    )
    """The model that revises: the policy that wrote the drafts (default: the default model)."""
    max_new_tokens: int = Field(256, ge=1, description="Maximum new tokens per revision.")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Global seed; each row's seed derives from it.")

    chunk_key: ClassVar[str] = "chunk_rows"

    option_help: ClassVar[dict[str, str]] = {
        "batch_size": "Requests per forward batch (hf).",
        "base_url": "OpenAI-compatible server URL (openai backend).",
    }


class RevisionFailed(MipoError):
    exit_code = 1


def _gold_answers(config: ReviseConfig, frame: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Gold answer (and choices) per prompt id; InputError for a pair without one."""
    if config.prompts is None:
        raise ConfigError(
            "revision with the gold answer (--mode answer) needs --prompts, the prompts "
            "artifact holding the answers",
            key="prompts",
        )
    prompts = read_artifact(config.prompts, PROMPTS)
    by_id = {row["id"]: row for row in prompts.iter_rows(named=True)}
    for number, row in enumerate(frame.iter_rows(named=True), start=1):
        source = by_id.get(row["prompt_id"])
        if source is None or not source.get("answer"):
            raise InputError(
                f"no gold answer for prompt_id {row['prompt_id']!r} in {config.prompts}",
                file=config.generations,
                row=number,
                field="prompt_id",
            )
    return by_id


def revision_messages(
    row: dict[str, Any], mode: str, gold: dict[str, Any] | None = None
) -> list[Message]:
    """The revision request for one pair."""
    if mode == "examples":
        content = render(
            "revise_with_examples.txt",
            context=(row.get("context") or "").strip(),
            prompt=row["prompt"],
            good=row["chosen"],
            bad=row["rejected"],
        )
    else:
        assert gold is not None
        answer = str(gold["answer"]).strip()
        final_line = f"{ANSWER_MARKER} {answer}" if gold.get("task") == "mcq" else f"#### {answer}"
        content = render(
            "revise_with_answer.txt",
            prompt=row["prompt"],
            draft=row["chosen"],
            answer=answer,
            final_line=final_line,
        )
    return [{"role": "user", "content": content}]


def _check_rows(config: ReviseConfig, frame: pl.DataFrame) -> None:
    if config.mode != "examples":
        return
    for number, row in enumerate(frame.iter_rows(named=True), start=1):
        if not (row.get("context") or "").strip():
            raise InputError(
                "revision with examples shows the model the user's context; this pair has "
                "none (use --mode answer with --prompts for tasks with gold answers)",
                file=config.generations,
                row=number,
                field="context",
            )


def _sampling(config: ReviseConfig) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
    )


Revised = tuple[pl.DataFrame | None, list[str], int]
"""One chunk's revisions: the rows kept, the ids that failed, the new tokens."""


def _revise_chunk(
    model: BackendHandle,
    chunk: list[dict[str, Any]],
    *,
    config: ReviseConfig,
    gold: dict[str, str],
) -> Revised:
    """Revise one chunk where the model lives (this process, or a Ray actor)."""
    sampling = _sampling(config)
    messages = [revision_messages(row, config.mode, gold.get(row["prompt_id"])) for row in chunk]
    seeds = [derive_seed(config.seed, row["id"], "revise") for row in chunk]
    requests = [
        GenerationRequest(row["id"], m, s) for row, m, s in zip(chunk, messages, seeds, strict=True)
    ]
    completions = model.get().generate(requests, sampling)
    kept, failed, new_tokens = [], [], 0
    for row, message, seed, completion in zip(chunk, messages, seeds, completions, strict=True):
        if completion.finish_reason == "error" or not completion.text.strip():
            failed.append(row["id"])
            continue
        new_tokens += completion.num_tokens
        kept.append(
            {
                **row,
                "chosen": completion.text,
                "chosen_finish_reason": completion.finish_reason,
                "chosen_tokens": completion.num_tokens,
                "original_chosen": row["chosen"],
                "revision_input": model.get().render(message),
                "revision_mode": config.mode,
                "revision_seed": seed,
            }
        )
    if not kept:
        return None, failed, new_tokens
    frame = pl.DataFrame(kept, schema={**GENERATIONS.polars_schema(), **EXTRA_COLUMNS})
    return frame, failed, new_tokens


def run_revise(config: ReviseConfig, *, backend: Backend | None = None) -> Path:
    """Revise the ``chosen`` responses of ``config.generations`` into ``config.out``."""
    output = check_output_path(config.out, config.generations, config.prompts)
    frame = read_artifact(config.generations, GENERATIONS)
    _check_rows(config, frame)
    gold = _gold_answers(config, frame) if config.mode == "answer" else {}
    if config.backend != "openai" and backend is None:
        resolve_model(config.model)  # a bad model path fails before anything is written
    rows = frame.to_dicts()
    check_engine(config, shared_backend=backend is not None)
    run = StageRun(
        "revise",
        output,
        config.identity(),
        {"generations": config.generations, "prompts": config.prompts},
    )
    journal = run.journal()
    todo, done = unfinished(journal, rows, "revisions already written", key=lambda row: row["id"])
    options = config.backend_options()
    if config.backend == "hf":
        options["show_progress"] = False  # one line per chunk instead (below)
    failures: list[str] = []
    started, new_tokens = time.perf_counter(), 0

    def record(chunk: list[dict[str, Any]], result: Revised) -> pl.DataFrame | None:
        nonlocal new_tokens
        frame, failed, tokens = result
        failures.extend(failed)
        new_tokens += tokens
        return frame

    with BackendHandle(config.backend, config.model, options, backend) as model:
        if todo and config.engine == "local":
            model.get()
        run_model_chunks(
            todo,
            partial(_revise_chunk, config=config, gold=gold),
            journal,
            settings=config,
            local=model,
            opener=partial(BackendHandle, config.backend, config.model, options),
            record=record,
            label="revised",
            total=len(rows),
            done=len(done),
            show="lines",
        )
    if failures:
        raise RevisionFailed(
            f"{len(failures)} of {len(rows)} revisions failed or came back empty "
            f"({', '.join(failures[:5])}); finished rows are kept, rerun to retry the others"
        )
    finished = journal.load()
    if finished is None:
        raise InputError("no pairs to revise", file=config.generations)
    order = {row["id"]: index for index, row in enumerate(rows)}
    finished = (
        finished.with_columns(
            pl.col("id").replace_strict(order, return_dtype=pl.Int64).alias("_order")
        )
        .sort("_order")
        .drop("_order")
    )
    elapsed = time.perf_counter() - started
    return write_output(
        run,
        journal,
        finished,
        GENERATIONS,
        model=config.model or "default",
        backend=config.backend,
        seed=config.seed,
        stats={
            "rows": finished.height,
            "mode": config.mode,
            "engine": config.engine_settings(),
            "new_tokens_this_run": new_tokens,
            "seconds_this_run": round(elapsed, 3),
            "sampling": _sampling(config).as_record(),
        },
    )
