"""``mipo judge``: responses + rubrics -> a 1-5 score per (response, preference item).

Seed 004 sec. 5.4 and App. C.2: a judge scores each response once per rubric item of the
user's context; the item scores are averaged per response; responses are compared with
reference responses by win rate with ties counted as wins; and a judge's reliability is its
strict and tie-tolerant accuracy at ranking known chosen responses above rejected ones
(Table 6).

What is judged (``responses``):

- a ``generations`` artifact: both the ``chosen`` and the ``rejected`` response of each pair
  (``role`` = chosen / rejected), against the pair's context. Critic accuracy is reported.
- a ``responses`` artifact: ``id``, ``prompt``, ``context`` and/or ``context_items``,
  ``response``, optional ``task`` (``role`` = response). With ``reference`` (a Parquet file
  with ``id`` and ``response``), the reference response of each id is judged the same way
  (``role`` = reference) and win rates are reported per task and overall.

A response's preference items are its ``context_items``; when it has only a ``context`` text
(generations), they are the rubric items found in that text (``mipo ingest`` joins items with
spaces), or else the text's sentences.

Modes: ``rubric`` (default) asks the judge once per item with that item's rubric; ``rlaif``
asks once per response with the whole context (the RLAIF critic of seed 004 sec. 5.2);
``verify`` uses no model: it checks the verifiable items with ``check_constraint`` and stores
5 for a pass and 1 for a failure, so aggregation, win rates and critic accuracy work the same.
In every mode verifiable items also get the checker's verdict in ``passed``.

With a backend offering ``generate_structured`` (vLLM) the reply is constrained to one of
"1".."5"; otherwise it is read with ``parse_score`` and only unreadable items are asked again,
at most ``max_attempts`` times, before a null score is recorded with the reason. Finished
judgments are journaled in chunks: a killed run resumes without scoring them again.

Outputs: the ``judgments`` artifact (one row per judged item) and ``<out>.summary.json`` with
the aggregate metrics (also in the manifest's stats). Per-response scores are not stored
separately: ``aggregate_judgments`` computes them from the judgments (mean over items).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from mipo_engine.artifacts.run import StageConfig, StageRun, check_output_path
from mipo_engine.artifacts.schemas import (
    GENERATIONS,
    JUDGMENTS,
    RESPONSES,
    ArtifactSchema,
    Column,
    validate_frame,
)
from mipo_engine.artifacts.store import (
    parquet_columns,
    read_artifact,
    read_parquet,
    write_json_atomic,
)
from mipo_engine.backends.base import Backend, SamplingConfig, create_backend
from mipo_engine.chat import Message
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.judging.constraints import check_constraint, constraint_type
from mipo_engine.judging.scores import critic_accuracy, parse_score, win_rate
from mipo_engine.stages.contexts import (
    Query,
    RetryPolicy,
    ask_with_retries,
    backend_options,
    console,
    keep_order,
    progress_bar,
)
from mipo_engine.stages.rubrics import load_rubrics
from mipo_engine.templates import render

Mode = Literal["rubric", "rlaif", "verify"]
SCORE_CHOICES = ("1", "2", "3", "4", "5")
PASS_SCORE, FAIL_SCORE = 5.0, 1.0
"""verify mode: the checker's verdict placed at the ends of the 1-5 scale."""
AGREEMENT_THRESHOLD = 4.0
"""A judge score at or above this counts as "adheres" when compared with the checker."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


class JudgeConfig(StageConfig):
    responses: Path
    """A generations artifact or a responses artifact."""
    out: Path
    rubrics: Path | None = None
    reference: Path | None = None
    mode: Mode = "rubric"
    backend: Literal["hf", "vllm", "openai"] = "hf"
    model: str | None = None
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="first attempt (0 = greedy)")
    retry_temperature: float = Field(0.7, ge=0.0, description="attempts after the first")
    max_attempts: int = Field(3, ge=1, le=20)
    structured: bool = True
    """Constrain replies to "1".."5" when the backend supports it (vLLM)."""
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    chunk_items: int = Field(32, ge=1, description="judgments per saved chunk (resume unit)")
    limit: int | None = Field(None, ge=1, description="judge only the first N input rows")
    base_url: str | None = None
    concurrency: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _rubrics_for_rubric_mode(self) -> JudgeConfig:
        if self.mode == "rubric" and self.rubrics is None:
            raise ValueError(
                "mode 'rubric' needs rubrics (make them with mipo rubrics), or use mode "
                "'rlaif' (whole context, one call) or 'verify' (checkers only, no model)"
            )
        return self

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


def summary_path(output: Path) -> Path:
    """``<out>.summary.json`` beside the judgments artifact."""
    output = Path(output)
    return output.with_name(output.stem + ".summary.json")


# --------------------------------------------------------------------------------------------
# What to judge
# --------------------------------------------------------------------------------------------


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
    config: JudgeConfig, known_items: Sequence[str]
) -> tuple[str, list[JudgedResponse]]:
    """The input's kind (generations / responses) and every response to judge, in order."""
    path = Path(config.responses)
    columns = list(parquet_columns(path))
    if "chosen" in columns and "rejected" in columns:
        if config.reference is not None:
            raise ConfigError(
                "a reference is compared with a responses artifact (id, prompt, context, "
                "response); judge the generations without it",
                key="reference",
            )
        frame = read_artifact(path, GENERATIONS)
        frame = frame.head(config.limit) if config.limit else frame
        return "generations", _generation_targets(frame, known_items)
    frame = read_artifact(path, RESPONSES)
    frame = frame.head(config.limit) if config.limit else frame
    references = _read_reference(config.reference) if config.reference is not None else {}
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


