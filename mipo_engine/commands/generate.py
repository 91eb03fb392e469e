"""``mipo generate``: options -> GenerateConfig -> run_generate."""

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
    prompts: Annotated[Path, typer.Option(help="Input prompts .parquet (from mipo ingest).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output generations .parquet.")],
    strategy: Annotated[
        str,
        typer.Option(
            help="Negative strategy: missing-context (rejected without the user context), "
            "random-context (rejected with another user's context), random-prompt (rejected "
            "answers another prompt), prompt ((prompt, context) as one unit, rejected from "
            "another unit)."
        ),
    ] = "missing-context",
    backend: Annotated[str, typer.Option(help="Model backend: hf, vllm or openai.")] = "hf",
    model: Annotated[
        str | None,
        typer.Option(
            help="Model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct."
        ),
    ] = None,
    n_pairs: Annotated[int, typer.Option(help="Pairs to generate per prompt row.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum new tokens per response.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Global seed; each sample's seed derives from it.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward batch (hf).")] = 8,
    chunk_pairs: Annotated[
        int, typer.Option(help="Pairs per saved chunk: the unit of resume after a crash.")
    ] = 32,
    limit: Annotated[int | None, typer.Option(help="Use only the first N prompt rows.")] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible server URL (openai backend); key from OPENAI_API_KEY."
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Concurrent requests (openai backend).")] = 8,
    allow_failures: Annotated[
        bool, typer.Option(help="Write the artifact even if some pairs failed after retries.")
    ] = False,
    engine: EngineOption = "local",
    workers: WorkersOption = 1,
    ray_address: RayAddressOption = None,
) -> None:
    """Generate chosen/rejected response pairs (MIPO, seed 004 Algorithm 1)."""
    from mipo_engine.stages.generate import GenerateConfig, run_generate

    def run() -> Path:
        config = GenerateConfig.from_options(
            **engine_options(engine, workers, ray_address),
            prompts=prompts,
            out=out,
            strategy=strategy,
            backend=backend,
            model=model,
            n_pairs=n_pairs,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            chunk_pairs=chunk_pairs,
            limit=limit,
            base_url=base_url,
            concurrency=concurrency,
            allow_failures=allow_failures,
        )
        return run_generate(config)

    done(call_stage(run), "generations")
