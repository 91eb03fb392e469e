"""``mipo score``: pairs -> reference log-probs and pointwise mutual information (``scores``).

For every pair both responses are scored under the *training* prompt (``chosen_input`` of a
generations row, ``prompt`` of a preferences row; DESIGN.md section 3), with ``encode_pair``,
the tokenisation ``mipo train`` uses, so the trainer's step-0 log-ratios are exactly 0.

``pmi_chosen`` measures how much the conditioning that separates chosen from rejected
explains the chosen response, under the reference model:

- personalization strategies (``missing-context``, ``random-context``, ``prompt``):
  log pi_ref(y_c | x, c) - log pi_ref(y_c | x), the second term scored under the request
  rendered WITHOUT the user context (seed 004 sec. 4: the MI between context and response);
- ``random-prompt``: log pi_ref(y_c | x) - log pi_ref(y_c | x'), x' = the rejected sample's
  conditioning ``rejected_input``.

It is null where it is undefined: a personalization row without a context, or a
``preferences`` input (which does not record the alternative conditioning).

Rows are scored in chunks; each finished chunk is a journal part, so a killed run resumes at
the first unfinished chunk and ends with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import polars as pl
from pydantic import Field

from mipo_engine.artifacts.location import Location
from mipo_engine.artifacts.pairs import read_pairs
from mipo_engine.artifacts.run import StageRun, check_output_path
from mipo_engine.artifacts.schemas import SCORES
from mipo_engine.backends.base import Backend
from mipo_engine.backends.registry import LocalBackendChoice, backend_options
from mipo_engine.chat import Message, build_messages
from mipo_engine.commandline import Cli
from mipo_engine.modelcalls.running import (
    BackendHandle,
    check_engine,
    finished_rows,
    run_model_chunks,
    unfinished,
    write_output,
)
from mipo_engine.modelcalls.settings import ModelCallConfig

PERSONALIZATION_STRATEGIES = ("missing-context", "random-context", "prompt")
PROMPT_STRATEGIES = ("random-prompt",)


class ScoreConfig(ModelCallConfig):
    """Settings of ``mipo score``."""

    generations: Location = Field(
        description="Pairs to score: a generations .parquet (from mipo generate) or a preferences .parquet (from mipo export)."
    )
    """A ``generations`` artifact (or a ``preferences`` artifact)."""
    out: Annotated[Location, Cli("--out", "-o")] = Field(description="Output scores .parquet.")
    model: str | None = Field(
        None,
        description="Reference model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct.",
    )
    """The reference model; None: the default catalogue model (``mipo models``)."""
    backend: LocalBackendChoice = Field("hf", description="Scoring backend: hf or vllm.")
    batch_size: int = Field(8, ge=1, description="Sequences per forward batch (hf).")
    max_length: int = Field(
        1024, ge=8, description="Tokens per prompt + response; use the same value as mipo train."
    )
    pmi: bool = Field(
        True,
        description="Also compute pmi_chosen (one more forward per pair): log pi_ref(y_c|x,c) - log pi_ref(y_c|x), or log pi_ref(y_c|x) - log pi_ref(y_c|x') for random-prompt.",
    )
    """Also score the chosen response under the alternative conditioning (pmi_chosen)."""
    chunk_size: int = Field(
        64, ge=1, description="Pairs per saved chunk: the unit of resume after a crash."
    )
    adapter: str | None = Field(
        None, description="LoRA adapter folder to score with (hf), e.g. a previous policy."
    )
    """A LoRA adapter folder to score with (hf), e.g. a previous round's policy."""
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Weights dtype (hf): auto (bf16 on GPU), float32, bfloat16."
    )
    """Weights dtype (hf): auto = bf16 on GPU, fp32 on CPU, like ``mipo train``."""

    chunk_key: ClassVar[str] = "chunk_rows"


def alternative_prompt(row: dict[str, Any], render: Callable[[list[Message]], str]) -> str | None:
    """The conditioning of pmi_chosen's second term, or None where PMI is undefined."""
    strategy = row.get("strategy")
    if strategy in PERSONALIZATION_STRATEGIES:
        context, request = row.get("context"), row.get("user_prompt")
        if not context or not str(context).strip() or request is None:
            return None
        return render(build_messages(request))
    if strategy in PROMPT_STRATEGIES:
        return row.get("rejected_input")
    return None


def _backend_options(config: ScoreConfig) -> dict[str, object]:
    return backend_options(
        config.backend, batch_size=config.batch_size, adapter=config.adapter, dtype=config.dtype
    )


