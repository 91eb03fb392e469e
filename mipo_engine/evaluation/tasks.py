"""Evaluation tasks of ``mipo eval``: which items, which prompt, how an answer is graded.

Seed 004 (sec. 5.4, App. C.1/C.3) evaluates on three kinds of task:

- **math** (GSM8K, SVAMP): an 8-shot chain-of-thought prompt, greedy decoding, the final
  number after ``####``; graded by numeric equality (``numbers_equal``).
- **mcq** (MMLU, ARC-Easy, ARC-Challenge): zero-shot, the model reasons and ends with
  ``The answer is: X``; graded by the extracted letter, plus the entropy of the next-token
  distribution over the answer letters right after ``The answer is:`` (Figs. 2-3).
- **personalization**: responses to held-out prompts under their user contexts; metrics live
  in ``mipo_engine.evaluation.personalization``.
- **ifeval** (IFEval, Zhou et al. 2023): one greedy chat response per prompt, checked by the
  reference verifiers (``mipo_engine.evaluation.ifeval``); the budget matches
  lm-evaluation-harness's ``ifeval`` task (1280 new tokens).

This module holds what is specific to each task and free of any model: the registry, item
loading and grading, and where the answer-letter distribution is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from mipo_engine.artifacts.location import as_location
from mipo_engine.artifacts.schemas import PROMPTS, validate_frame
from mipo_engine.artifacts.store import read_artifact
from mipo_engine.errors import InputError
from mipo_engine.evaluation.extract import extract_choice, extract_number, numbers_equal
from mipo_engine.sources.benchmarks import BENCHMARKS, choice_labels, load_benchmark, subsample
from mipo_engine.sources.hub import cached_hub_path, fetch_hub_benchmark
from mipo_engine.sources.ifeval import builtin_ifeval_path, load_ifeval

Kind = Literal["math", "mcq", "personalization", "ifeval"]
Row = dict[str, Any]

# The phrase seed 004 App. C.1 asks MCQ answers to end with; the answer-letter distribution
# is read at the position right after it.
ANSWER_MARKER = "The answer is:"

DEFAULT_PERSONALIZATION_DATA = "builtin:personalization-heldout"

HUB_DATA = "hub"
"""``--data hub``: the benchmark's pinned Hub copy even where a local default exists (IFEval)."""


@dataclass(frozen=True)
class EvalTask:
    """One task ``mipo eval --task`` accepts."""

    name: str
    kind: Kind
    max_new_tokens: int
    """Default generation budget: room for a worked solution (math) or brief reasoning (mcq)."""
    temperature: float
    """Default sampling temperature: greedy for graded tasks (seed 004 App. C.1)."""


EVAL_TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in (
        EvalTask("gsm8k", "math", 256, 0.0),
        EvalTask("svamp", "math", 256, 0.0),
        EvalTask("mmlu", "mcq", 128, 0.0),
        EvalTask("arc_easy", "mcq", 128, 0.0),
        EvalTask("arc_challenge", "mcq", 128, 0.0),
        # Sampled, so that the diversity of the responses (self-BLEU) means something.
        EvalTask("personalization", "personalization", 256, 0.7),
        EvalTask("ifeval", "ifeval", 1280, 0.0),
    )
}


def get_task(name: str) -> EvalTask:
    """The registered task ``name``; ValueError listing the choices otherwise."""
    try:
        return EVAL_TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown eval task {name!r}; choose one of {', '.join(EVAL_TASKS)}"
        ) from None


# --------------------------------------------------------------------------------------------
# Items