# --------------------------------------------------------------------------------------------
# Asking the judge
# --------------------------------------------------------------------------------------------


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


def _judge_chunk(
    backend: Backend | None, chunk: list[Judgment], config: JudgeConfig
) -> pl.DataFrame:
    rows: dict[str, dict[str, Any]] = {}
    asked: list[Judgment] = []
    for judgment in chunk:
        if config.mode == "verify":
            rows[judgment.id] = _row(judgment, "verify")
        elif config.mode == "rubric" and judgment.rubric is None:
            rows[judgment.id] = _row(
                judgment, "rubric", error="no rubric for this item; run mipo rubrics on it"
            )
        else:
            asked.append(judgment)
    if asked:
        assert backend is not None
        build = rlaif_judge_messages if config.mode == "rlaif" else rubric_judge_messages
        queries = [Query(j.id, build(j)) for j in asked]
        replies = ask_with_retries(
            backend,
            queries,
            parse_judge_score,
            config.policy(),
            choices=SCORE_CHOICES if config.structured else None,
        )
        for judgment, reply in zip(asked, replies, strict=True):
            rows[judgment.id] = _row(
                judgment,
                config.mode,
                score=reply.value,
                raw=reply.raw,
                error=reply.error,
                attempts=reply.attempts,
            )
    return pl.DataFrame([rows[j.id] for j in chunk], schema=JUDGMENTS.polars_schema())


# --------------------------------------------------------------------------------------------
# Aggregation and metrics
# --------------------------------------------------------------------------------------------


def aggregate_judgments(judgments: pl.DataFrame) -> pl.DataFrame:
    """Per-response score: the mean of its item scores, nulls skipped (seed 004 App. C.2).

    Returns columns ``id`` (the response id: generation pair id or responses id), ``role``
    and ``score`` (null when every item's score is null), in first-seen order.
    """
    return (
        judgments.group_by("response_id", "role", maintain_order=True)
        .agg(pl.col("score").mean())
        .rename({"response_id": "id"})
    )


def _paired(aggregated: pl.DataFrame, left: str, right: str) -> pl.DataFrame:
    """Ids judged in both roles: columns id, ``left``, ``right`` (scores may be null)."""

    def scores(role: str) -> pl.DataFrame:
        return aggregated.filter(pl.col("role") == role).select("id", pl.col("score").alias(role))

    return scores(left).join(scores(right), on="id", how="inner", maintain_order="left")


