"""``mipo revise``: options -> ReviseConfig -> run_revise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipo_engine.commands.shared import call_stage, done


def command(
    generations: Annotated[
        Path, typer.Option(help="Pairs from mipo generate whose chosen responses to revise.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output generations .parquet.")],
    mode: Annotated[
        str,
        typer.Option(
            help="examples: improve the response given the user's context and the rejected "
            "response; answer: correct it given the gold answer from --prompts."
        ),
    ] = "examples",
    prompts: Annotated[
        Path | None, typer.Option(help="Prompts artifact with gold answers (--mode answer).")
    ] = None,
    backend: Annotated[str, typer.Option(help="Model backend: hf, vllm or openai.")] = "hf",
    model: Annotated[
        str | None, typer.Option(help="The model that revises (the one that wrote the pairs).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum new tokens per revision.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Global seed; each row's seed derives from it.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Requests per forward batch (hf).")] = 8,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows per saved chunk: the unit of resume after a crash.")
    ] = 32,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server URL (openai backend).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Concurrent requests (openai backend).")] = 8,
) -> None:
    """Revise each pair's chosen response with the model itself (SFT (Revision), seed 004
    sec. 5.1); train on the result with mipo train --loss sft."""
    from mipo_engine.stages.revise import ReviseConfig, run_revise

    def run() -> Path:
        config = ReviseConfig.from_options(
            generations=generations,
            out=out,
            mode=mode,
            prompts=prompts,
            backend=backend,
            model=model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
            chunk_rows=chunk_rows,
            base_url=base_url,
            concurrency=concurrency,
        )
        return run_revise(config)

    done(call_stage(run), "revised generations")
