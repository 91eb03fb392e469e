"""``mipo eval``: a model (+ adapter) on a benchmark or personalization set -> ``eval`` results.

Seed 004 sec. 5.4 and App. C.1/C.3 fix the protocol (see ``mipo_engine.evaluation.tasks``):

1. load the items (benchmark file or built-in/held-out prompts), optionally a fixed subset;
2. generate one response per item (``--samples`` per prompt for personalization), in chunks;
   each finished chunk is kept as a journal part, so a killed run resumes where it stopped;
3. grade each response: extracted answer (math, mcq), answer-letter entropy (mcq), context
   adherence and conditional PMI under the base model (personalization);
4. optionally judge personalization responses against a reference eval's responses;
   IFEval responses are checked by the reference verifiers (``evaluation.ifeval``), and
   with ``--responses`` a file of existing responses is scored instead of steps 2-3;
5. write the per-item artifact, a summary JSON beside it (``E.summary.json``), and print a
   table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import polars as pl
from pydantic import BaseModel, Field, field_validator, model_validator
from rich.console import Console

from mipo_engine.artifacts import location
from mipo_engine.artifacts.journal import RowJournal
from mipo_engine.artifacts.location import Location
from mipo_engine.artifacts.manifest import fingerprint
from mipo_engine.artifacts.run import StageRun, check_output_path, derive_seed
from mipo_engine.artifacts.schemas import EVAL
from mipo_engine.artifacts.store import is_complete, summary_path, write_json_atomic
from mipo_engine.backends.base import Backend, GenerationRequest, SamplingConfig
from mipo_engine.backends.registry import (
    BackendChoice,
    LocalBackendChoice,
    backend_options,
    create_backend,
)
from mipo_engine.chat import build_messages, user_turn
from mipo_engine.commandline import Cli
from mipo_engine.errors import ConfigError
from mipo_engine.evaluation.copying import copy_overlap
from mipo_engine.evaluation.ifeval import kwargs_json, verify
from mipo_engine.evaluation.personalization import adherence_counts, conditional_logps
from mipo_engine.evaluation.raw import (
    backend_tokenizer,
    check_raw_support,
    complete_raw,
    continuation_logprobs,
    with_bos,
)
from mipo_engine.evaluation.results import summarize
from mipo_engine.evaluation.stats import answer_entropy, letter_probabilities
from mipo_engine.evaluation.tasks import (
    EVAL_TASKS,
    HUB_DATA,
    EvalTask,
    answer_prefix,
    data_source,
    get_task,
    grade_math,
    grade_mcq,
    join_completion,
    letter_continuations,
    load_items,
)
from mipo_engine.modelcalls.running import check_engine, run_model_chunks, unfinished
from mipo_engine.modelcalls.settings import LocalBackendName, ModelCallConfig
from mipo_engine.sources.benchmarks import EVAL_STOP_SEQUENCES, choice_labels, eval_prompt
from mipo_engine.sources.ifeval import read_responses

console = Console(stderr=True)

BackendName = LocalBackendChoice
JudgeBackendName = BackendChoice
JudgeMode = Literal["rubric", "rlaif", "verify"]


class CompareOptions(BaseModel):
    """The options of ``mipo eval --compare``: the command's own, beside ``EvalConfig``'s."""

    outputs: Annotated[list[Path] | None, Cli(argument=True)] = Field(
        None, description="With --compare: the eval outputs (.parquet) to put side by side."
    )
    compare: Annotated[bool, Cli("--compare")] = Field(
        False,
        description="Compare eval outputs given as arguments instead of evaluating: "
        "side-by-side table with bootstrap 95% intervals and paired differences to the first.",
    )
    label: list[str] | None = Field(None, description="With --compare: a name per output (repeat).")


class EvalConfig(ModelCallConfig):
    """Settings of ``mipo eval``; ``None`` numbers take the task's default."""

    task: str = Field(
        description="gsm8k, svamp (8-shot math), mmlu, arc_easy, arc_challenge (zero-shot MCQ), ifeval (IFEval's 541 prompts, reference verifiers) or personalization (held-out prompts with user contexts)."
    )
    """One of ``EVAL_TASKS``: gsm8k, svamp, mmlu, arc_easy, arc_challenge, personalization,
    ifeval."""
    out: Annotated[Location, Cli("--out", "-o")] = Field(
        description="Per-item results .parquet (summary JSON written beside it); with --compare, an optional .md or .json file for the table."
    )
    model: str | None = Field(
        None,
        description="Model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct.",
    )
    """Model name, path or hub id; None is the default catalogue model (``mipo models``)."""
    adapter: Path | None = Field(
        None,
        description="LoRA adapter folder applied on top of --model (PMI uses the model without it).",
    )
    """A LoRA adapter folder (``mipo train --lora``) applied on top of ``model``."""
    data: str | None = Field(
        None,
        description="Benchmark file in its original layout (a local path or an s3:// or gs:// URL), a prompts .parquet, builtin:<set>, or 'hub' (the pinned Hugging Face copy). Default: the Hub copy for benchmarks (cached after the first run; offline, pass the file), the bundled prompts for ifeval, builtin:personalization-heldout for personalization.",
    )
    """Benchmark file, prompts ``.parquet``, ``builtin:<set>`` or ``hub``; None: the task's
    default (the pinned Hub copy for benchmarks, the bundled prompts for IFEval)."""
    limit: int | None = Field(
        None, ge=1, description="Evaluate a fixed random subset of N items (--seed)."
    )
    """Evaluate a fixed random subset of this many items (seed ``seed``)."""
    backend: LocalBackendName = Field("hf", description="Model backend: hf or vllm.")
    seed: int = Field(0, description="Seeds the --limit subset and sampling.")
    """Seeds the subset (``--limit``) and, per response, sampling."""
    max_new_tokens: int | None = Field(
        None, ge=1, description="Generation budget; default 256 (math, personalization), 128 (mcq)."
    )
    temperature: float | None = Field(
        None, ge=0.0, description="Default 0 (greedy) for benchmarks, 0.7 for personalization."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    samples: int = Field(
        1,
        ge=1,
        le=64,
        description="Responses per prompt (personalization; self-BLEU within prompt).",
    )
    """Responses per prompt (personalization only): diversity within a prompt."""
    chunk_size: int = Field(
        32, ge=1, description="Responses per saved chunk: the unit of resume after a crash."
    )
    """Responses per saved chunk: the unit of resume after a crash."""
    reference: Location | None = Field(
        None,
        description="A previous personalization eval output: judge both and report the win rate (ties count as wins) against its responses.",
    )
    """A previous personalization eval: judge both and report the win rate against it."""
    judge_mode: JudgeMode = Field(
        "rubric",
        description="rubric (one judge call per preference item), rlaif (one per context) or verify (programmatic checkers, no model).",
    )
    """rubric (one judge call per item and rubric), rlaif (one per context), verify (checkers)."""
    judge_backend: JudgeBackendName = Field("hf", description="Judge backend: hf, vllm or openai.")
    judge_model: str | None = Field(
        None,
        description="Judge model (a name from `mipo models`, a file, folder or Hub id); default: smollm2-135m-instruct.",
    )
    judge_base_url: str | None = Field(
        None, description="OpenAI-compatible judge server URL; key from OPENAI_API_KEY."
    )
    rubrics: Location | None = Field(
        None,
        description="Rubrics artifact (mipo rubrics) for rubric mode; made with the judge if absent.",
    )
    """Rubrics artifact (``mipo rubrics``); rubric mode builds one with the judge if absent."""
    responses: Location | None = Field(
        None,
        description="ifeval: score these responses instead of running a model: JSONL with 'prompt' and 'response' per line (IFEval's format) or a .parquet with those columns (e.g. an ifeval eval output); a local path or an s3:// or gs:// URL.",
    )
    """IFEval only: score these existing responses (JSONL or Parquet) instead of a model."""

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        get_task(value)  # ValueError naming the choices
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> EvalConfig:
        kind = EVAL_TASKS[self.task].kind
        if self.samples > 1 and kind != "personalization":
            raise ValueError("samples > 1 applies to the personalization task only")
        if self.reference is not None and kind != "personalization":
            raise ValueError("--reference (judging) applies to the personalization task only")
        if self.responses is not None and kind != "ifeval":
            raise ValueError("--responses (scoring given responses) applies to ifeval only")
        if self.responses is not None and self.adapter is not None:
            raise ValueError("--responses scores given responses; --adapter has no use with it")
        return self

    @property
    def eval_task(self) -> EvalTask:
        return get_task(self.task)

    def sampling(self) -> SamplingConfig:
        """Generation settings: the task's defaults unless overridden."""
        task = self.eval_task
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens or task.max_new_tokens,
            temperature=task.temperature if self.temperature is None else self.temperature,
            top_p=self.top_p,
            stop=EVAL_STOP_SEQUENCES if task.kind in ("math", "mcq") else (),
        )

    def response_identity(self) -> dict[str, object]:
        """Settings that change the responses and their per-item grades."""
        return self.model_dump(
            mode="json",
            include={
                "task",
                "model",
                "adapter",
                "data",
                "limit",
                "backend",
                "seed",
                "max_new_tokens",
                "temperature",
                "top_p",
                "samples",
                "responses",
            },
        )

    chunk_key: ClassVar[str] = "chunk_items"

    option_help: ClassVar[dict[str, str]] = {
        "batch_size": "Sequences per forward batch (hf).",
    }