def load_items(
    task: EvalTask, data: str | Path | None = None, *, limit: int | None = None, seed: int = 0
) -> list[Row]:
    """Rows of the ``prompts`` schema to evaluate ``task`` on.

    ``data`` is, for IFEval, a file in the original ``input_data.jsonl`` layout (default: the
    bundled copy); for the other benchmarks, a file in the benchmark's original layout
    (default: the pinned Hub copy or ``$MIPO_SHARED_DATA``, ``Benchmark.default_path``) or a
    prompts ``.parquet`` from ``mipo ingest``; ``hub`` forces the Hub copy. For
    personalization, a prompts ``.parquet`` or ``builtin:<set>`` (default: the held-out rows
    of the built-in set). ``limit`` keeps a fixed random subset (``subsample`` with ``seed``,
    order preserved), as seed 004 App. C.1 evaluates on 200-500 items per benchmark.
    """
    if task.kind == "personalization":
        rows = _personalization_rows(data or DEFAULT_PERSONALIZATION_DATA)
    elif task.kind == "ifeval":
        rows = load_ifeval(fetch_hub_benchmark("ifeval") if data == HUB_DATA else data)
    elif data is not None and Path(data).suffix == ".parquet":
        rows = _prompts_file_rows(Path(data), expected_task=task.kind)
    else:
        if data == HUB_DATA:
            data = fetch_hub_benchmark(task.name)
        try:
            rows = load_benchmark(task.name, data)
        except FileNotFoundError as error:
            raise InputError(str(error), file=str(data or task.name)) from None
    if not rows:
        raise InputError("no items to evaluate", file=str(data or task.name))
    return subsample(rows, limit, seed=seed) if limit is not None else rows


def data_source(task: EvalTask, data: str | Path | None) -> str | Path | None:
    """The file, folder or object-store URL the items come from, for the manifest's input
    hashes."""
    if data == HUB_DATA:
        return cached_hub_path(task.name)
    if data is not None and not str(data).startswith("builtin:"):
        return as_location(data)
    if task.kind == "ifeval":
        return builtin_ifeval_path()
    if task.kind == "personalization":
        from mipo_engine.resources import resource_dir
        from mipo_engine.sources.builtin import BUILTIN_SETS

        name = str(data or DEFAULT_PERSONALIZATION_DATA).removeprefix("builtin:")
        file_name = BUILTIN_SETS.get(name, (None,))[0]
        return resource_dir("data") / file_name if file_name else None
    try:
        return BENCHMARKS[task.name].default_path()
    except (FileNotFoundError, InputError):  # no data found; load_items reports it
        return None


def _prompts_file_rows(path: Path, *, expected_task: str) -> list[Row]:
    """Rows of a prompts artifact, each checked to carry what ``expected_task`` needs."""
    rows = read_artifact(path, PROMPTS).to_dicts()
    for number, row in enumerate(rows, start=1):
        if row["task"] != expected_task:
            raise InputError(
                f"task is {row['task']!r} but this evaluation needs {expected_task!r} rows",
                file=path,
                row=number,
                field="task",
            )
        _check_row_fields(row, path, number)
    return rows


def _check_row_fields(row: Row, path: Path | str, number: int) -> None:
    """Gold answers for graded tasks, choices for mcq, a context for personalization."""
    task = row["task"]
    if task in ("math", "mcq") and not row.get("answer"):
        raise InputError("graded items need a gold answer", file=path, row=number, field="answer")
    if task == "mcq":
        choices = row.get("choices") or []
        if len(choices) < 2:
            raise InputError(
                "mcq items need at least 2 choices", file=path, row=number, field="choices"
            )
        if row["answer"] not in choice_labels(len(choices)):
            raise InputError(
                f"answer {row['answer']!r} is not one of the choice letters "
                f"{choice_labels(len(choices))}",
                file=path,
                row=number,
                field="answer",
            )
    if task == "personalization" and not (row.get("context") or "").strip():
        raise InputError(
            "personalization items need a user context", file=path, row=number, field="context"
        )


def _personalization_rows(data: str | Path) -> list[Row]:
    """Rows of a built-in set (``builtin:<name>``) or of a prompts ``.parquet``."""
    spec = str(data)
    if spec.startswith("builtin:"):
        return _builtin_rows(spec.removeprefix("builtin:"))
    return _prompts_file_rows(Path(spec), expected_task="personalization")


