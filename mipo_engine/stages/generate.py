"""``mipo generate``: prompts -> generations (chosen and rejected per negative strategy).

Pairs are generated in fixed chunks; each finished chunk is saved as a journal part, so a
killed run resumes at the first unfinished chunk. Every sample has its own seed derived from
the global seed and the pair id, so the result does not depend on where a run was stopped.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import polars as pl
from pydantic import Field

from mipo_engine.artifacts.location import Location
from mipo_engine.artifacts.run import (
    StageRun,
    check_output_path,
    require_columns_non_empty,
)
from mipo_engine.artifacts.schemas import GENERATIONS, PROMPTS
from mipo_engine.artifacts.store import read_artifact
from mipo_engine.backends.base import (
    Backend,
    Completion,
    GenerationRequest,
    SamplingConfig,
)
from mipo_engine.commandline import Cli
from mipo_engine.errors import MipoError
from mipo_engine.modelcalls.running import (
    BackendHandle,
    check_engine,
    finished_rows,
    run_model_chunks,
    unfinished,
    write_output,
)
from mipo_engine.modelcalls.settings import ServedModelConfig
from mipo_engine.models import resolve_model
from mipo_engine.strategies import PairPlan, plan_pairs

Strategy = Literal["missing-context", "random-context", "random-prompt", "prompt", "both"]


class GenerateConfig(ServedModelConfig):
    prompts: Location = Field(description="Input prompts .parquet (from mipo ingest).")
    out: Annotated[Location, Cli("--out", "-o")] = Field(description="Output generations .parquet.")
    strategy: Strategy = Field(
        "missing-context",
        description="Negative strategy: missing-context (rejected without the user context), random-context (rejected with another user's context), random-prompt (rejected answers another prompt), prompt ((prompt, context) as one unit, rejected from another unit), both (a missing-context and a random-context pair sharing the chosen response).",
    )
    n_pairs: int = Field(1, ge=1, description="Pairs to generate per prompt row.")
    max_new_tokens: int = Field(256, ge=1, description="Maximum new tokens per response.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Global seed; each sample's seed derives from it.")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompt rows.")
    allow_failures: bool = Field(
        False, description="Write the artifact even if some pairs failed after retries."
    )

    chunk_key: ClassVar[str] = "chunk_pairs"

    option_help: ClassVar[dict[str, str]] = {
        "chunk_size": "Pairs per saved chunk: the unit of resume after a crash.",
    }


class GenerationFailed(MipoError):
    exit_code = 1


def _pair_rows(
    backend: Backend,
    plans: list[PairPlan],
    completions: list[tuple[Completion, Completion]],
    config: GenerateConfig,
) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
    rows, failures = [], []
    for plan, (chosen, rejected) in zip(plans, completions, strict=True):
        failed = [c for c in (chosen, rejected) if c.finish_reason == "error"]
        if failed:
            failures.append((plan.id, failed[0].error or "generation failed"))
            continue
        rows.append(
            {
                "id": plan.id,
                "prompt_id": plan.prompt_id,
                "prompt": plan.prompt,
                "context": plan.context,
                "chosen": chosen.text,
                "rejected": rejected.text,
                "strategy": plan.strategy,
                "negative_source": plan.negative_source,
                "chosen_input": backend.render(plan.chosen_messages),
                "rejected_input": backend.render(plan.rejected_messages),
                "model": config.model or "default",
                "seed": plan.seed,
                "chosen_finish_reason": chosen.finish_reason,
                "rejected_finish_reason": rejected.finish_reason,
                "chosen_tokens": chosen.num_tokens,
                "rejected_tokens": rejected.num_tokens,
            }
        )
    frame = pl.DataFrame(rows, schema=GENERATIONS.polars_schema()) if rows else GENERATIONS.empty()
    return frame, failures


def _generate_chunk(
    model: BackendHandle, chunk: list[PairPlan], *, sampling: SamplingConfig, config: GenerateConfig
) -> tuple[pl.DataFrame, list[tuple[str, str]], int]:
    """One chunk's pair rows, failed pairs and new tokens (runs where the model lives)."""
    requests: list[GenerationRequest] = []
    slots: list[tuple[int, int]] = []  # (chosen, rejected) request index of each pair
    for index, plan in enumerate(chunk):
        previous = chunk[index - 1] if index else None
        if (
            previous is not None
            and previous.chosen_seed == plan.chosen_seed
            and previous.chosen_messages == plan.chosen_messages
        ):
            chosen = slots[-1][0]  # strategy "both": the two pairs share one chosen sample
        else:
            chosen = len(requests)
            requests.append(GenerationRequest(plan.id, plan.chosen_messages, plan.chosen_seed))
        requests.append(GenerationRequest(plan.id, plan.rejected_messages, plan.rejected_seed))
        slots.append((chosen, len(requests) - 1))
    completions = model.get().generate(requests, sampling)
    pairs = [(completions[c], completions[r]) for c, r in slots]
    frame, failures = _pair_rows(model.get(), chunk, pairs, config)
    return frame, failures, sum(c.num_tokens for c in completions)