@dataclass(frozen=True)
class Unit:
    """One response to produce: an item and the sample index."""

    id: str
    item: dict[str, Any]
    sample: int
    seed: int


def plan_units(items: list[dict[str, Any]], samples: int, seed: int) -> list[Unit]:
    """One unit per (item, sample); ids stay the item id for sample 0."""
    units = []
    for item in items:
        for sample in range(samples):
            unit_id = item["id"] if sample == 0 else f"{item['id']}#{sample}"
            units.append(Unit(unit_id, item, sample, derive_seed(seed, unit_id)))
    return units


# --------------------------------------------------------------------------------------------
# Per-task evaluation of one chunk


def _base_row(unit: Unit, config: EvalConfig, text: str, completion: Any) -> dict[str, Any]:
    """Columns every task fills; task columns start null."""
    item = unit.item
    row = dict.fromkeys(EVAL.names)
    row.update(
        {
            "id": unit.id,
            "item_id": item["id"],
            "sample": unit.sample,
            "task": config.task,
            "prompt": item["prompt"],
            "context": item.get("context"),
            "context_items": item.get("context_items"),
            "input": text,
            "response": completion.text,
            "finish_reason": completion.finish_reason,
            "response_tokens": completion.num_tokens,
            "seed": unit.seed,
        }
    )
    return row


