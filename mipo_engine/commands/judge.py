"""``mipo judge``: options -> JudgeConfig -> run_judge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipo_engine.commands.shared import (
    EngineOption,
    RayAddressOption,
    WorkersOption,
    call_stage,
    done,
    engine_options,
)


def command(
    responses: Annotated[
        Path,
        typer.Option(
            help="Generations .parquet (chosen and rejected are judged) or responses .parquet "
            "(id, prompt, context and/or context_items, response, optional task)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output judgments .parquet.")],
    rubrics: Annotated[
        Path | None, typer.Option(help="Rubrics .parquet from mipo rubrics (mode rubric).")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Reference responses .parquet (id, response): reports the win rate of the "
            "responses over them, ties counted as wins."
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="rubric: one judge call per (response, rubric item); rlaif: one call per "
            "response with the whole context; verify: checkers only, no model."
        ),
    ] = "rubric",
    backend: Annotated[str, typer.Option(help="Judge backend: hf, vllm or openai.")] = "hf",
    model: Annotated[
        str | None,
        typer.Option(
            help="Judge model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum new tokens per judge reply.")] = 256,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature of the first attempt (0 = greedy).")
    ] = 0.0,
    retry_temperature: Annotated[
        float, typer.Option(help="Sampling temperature of retries after an unreadable score.")
    ] = 0.7,
    max_attempts: Annotated[
        int, typer.Option(help="Attempts per item before a null score is recorded.")
    ] = 3,
    structured: Annotated[
        bool, typer.Option(help="Constrain replies to 1..5 when the backend supports it (vllm).")
    ] = True,
    seed: Annotated[
        int, typer.Option(help="Global seed; each attempt's seed derives from it.")
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward batch (hf).")] = 8,
    chunk_items: Annotated[
        int, typer.Option(help="Judgments per saved chunk: the unit of resume after a crash.")
    ] = 32,
    limit: Annotated[int | None, typer.Option(help="Judge only the first N input rows.")] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible server URL (openai backend); key from OPENAI_API_KEY."
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Concurrent requests (openai backend).")] = 8,
    engine: EngineOption = "local",
    workers: WorkersOption = 1,
    ray_address: RayAddressOption = None,
) -> None:
    """Score responses 1-5 per rubric item; aggregate, win rate, critic accuracy (seed 004)."""
    from mipo_engine.stages.judge import JudgeConfig, run_judge

    def run() -> Path:
        config = JudgeConfig.from_options(
            **engine_options(engine, workers, ray_address),
            responses=responses,
            out=out,
            rubrics=rubrics,
            reference=reference,
            mode=mode,
            backend=backend,
            model=model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            retry_temperature=retry_temperature,
            max_attempts=max_attempts,
            structured=structured,
            seed=seed,
            batch_size=batch_size,
            chunk_items=chunk_items,
            limit=limit,
            base_url=base_url,
            concurrency=concurrency,
        )
        return run_judge(config)

    done(call_stage(run), "judgments")