def _score(
    backend: Backend, prompts: list[str], responses: list[str], max_length: int
) -> list[Any]:
    """``backend.score`` with the shared truncation rule."""
    return backend.score(prompts, responses, max_length=max_length)


def score_rows(
    backend: Backend, rows: list[dict[str, Any]], *, max_length: int, pmi: bool
) -> pl.DataFrame:
    """Score one chunk of pair rows; one backend call covers all its sequences."""
    prompts, responses = [], []
    for row in rows:
        prompts += [row["prompt"], row["prompt"]]
        responses += [row["chosen"], row["rejected"]]
    alternatives = [alternative_prompt(row, backend.render) if pmi else None for row in rows]
    with_pmi = [i for i, alt in enumerate(alternatives) if alt is not None]
    for index in with_pmi:
        prompts.append(alternatives[index])  # type: ignore[arg-type]
        responses.append(rows[index]["chosen"])
    results = _score(backend, prompts, responses, max_length)
    pmi_values: list[float | None] = [None] * len(rows)
    for offset, index in enumerate(with_pmi):
        pmi_values[index] = results[2 * index].logp - results[2 * len(rows) + offset].logp
    return pl.DataFrame(
        {
            "id": [row["id"] for row in rows],
            "ref_chosen_logps": [results[2 * i].logp for i in range(len(rows))],
            "ref_rejected_logps": [results[2 * i + 1].logp for i in range(len(rows))],
            "chosen_tokens": [results[2 * i].num_tokens for i in range(len(rows))],
            "rejected_tokens": [results[2 * i + 1].num_tokens for i in range(len(rows))],
            "pmi_chosen": pmi_values,
        },
        schema=SCORES.polars_schema(),
    )


def _score_chunk(
    model: BackendHandle, chunk: list[dict[str, Any]], *, max_length: int, pmi: bool
) -> pl.DataFrame:
    return score_rows(model.get(), chunk, max_length=max_length, pmi=pmi)


def _stats(frame: pl.DataFrame, tokens: int, seconds: float) -> dict[str, Any]:
    pmi = frame["pmi_chosen"].drop_nulls()
    return {
        "pairs": frame.height,
        "scored_tokens_this_run": tokens,
        "seconds_this_run": round(seconds, 3),
        "tokens_per_second_this_run": round(tokens / seconds, 2) if seconds > 0 else None,
        "pmi_rows": pmi.len(),
        "pmi_chosen_mean": float(pmi.mean()) if pmi.len() else None,  # type: ignore[arg-type]
        "pmi_chosen_positive_fraction": float((pmi > 0).mean()) if pmi.len() else None,  # type: ignore[arg-type]
    }


def run_score(config: ScoreConfig, *, backend: Backend | None = None) -> Path:
    """Score the pairs of ``config.generations`` into ``config.out``; return the output path."""
    output = check_output_path(config.out, config.generations)
    check_engine(config, shared_backend=backend is not None)
    with BackendHandle(config.backend, config.model, _backend_options(config), backend) as model:
        return _score_pairs(config, output, model)


def _score_pairs(config: ScoreConfig, output: Path, model: BackendHandle) -> Path:
    pairs = read_pairs(config.generations, render=lambda m: model.get().render(m))
    run = StageRun("score", output, config.identity(), {"generations": config.generations})
    journal = run.journal()
    rows = list(pairs.iter_rows(named=True))
    todo, done = unfinished(journal, rows, "pairs already scored", key=lambda row: row["id"])
    tokens, chunks_run, started = 0, 0, time.perf_counter()

    def record(chunk: list[dict[str, Any]], frame: pl.DataFrame) -> pl.DataFrame:
        nonlocal tokens
        tokens += int(frame["chosen_tokens"].sum() + frame["rejected_tokens"].sum())
        return frame

    if todo:
        chunks_run = run_model_chunks(
            todo,
            partial(_score_chunk, max_length=config.max_length, pmi=config.pmi),
            journal,
            settings=config,
            local=model,
            opener=partial(BackendHandle, config.backend, config.model, _backend_options(config)),
            record=record,
            label="pairs",
            total=pairs.height,
            done=len(done),
        )
    finished = finished_rows(journal, SCORES.empty(), pairs["id"].to_list())
    return write_output(
        run,
        journal,
        finished,
        SCORES,
        model=config.model or "default",
        backend=config.backend,
        stats={
            **_stats(finished, tokens, time.perf_counter() - started),
            "chunks_this_run": chunks_run,
            "engine": config.engine_settings(),
        },
    )