def _evaluate_math(backend: Backend, units: list[Unit], config: EvalConfig) -> list[dict]:
    texts = [eval_prompt(unit.item) for unit in units]
    completions = complete_raw(backend, texts, [u.seed for u in units], config.sampling())
    rows = []
    for unit, text, completion in zip(units, texts, completions, strict=True):
        row = _base_row(unit, config, text, completion)
        prediction, correct = grade_math(completion.text, unit.item["answer"])
        row.update(answer=unit.item["answer"], prediction=prediction, correct=correct)
        rows.append(row)
    return rows


def answer_letter_logprobs(
    backend: Backend, texts: list[str], responses: list[str], letter_counts: list[int]
) -> list[list[float] | None]:
    """Log-probs of each answer letter right after ``The answer is:`` (seed 004 Figs. 2-3).

    The context is the prompt, then the response up to its last ``The answer is:`` (or the
    response plus that marker, when the model never wrote it); the log-probs of ``" A"``,
    ``" B"``, ... after it come from one forward pass when each letter is one token (Gemma).
    None for an item whose letters cannot be told apart by their tokens.
    """
    tokenizer = backend_tokenizer(backend)
    contexts, continuations, positions = [], [], []
    for index, (text, response, count) in enumerate(
        zip(texts, responses, letter_counts, strict=True)
    ):
        context = join_completion(text, answer_prefix(response))
        found = letter_continuations(tokenizer, context, choice_labels(count))
        if found is None:
            continue
        context_ids, letter_ids = found
        contexts.append(with_bos(tokenizer, context_ids))
        continuations.append(letter_ids)
        positions.append(index)
    values = continuation_logprobs(backend, contexts, continuations)
    results: list[list[float] | None] = [None] * len(texts)
    for index, logprobs in zip(positions, values, strict=True):
        results[index] = logprobs
    return results


