"""Asking a judge: one 1-5 score per (response, preference item), journaled and resumable.

Modes: ``rubric`` asks the judge once per item with that item's rubric; ``rlaif`` asks once
per response with the whole context (the RLAIF critic of seed 004 sec. 5.2); ``verify`` uses
no model: it checks the verifiable items with ``check_constraint`` and stores 5 for a pass
and 1 for a failure, so aggregation, win rates and critic accuracy work the same. In every
mode verifiable items also get the checker's verdict in ``passed``.

With a backend offering structured output (vLLM) the reply is constrained to one of
"1".."5"; otherwise it is read with ``parse_score`` and only unreadable items are asked
again, at most ``max_attempts`` times, before a null score is recorded with the reason.
``judge_responses`` is what ``mipo judge`` runs, and what ``mipo eval`` runs to judge its
responses against a reference eval.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine.artifacts import location
from mipo_engine.artifacts.run import StageRun, check_output_path
from mipo_engine.artifacts.schemas import JUDGMENTS
from mipo_engine.artifacts.store import summary_path, write_json_atomic
from mipo_engine.backends.base import Backend
from mipo_engine.chat import Message
from mipo_engine.errors import InputError
from mipo_engine.judging.constraints import check_constraint
from mipo_engine.judging.rubric_sets import load_rubrics
from mipo_engine.judging.scores import parse_score
from mipo_engine.judging.summary import print_summary, summarize
from mipo_engine.judging.targets import Judgment, plan_judgments, read_targets
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

SCORE_CHOICES = ("1", "2", "3", "4", "5")


PASS_SCORE, FAIL_SCORE = 5.0, 1.0
"""verify mode: the checker's verdict placed at the ends of the 1-5 scale."""


def rubric_judge_messages(judgment: Judgment) -> list[Message]:
    """The per-item rubric question; the item itself is shown because verifiable rubrics
    refer to its number or word ("the limit", "the requested word")."""
    rubric = judgment.rubric or {}
    criteria = f'{rubric["criteria"]} (The user\'s stated preference: "{judgment.item}")'
    content = render(
        "judge_rubric.txt",
        prompt=judgment.target.prompt,
        response=judgment.target.response,
        reference_answer="",
        criteria=criteria,
        **{
            f"score{level}_description": rubric[f"score{level}_description"]
            for level in range(1, 6)
        },
    )
    return [{"role": "user", "content": content}]


def rlaif_judge_messages(judgment: Judgment) -> list[Message]:
    """One question about the whole context (seed 004 sec. 5.2, RLAIF critic)."""
    target = judgment.target
    context = "\n".join(f"- {item}" for item in target.items) if target.items else judgment.item
    content = render(
        "judge_rlaif.txt", context=context, prompt=target.prompt, response=target.response
    )
    return [{"role": "user", "content": content}]


def parse_judge_score(text: str) -> float:
    """The 1-5 score in a judge reply; ValueError when there is no single valid one."""
    score = parse_score(text)
    if score is None:
        raise ValueError("the reply holds no single 1-5 score")
    return float(score)


def _row(judgment: Judgment, mode: str, **values: Any) -> dict[str, Any]:
    passed = None
    if judgment.checker is not None:
        passed = check_constraint(judgment.item, judgment.target.response)
    row = {
        "id": judgment.id,
        "response_id": judgment.target.response_id,
        "role": judgment.target.role,
        "task": judgment.target.task,
        "mode": mode,
        "item_index": judgment.item_index,
        "item": judgment.item,
        "rubric_id": (judgment.rubric or {}).get("id"),
        "checker": judgment.checker,
        "passed": passed,
        "score": None,
        "raw": None,
        "error": None,
        "attempts": 0,
    }
    row.update(values)
    if mode == "verify":
        row["score"] = PASS_SCORE if passed else FAIL_SCORE
    return row