def critic_summary(aggregated: pl.DataFrame) -> dict[str, Any] | None:
    """Strict and tie-tolerant accuracy of chosen over rejected (seed 004 Table 6).

    A pair with a missing aggregate score counts as wrong (``critic_accuracy`` default).
    """
    pairs = _paired(aggregated, "chosen", "rejected")
    if pairs.height == 0:
        return None
    chosen, rejected = pairs["chosen"].to_list(), pairs["rejected"].to_list()
    strict, tolerant = critic_accuracy(chosen, rejected)
    missing = sum(c is None or r is None for c, r in zip(chosen, rejected, strict=True))
    return {"pairs": pairs.height, "strict": strict, "tie_tolerant": tolerant, "missing": missing}


def _win_rate_entry(pairs: pl.DataFrame) -> dict[str, Any]:
    scores, references = pairs["response"].to_list(), pairs["reference"].to_list()
    try:
        rate = win_rate(scores, references)
    except ValueError:
        rate = None  # no pair with both scores
    comparable = sum(
        s is not None and r is not None for s, r in zip(scores, references, strict=True)
    )
    return {"win_rate": rate, "pairs": comparable}


def win_rate_summary(
    aggregated: pl.DataFrame, tasks: dict[str, str | None]
) -> dict[str, Any] | None:
    """Win rate of responses over references, ties counted as wins (seed 004 sec. 5.4)."""
    pairs = _paired(aggregated, "response", "reference")
    if pairs.height == 0:
        return None
    pairs = pairs.with_columns(
        pl.col("id").replace_strict(tasks, default=None, return_dtype=pl.String()).alias("task")
    )
    by_task = {
        task or "unspecified": _win_rate_entry(group)
        for (task,), group in pairs.group_by("task", maintain_order=True)
    }
    return {"overall": _win_rate_entry(pairs), "by_task": by_task}


def adherence_summary(judgments: pl.DataFrame) -> dict[str, Any] | None:
    """Share of verifiable items the checker passed: overall, per role and per type."""
    checked = judgments.filter(pl.col("passed").is_not_null())
    if checked.height == 0:
        return None

    def rates(column: str) -> dict[str, float]:
        grouped = checked.group_by(column, maintain_order=True).agg(pl.col("passed").mean())
        return {str(key): round(value, 4) for key, value in grouped.iter_rows()}

    return {
        "checked": checked.height,
        "rate": round(float(checked["passed"].mean()), 4),
        "by_role": rates("role"),
        "by_type": rates("checker"),
    }


def checker_agreement(judgments: pl.DataFrame) -> dict[str, Any] | None:
    """How often "judge score >= 4" agrees with the checker on verifiable items.

    ``items`` counts verifiable items the judge scored; ``unscored`` those it gave no usable
    score (left out of the agreement, which is None when nothing was scored).
    """
    verifiable = judgments.filter(pl.col("passed").is_not_null() & (pl.col("mode") != "verify"))
    if verifiable.height == 0:
        return None
    both = verifiable.filter(pl.col("score").is_not_null())
    says_pass = both["score"] >= AGREEMENT_THRESHOLD
    passed = both["passed"]
    return {
        "items": both.height,
        "unscored": verifiable.height - both.height,
        "threshold": AGREEMENT_THRESHOLD,
        "agreement": round(float((says_pass == passed).mean()), 4) if both.height else None,
        "true_pass": int((says_pass & passed).sum()),
        "true_fail": int((~says_pass & ~passed).sum()),
        "false_pass": int((says_pass & ~passed).sum()),
        "false_fail": int((~says_pass & passed).sum()),
    }