def _evaluate_mcq(backend: Backend, units: list[Unit], config: EvalConfig) -> list[dict]:
    texts = [eval_prompt(unit.item) for unit in units]
    completions = complete_raw(backend, texts, [u.seed for u in units], config.sampling())
    letter_logprobs = answer_letter_logprobs(
        backend,
        texts,
        [c.text for c in completions],
        [len(unit.item["choices"]) for unit in units],
    )
    rows = []
    for unit, text, completion, logprobs in zip(
        units, texts, completions, letter_logprobs, strict=True
    ):
        row = _base_row(unit, config, text, completion)
        gold, choices = unit.item["answer"], unit.item["choices"]
        prediction, correct = grade_mcq(completion.text, gold, choices)
        row.update(answer=gold, prediction=prediction, correct=correct)
        if logprobs is not None:
            letters = choice_labels(len(choices))
            probabilities = letter_probabilities(dict(zip(letters, logprobs, strict=True)))
            row.update(letter_logprobs=logprobs, entropy=answer_entropy(probabilities))
        rows.append(row)
    return rows


def _evaluate_personalization(
    backend: Backend, base: Backend, units: list[Unit], config: EvalConfig
) -> list[dict]:
    messages = [build_messages(u.item["prompt"], u.item["context"]) for u in units]
    requests = [
        GenerationRequest(unit.id, message, unit.seed)
        for unit, message in zip(units, messages, strict=True)
    ]
    completions = backend.generate(requests, config.sampling())
    logps = conditional_logps(
        base,
        [u.item["prompt"] for u in units],
        [u.item["context"] for u in units],
        [c.text for c in completions],
    )
    rows = []
    for unit, message, completion, (with_context, without_context) in zip(
        units, messages, completions, logps, strict=True
    ):
        row = _base_row(unit, config, backend.render(message), completion)
        verifiable, met = adherence_counts(unit.item.get("context_items"), completion.text)
        row.update(
            verifiable_items=verifiable,
            items_met=met,
            logp_with_context=with_context,
            logp_without_context=without_context,
            pmi=with_context - without_context,
            copy_overlap=copy_overlap(
                completion.text, user_turn(unit.item["prompt"], unit.item["context"])
            ),
        )
        rows.append(row)
    return rows


def _ifeval_grades(item: dict[str, Any], response: str) -> dict[str, Any]:
    """The ifeval columns of a row: instructions, kwargs and the verifiers' verdicts."""
    verdict = verify(item["prompt"], item["instruction_ids"], item["kwargs"], response)
    return {
        "instruction_ids": list(verdict.instruction_ids),
        "instruction_kwargs": kwargs_json(item["kwargs"]),
        "strict_followed": list(verdict.strict),
        "loose_followed": list(verdict.loose),
        "correct": verdict.prompt_strict,
    }


def _evaluate_ifeval(backend: Backend, units: list[Unit], config: EvalConfig) -> list[dict]:
    """One chat response per IFEval prompt, checked by the reference verifiers."""
    messages = [build_messages(unit.item["prompt"]) for unit in units]
    requests = [
        GenerationRequest(unit.id, message, unit.seed)
        for unit, message in zip(units, messages, strict=True)
    ]
    completions = backend.generate(requests, config.sampling())
    rows = []
    for unit, message, completion in zip(units, messages, completions, strict=True):
        row = _base_row(unit, config, backend.render(message), completion)
        row.update(_ifeval_grades(unit.item, completion.text))
        rows.append(row)
    return rows


def _scored_rows(pairs: list[tuple[dict[str, Any], str]], config: EvalConfig) -> pl.DataFrame:
    """Rows of the ``eval`` artifact for given (item, response) pairs; no model involved."""
    rows = []
    for item, response in pairs:
        row = dict.fromkeys(EVAL.names)
        row.update(
            id=item["id"],
            item_id=item["id"],
            sample=0,
            task=config.task,
            prompt=item["prompt"],
            input=item["prompt"],
            response=response,
            seed=config.seed,
        )
        row.update(_ifeval_grades(item, response))
        rows.append(row)
    return pl.DataFrame(rows, schema=EVAL.polars_schema())


