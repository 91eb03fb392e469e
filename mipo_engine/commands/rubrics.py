"""``mipo rubrics``: options -> RubricsConfig -> run_rubrics."""

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
    contexts: Annotated[
        Path,
        typer.Option(
            help="Contexts .parquet (from mipo contexts) or prompts .parquet with context_items."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output rubrics .parquet.")],
    backend: Annotated[str, typer.Option(help="Model backend: hf, vllm or openai.")] = "hf",
    model: Annotated[
        str | None,
        typer.Option(
            help="Model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum new tokens per rubric.")] = 384,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature of the first attempt (0 = greedy).")
    ] = 0.0,
    retry_temperature: Annotated[
        float, typer.Option(help="Sampling temperature of retries after an invalid rubric.")
    ] = 0.7,
    max_attempts: Annotated[
        int, typer.Option(help="Attempts per item before it is recorded as failed.")
    ] = 3,
    structured: Annotated[
        bool, typer.Option(help="Constrain replies to the rubric JSON layout (vllm backends).")
    ] = True,
    seed: Annotated[
        int, typer.Option(help="Global seed; each attempt's seed derives from it.")
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward batch (hf).")] = 8,
    chunk_items: Annotated[
        int, typer.Option(help="Items per saved chunk: the unit of resume after a crash.")
    ] = 32,
    limit: Annotated[int | None, typer.Option(help="Use only the first N distinct items.")] = None,
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
    """Write a 1-5 scoring rubric for every preference item (verifiable items: built-in)."""
    from mipo_engine.stages.rubrics import RubricsConfig, run_rubrics

    def run() -> Path:
        config = RubricsConfig.from_options(
            **engine_options(engine, workers, ray_address),
            contexts=contexts,
            out=out,
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
        return run_rubrics(config)

    done(call_stage(run), "rubrics")