def judge_chunk(
    model: BackendHandle, chunk: list[Judgment], mode: str, settings: AskingConfig
) -> pl.DataFrame:
    """Judgment rows of one chunk: checkers only (verify), or the judge's replies."""
    rows: dict[str, dict[str, Any]] = {}
    asked: list[Judgment] = []
    for judgment in chunk:
        if mode == "verify":
            rows[judgment.id] = _row(judgment, "verify")
        elif mode == "rubric" and judgment.rubric is None:
            rows[judgment.id] = _row(
                judgment, "rubric", error="no rubric for this item; run mipo rubrics on it"
            )
        else:
            asked.append(judgment)
    if asked:
        build = rlaif_judge_messages if mode == "rlaif" else rubric_judge_messages
        queries = [Query(j.id, build(j)) for j in asked]
        replies = ask_with_retries(
            model.get(),
            queries,
            parse_judge_score,
            settings.policy(),
            choices=SCORE_CHOICES if settings.structured else None,
        )
        for judgment, reply in zip(asked, replies, strict=True):
            rows[judgment.id] = _row(
                judgment,
                mode,
                score=reply.value,
                raw=reply.raw,
                error=reply.error,
                attempts=reply.attempts,
            )
    return pl.DataFrame([rows[j.id] for j in chunk], schema=JUDGMENTS.polars_schema())


def needs_model(todo: Sequence[Judgment], mode: str) -> bool:
    if mode == "verify":
        return False
    return any(mode == "rlaif" or j.rubric is not None for j in todo)


def judge_identity(
    settings: AskingConfig,
    *,
    responses: Path,
    rubrics: Path | None,
    reference: Path | None,
    mode: str,
    limit: int | None,
) -> dict[str, object]:
    """The settings that decide a judgments artifact (``mipo judge``'s identity)."""
    return {
        **settings.identity(),
        "responses": str(responses),
        "rubrics": None if rubrics is None else str(rubrics),
        "reference": None if reference is None else str(reference),
        "mode": mode,
        "limit": limit,
    }


def judge_responses(
    settings: AskingConfig,
    *,
    responses: Path,
    out: Path,
    rubrics: Path | None,
    reference: Path | None,
    mode: str,
    limit: int | None,
    identity: dict[str, object],
    backend: Backend | None = None,
) -> Path:
    """Judge ``responses`` into ``out`` and its summary, resumably; return the output path.

    ``settings``: the judge model and its retry settings; ``identity``: what decides the
    output (``judge_identity``); ``backend``: a backend to use instead of making one.
    """
    output = check_output_path(out, responses, rubrics, reference)
    inputs = {"responses": responses, "rubrics": rubrics, "reference": reference}
    check_engine(settings, shared_backend=backend is not None)
    run = StageRun("judge", output, identity, inputs)
    if run.up_to_date() and location.is_file(summary_path(output)):
        console.print(f"{output} is up to date.")
        return output
    known = load_rubrics(rubrics) if rubrics is not None else {}
    kind, targets = read_targets(responses, list(known), reference=reference, limit=limit)
    plans = plan_judgments(targets, mode, known)
    if not plans:
        raise InputError(
            "nothing to judge: no response has preference items"
            + (" that a checker can verify" if mode == "verify" else " (no context)"),
            file=responses,
        )
    journal = run.journal()
    todo, _ = unfinished(journal, plans, "judgments already done", key=lambda plan: plan.id)
    started = time.perf_counter()
    options = settings.backend_options()
    with BackendHandle(settings.backend, settings.model, options, backend) as model:
        if needs_model(todo, mode) and settings.engine == "local":
            model.get()
        chunks_run = run_model_chunks(
            todo,
            partial(judge_chunk, mode=mode, settings=settings),
            journal,
            settings=settings,
            local=model,
            opener=partial(BackendHandle, settings.backend, settings.model, options),
            label="judging",
            total=len(plans),
            done=len(plans) - len(todo),
        )
    judgments = finished_rows(journal, JUDGMENTS.empty(), [plan.id for plan in plans])
    tasks = {t.response_id: t.task for t in targets}
    summary = {"input": kind, **summarize(judgments, tasks, mode)}
    write_json_atomic(summary_path(output), summary)
    stats = {
        **summary,
        "seconds_this_run": round(time.perf_counter() - started, 3),
        "chunks_this_run": chunks_run,
        "engine": settings.engine_settings(),
    }
    path = write_output(
        run,
        journal,
        judgments,
        JUDGMENTS,
        model=None if mode == "verify" else settings.model or "default",
        backend=None if mode == "verify" else settings.backend,
        seed=settings.seed,
        stats=stats,
    )
    print_summary(summary)
    return path