# --------------------------------------------------------------------------------------------
# Backends


def _backend_options(config: EvalConfig, *, with_adapter: bool) -> dict[str, object]:
    adapter = str(config.adapter) if with_adapter and config.adapter is not None else None
    return backend_options(
        config.backend,
        batch_size=config.batch_size,
        adapter=adapter,
        show_progress=False,  # the stage shows its own bar
    )


@dataclass
class _Backends:
    """The evaluated model and, for the PMI, the base model (the same one without adapter)."""

    policy: Backend
    base: Backend | None


@contextmanager
def _open_backends(
    config: EvalConfig, policy: Backend | None, base: Backend | None
) -> Iterator[_Backends]:
    """Create what the caller did not pass; close only what was created here."""
    owned: list[Backend] = []
    try:
        if policy is None:
            policy = create_backend(
                config.backend, config.model, **_backend_options(config, with_adapter=True)
            )
            owned.append(policy)
        kind = config.eval_task.kind
        if kind in ("math", "mcq"):
            check_raw_support(policy)
        elif kind == "personalization" and base is None:
            if config.adapter is None:
                base = policy
            else:
                base = policy.without_adapter()
                if base is None:
                    base = create_backend(
                        config.backend,
                        config.model,
                        **_backend_options(config, with_adapter=False),
                    )
                    owned.append(base)
        yield _Backends(policy, base)
    finally:
        for backend in owned:
            backend.close()


def _evaluate_chunk(backends: _Backends, units: list[Unit], config: EvalConfig) -> list[dict]:
    kind = config.eval_task.kind
    if kind == "math":
        return _evaluate_math(backends.policy, units, config)
    if kind == "mcq":
        return _evaluate_mcq(backends.policy, units, config)
    if kind == "ifeval":
        return _evaluate_ifeval(backends.policy, units, config)
    assert backends.base is not None  # set by _open_backends for personalization
    return _evaluate_personalization(backends.policy, backends.base, units, config)


def _evaluate_frame(backends: _Backends, units: list[Unit], *, config: EvalConfig) -> pl.DataFrame:
    return pl.DataFrame(_evaluate_chunk(backends, units, config), schema=EVAL.polars_schema())


# --------------------------------------------------------------------------------------------
# The stage


def _check_paths(config: EvalConfig) -> Path:
    """The output path, after checking the inputs exist and none would be overwritten."""
    local = config.data and config.data != HUB_DATA and not config.data.startswith("builtin:")
    data_file = location.as_location(config.data) if local else None
    output = check_output_path(
        config.out, data_file, config.reference, config.rubrics, config.responses
    )
    if data_file is not None and not location.exists(data_file):
        raise ConfigError(f"data file {data_file} does not exist", key="data")
    if config.adapter is not None and not config.adapter.is_dir():
        raise ConfigError(f"adapter folder {config.adapter} does not exist", key="adapter")
    if config.responses is not None and not location.is_file(config.responses):
        raise ConfigError(f"responses file {config.responses} does not exist", key="responses")
    if config.rubrics is not None and not location.is_file(config.rubrics):
        raise ConfigError(f"rubrics file {config.rubrics} does not exist", key="rubrics")
    if config.reference is not None and not is_complete(config.reference):
        raise ConfigError(
            f"reference {config.reference} is not a complete eval output (run mipo eval first)",
            key="reference",
        )
    return output