def summarize(judgments: pl.DataFrame, tasks: dict[str, str | None], mode: str) -> dict[str, Any]:
    """Every metric the stage reports, from the judgments alone (plus the responses' tasks)."""
    aggregated = aggregate_judgments(judgments)
    reasons = Counter(e for e in judgments["error"].to_list() if e is not None)
    means = aggregated.group_by("role", maintain_order=True).agg(pl.col("score").mean())
    return {
        "mode": mode,
        "judgments": judgments.height,
        "responses": aggregated.height,
        "null_scores": int(judgments["score"].null_count()),
        "null_reasons": dict(reasons.most_common(10)),
        "mean_score": {role: score for role, score in means.iter_rows()},
        "critic_accuracy": critic_summary(aggregated),
        "win_rate": win_rate_summary(aggregated, tasks),
        "adherence": adherence_summary(judgments),
        "judge_vs_checker": checker_agreement(judgments),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    console.print(
        f"judged {summary['responses']} responses, {summary['judgments']} items "
        f"({summary['null_scores']} without a score)"
    )
    for role, score in summary["mean_score"].items():
        console.print(f"  mean score ({role}): {fmt(score)}")
    if critic := summary["critic_accuracy"]:
        console.print(
            f"  critic accuracy over {critic['pairs']} pairs: strict {fmt(critic['strict'])}, "
            f"tie-tolerant {fmt(critic['tie_tolerant'])}"
        )
    if wins := summary["win_rate"]:
        overall = wins["overall"]
        console.print(
            f"  win rate vs reference (ties win): {fmt(overall['win_rate'])} "
            f"over {overall['pairs']} pairs"
        )
        for task, entry in wins["by_task"].items():
            console.print(f"    {task}: {fmt(entry['win_rate'])} over {entry['pairs']} pairs")
    if adherence := summary["adherence"]:
        console.print(f"  verifiable adherence: {fmt(adherence['rate'])} of {adherence['checked']}")
    if (agreement := summary["judge_vs_checker"]) and agreement["items"]:
        console.print(
            f"  judge (score >= 4) agrees with checker on {fmt(agreement['agreement'])} "
            f"of {agreement['items']} verifiable items"
        )


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _run_pending(
    backend: Backend | None, todo: list[Judgment], total: int, config: JudgeConfig, journal: Any
) -> None:
    with progress_bar() as progress:
        task = progress.add_task("judging", total=total, completed=total - len(todo))
        for start in range(0, len(todo), config.chunk_items):
            chunk = todo[start : start + config.chunk_items]
            journal.append(_judge_chunk(backend, chunk, config))
            progress.advance(task, len(chunk))


def _needs_model(todo: Sequence[Judgment], mode: str) -> bool:
    if mode == "verify":
        return False
    return any(mode == "rlaif" or j.rubric is not None for j in todo)


def _inputs(config: JudgeConfig) -> dict[str, Path | None]:
    return {"responses": config.responses, "rubrics": config.rubrics, "reference": config.reference}


def run_judge(config: JudgeConfig, *, backend: Backend | None = None) -> Path:
    """Judge ``config.responses`` into ``config.out`` and its summary; return the output path."""
    output = check_output_path(config.out, config.responses, config.rubrics, config.reference)
    run = StageRun("judge", output, config.identity(), _inputs(config))
    if run.up_to_date() and summary_path(output).is_file():
        console.print(f"{output} is up to date.")
        return output
    rubrics = load_rubrics(config.rubrics) if config.rubrics is not None else {}
    kind, targets = read_targets(config, list(rubrics))
    plans = plan_judgments(targets, config.mode, rubrics)
    if not plans:
        raise InputError(
            "nothing to judge: no response has preference items"
            + (" that a checker can verify" if config.mode == "verify" else " (no context)"),
            file=config.responses,
        )
    journal = run.journal()
    done = journal.done_ids()
    todo = [plan for plan in plans if plan.id not in done]
    if done:
        console.print(f"Resuming: {len(done)} of {len(plans)} judgments already done.")
    started = time.perf_counter()
    owns_backend = backend is None and _needs_model(todo, config.mode)
    if owns_backend:
        backend = create_backend(
            config.backend,
            config.model,
            **backend_options(
                config.backend,
                batch_size=config.batch_size,
                base_url=config.base_url,
                concurrency=config.concurrency,
            ),
        )
    try:
        _run_pending(backend, todo, len(plans), config, journal)
    finally:
        if owns_backend and backend is not None:
            backend.close()
    loaded = journal.load()
    judgments = keep_order(
        loaded if loaded is not None else JUDGMENTS.empty(), "id", [plan.id for plan in plans]
    )
    tasks = {t.response_id: t.task for t in targets}
    summary = {"input": kind, **summarize(judgments, tasks, config.mode)}
    write_json_atomic(summary_path(output), summary)
    stats = {**summary, "seconds_this_run": round(time.perf_counter() - started, 3)}
    path = run.write(
        judgments,
        JUDGMENTS,
        model=None if config.mode == "verify" else config.model or "default",
        backend=None if config.mode == "verify" else config.backend,
        seed=config.seed,
        stats=stats,
    )
    journal.finish()
    _print_summary(summary)
    return path