def run_generate(config: GenerateConfig, *, backend: Backend | None = None) -> Path:
    """Generate the pairs of ``config.prompts`` into ``config.out``; return the output path."""
    output = check_output_path(config.out, config.prompts)
    prompts = read_artifact(config.prompts, PROMPTS)
    require_columns_non_empty(prompts, ["prompt"], config.prompts)
    if config.backend != "openai" and backend is None:
        resolve_model(config.model)  # a bad model path fails before anything is written
    # Negatives are drawn from the whole file even when --limit keeps only the first rows.
    plans = plan_pairs(
        prompts.to_dicts(),
        config.strategy,
        n_pairs=config.n_pairs,
        seed=config.seed,
        file=config.prompts,
    )
    if config.limit is not None:
        kept = set(prompts["id"].head(config.limit).to_list())
        plans = [plan for plan in plans if plan.prompt_id in kept]
    check_engine(config, shared_backend=backend is not None)
    run = StageRun("generate", output, config.identity(), {"prompts": config.prompts})
    journal = run.journal(reuse_output=True)  # failed pairs are not in the output
    todo, done = unfinished(journal, plans, "pairs already generated", key=lambda p: p.id)
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p
    )
    failures: list[tuple[str, str]] = []
    new_tokens, chunks_run, started = 0, 0, time.perf_counter()

    def record(chunk: list[PairPlan], result: tuple[pl.DataFrame, list, int]) -> pl.DataFrame:
        nonlocal new_tokens
        frame, chunk_failures, tokens = result
        new_tokens += tokens
        failures.extend(chunk_failures)
        return frame

    options = config.backend_options()
    with BackendHandle(config.backend, config.model, options, backend) as model:
        if todo:
            if config.engine == "local":
                model.get()
            chunks_run = run_model_chunks(
                todo,
                partial(_generate_chunk, sampling=sampling, config=config),
                journal,
                settings=config,
                local=model,
                opener=partial(BackendHandle, config.backend, config.model, options),
                record=record,
                label="pairs",
                total=len(plans),
                done=len(done),
            )
        backend = model.opened
    elapsed = time.perf_counter() - started
    if failures and not config.allow_failures:
        shown = "; ".join(f"{pid}: {reason}" for pid, reason in failures[:5])
        raise GenerationFailed(
            f"{len(failures)} of {len(plans)} pairs failed ({shown}). Finished pairs are kept; "
            "rerun the same command to retry only the failed ones, or pass --allow-failures "
            "to write the artifact without them."
        )
    finished = finished_rows(journal, GENERATIONS.empty(), [plan.id for plan in plans])
    stats = {
        "pairs": finished.height,
        "planned_pairs": len(plans),
        "failed": [{"id": pid, "reason": reason} for pid, reason in failures],
        "new_tokens_this_run": new_tokens,
        "chunks_this_run": chunks_run,
        "engine": config.engine_settings(),
        "seconds_this_run": round(elapsed, 3),
        "tokens_per_second_this_run": round(new_tokens / elapsed, 2) if elapsed > 0 else None,
        "finish_reasons": {
            "chosen": finished["chosen_finish_reason"].value_counts().to_dicts(),
            "rejected": finished["rejected_finish_reason"].value_counts().to_dicts(),
        },
        "sampling": sampling.as_record(),
    }
    if backend is not None:
        stats["backend_stats"] = backend.stats.__dict__
        stats.update(backend.resolved_settings())
    return write_output(
        run,
        journal,
        finished,
        GENERATIONS,
        model=config.model or "default",
        backend=config.backend,
        seed=config.seed,
        stats=stats,
    )