def _builtin_rows(name: str) -> list[Row]:
    """A built-in personalization set, split by the held-out id list like ``mipo ingest``."""
    from mipo_engine.resources import resource_dir
    from mipo_engine.sources.builtin import BUILTIN_SETS, in_split

    spec = f"builtin:{name}"
    if name not in BUILTIN_SETS or not name.startswith("personalization"):
        choices = sorted(f"builtin:{key}" for key in BUILTIN_SETS if key.startswith("pers"))
        raise InputError(
            f"unknown built-in personalization set; choose one of {choices}", file=spec
        )
    file_name, split = BUILTIN_SETS[name]
    frame = validate_frame(
        pl.read_ndjson(resource_dir("data") / file_name, schema=PROMPTS.polars_schema()),
        PROMPTS,
        file=spec,
    )
    keep = [row_id for row_id in frame["id"].to_list() if in_split(row_id, split)]
    frame = frame.filter(pl.col("id").is_in(keep))
    rows = frame.to_dicts()
    for number, row in enumerate(rows, start=1):
        _check_row_fields(row, spec, number)
    return rows


# --------------------------------------------------------------------------------------------
# Grading


def grade_math(response: str, gold: str) -> tuple[str | None, bool]:
    """(predicted number, correct): the number after ``####``, else the last number."""
    prediction = extract_number(response)
    return prediction, numbers_equal(prediction, gold)


def grade_mcq(response: str, gold: str, choices: Sequence[str]) -> tuple[str | None, bool]:
    """(predicted letter, correct), reading ``The answer is: X`` first (``extract_choice``)."""
    prediction = extract_choice(response, choice_labels(len(choices)), choices=choices)
    return prediction, prediction == gold


def answer_prefix(response: str) -> str:
    """The response text after which the answer letter is read.

    If the model wrote ``The answer is:``, the response up to and including its *last*
    occurrence (the statement ``extract_choice`` reads as the answer); otherwise the
    reasoning followed by a new line holding the marker, as if the model had written it.
    """
    cut = response.rfind(ANSWER_MARKER)
    if cut >= 0:
        return response[: cut + len(ANSWER_MARKER)]
    reasoning = response.rstrip()
    return f"{reasoning}\n{ANSWER_MARKER}" if reasoning else ANSWER_MARKER


def join_completion(prompt_text: str, response: str) -> str:
    """Prompt and generated text as one string.

    Backends return the completion with surrounding white space stripped; prompts here end
    with a label such as ``Reasoning:`` that the model continues after a space.
    """
    return f"{prompt_text} {response}" if response else f"{prompt_text} "


def letter_continuations(
    tokenizer: Any, context: str, letters: Sequence[str]
) -> tuple[list[int], list[list[int]]] | None:
    """Token ids of ``context`` and of each answer letter's continuation after it.

    Each letter is written as ``" X"`` after the context, the way ``The answer is: X`` is
    tokenised. Tokenizers differ on whether the space joins the letter (``"▁A"``, ``"ĠA"``)
    or stands alone (``"Ġ"``, ``"C"``), even across the letters of one tokenizer, so the
    context is extended by the tokens all letters share and each letter's continuation is
    what follows. With Gemma's tokenizer every continuation is a single token, and its
    log-prob is the next-token log-prob at the answer position. None when a continuation is
    empty or two letters tokenise alike.
    """
    encoded = [
        tokenizer(context + " " + letter, add_special_tokens=False)["input_ids"]
        for letter in letters
    ]
    shared = _common_prefix_length(encoded)
    continuations = [list(ids[shared:]) for ids in encoded]
    if any(not continuation for continuation in continuations):
        return None
    if len({tuple(continuation) for continuation in continuations}) != len(continuations):
        return None
    return list(encoded[0][:shared]), continuations


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all sequences share."""
    shortest = min(len(sequence) for sequence in sequences)
    for position in range(shortest):
        token = sequences[0][position]
        if any(sequence[position] != token for sequence in sequences[1:]):
            return position
    return shortest