def _ordered(frame: pl.DataFrame, units: list[Unit]) -> pl.DataFrame:
    """Rows of ``frame`` in unit order (journal parts arrive in completion order)."""
    order = {unit.id: index for index, unit in enumerate(units)}
    return (
        frame.filter(pl.col("id").is_in(list(order)))
        .with_columns(pl.col("id").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
        .sort("_order")
        .drop("_order")
    )


def _generate_all(
    config: EvalConfig,
    units: list[Unit],
    journal: RowJournal,
    policy: Backend | None,
    base: Backend | None,
) -> int:
    """Evaluate the units the journal does not hold yet; return how many were evaluated."""
    todo, done = unfinished(journal, units, "responses already evaluated", key=lambda unit: unit.id)
    if not todo:
        return 0
    local = nullcontext(None) if config.engine == "ray" else _open_backends(config, policy, base)
    with local as backends:
        run_model_chunks(
            todo,
            partial(_evaluate_frame, config=config),
            journal,
            settings=config,
            local=backends,
            opener=partial(_open_backends, config, None, None),
            label=f"eval {config.task}",
            total=len(units),
            done=len(done),
        )
    return len(todo)


def _judge(frame: pl.DataFrame, output: Path, config: EvalConfig) -> pl.DataFrame:
    """Judge scores of the responses and of the reference's, and wins (ties win)."""
    from mipo_engine.evaluation.judged import judge_against_reference

    assert config.reference is not None
    return judge_against_reference(
        frame,
        output=output,
        reference=config.reference,
        mode=config.judge_mode,
        backend=config.judge_backend,
        model=config.judge_model,
        base_url=config.judge_base_url,
        rubrics=config.rubrics,
        batch_size=config.batch_size,
    )


def _score_responses(config: EvalConfig, run: StageRun, items: list[dict[str, Any]]) -> Path:
    """``--responses``: verify existing responses; everything is checked before writing."""
    assert config.responses is not None
    started = time.perf_counter()
    with location.local_copy(config.responses, key="responses") as responses:
        frame = _scored_rows(read_responses(Path(responses), items), config)
    summary = summarize(frame, config.eval_task.kind)
    summary.update(
        model=None,
        responses_file=str(config.responses),
        responses_this_run=frame.height,
        seconds_this_run=round(time.perf_counter() - started, 3),
    )
    write_json_atomic(summary_path(run.output), summary)
    return run.write(
        frame, EVAL, model="responses", backend="none", seed=config.seed, stats=summary
    )


def run_eval(
    config: EvalConfig, *, backend: Backend | None = None, base_backend: Backend | None = None
) -> Path:
    """Evaluate ``config.model`` on ``config.task`` into ``config.out``; return the path.

    ``backend`` / ``base_backend`` may be passed to reuse loaded models (tests, pipelines);
    by default they are created from the config and closed at the end.
    """
    output = _check_paths(config)
    task = config.eval_task
    with location.local_copy(config.data, key="data") as data:
        items = load_items(task, data, limit=config.limit, seed=config.seed)
    units = plan_units(items, config.samples, config.seed)
    inputs = {
        "data": data_source(task, config.data),
        "adapter": config.adapter,
        "reference": config.reference,
        "rubrics": config.rubrics,
        "responses": config.responses,
    }
    run = StageRun("eval", output, config.identity(), inputs)
    if config.responses is None:
        check_engine(config, shared_backend=backend is not None or base_backend is not None)
    if run.up_to_date():
        console.print(f"{output} is up to date; nothing to do.")
        return output
    if config.responses is not None:
        return _score_responses(config, run, items)
    # Responses depend on the items and the model, not on how they are judged afterwards.
    response_inputs = [entry for entry in run.input_info if entry["role"] in ("data", "adapter")]
    journal = RowJournal(output, fingerprint(config.response_identity(), response_inputs))
    started = time.perf_counter()
    evaluated = _generate_all(config, units, journal, backend, base_backend)
    seconds = time.perf_counter() - started
    frame = _ordered(journal.load(), units)
    if config.reference is not None:
        frame = _judge(frame, output, config)
    summary = summarize(frame, task.kind)
    summary.update(
        model=config.model or "default",
        adapter=str(config.adapter) if config.adapter else None,
        backend=config.backend,
        sampling=config.sampling().__dict__ | {"stop": list(config.sampling().stop)},
        responses_this_run=evaluated,
        seconds_this_run=round(seconds, 3),
        engine=config.engine_settings(),
    )
    # Summary first, manifest last: an artifact is complete only once its manifest exists.
    write_json_atomic(summary_path(output), summary)
    path = run.write(
        frame,
        EVAL,
        model=config.model or "default",
        backend=config.backend,
        seed=config.seed,
        stats=summary,
    )
    journal.finish()
    return path
