"""``mipo contexts``: options -> ContextsConfig -> run_contexts."""

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


def _column_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


def command(
    preferences: Annotated[
        Path,
        typer.Option(
            help="Users' choices (PRISM utterances, Community Alignment, or a pairwise file "
            "with prompt, option_a/option_b..., preferred) or, with --mode system-to-user, "
            "Multifaceted-Bench records. JSONL, JSON, CSV or Parquet."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output contexts .parquet.")],
    mode: Annotated[
        str,
        typer.Option(
            help="preferences: infer each user's general preferences as JSON from their choice; "
            "system-to-user: rewrite system-message preferences as first-person statements."
        ),
    ] = "preferences",
    layout: Annotated[
        str,
        typer.Option(
            help="Input layout: auto, pairwise, prism, community-alignment, multifaceted."
        ),
    ] = "auto",
    as_prompts: Annotated[
        Path | None,
        typer.Option(
            help="Also write a prompts .parquet (one row per source row, with context and "
            "context_items) to pass to mipo generate."
        ),
    ] = None,
    id_column: Annotated[str | None, typer.Option(help="Column with the row id.")] = None,
    user_column: Annotated[str | None, typer.Option(help="Column with the user id.")] = None,
    prompt_column: Annotated[str | None, typer.Option(help="Column with the prompt.")] = None,
    option_columns: Annotated[
        str | None, typer.Option(help="Comma-separated option columns, e.g. 'left,right'.")
    ] = None,
    preferred_column: Annotated[
        str | None,
        typer.Option(help="Column naming the preferred option (letter, column, number or text)."),
    ] = None,
    feedback_column: Annotated[
        str | None, typer.Option(help="Column with the user's comment on the choice.")
    ] = None,
    turn: Annotated[
        int | None, typer.Option(help="Conversation turn to read, 1 = first (CA, PRISM).")
    ] = None,
    backend: Annotated[str, typer.Option(help="Model backend: hf, vllm or openai.")] = "hf",
    model: Annotated[
        str | None,
        typer.Option(
            help="Model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Maximum new tokens per reply.")] = 256,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature of the first attempt (0 = greedy).")
    ] = 0.0,
    retry_temperature: Annotated[
        float, typer.Option(help="Sampling temperature of retries after an invalid reply.")
    ] = 0.7,
    max_attempts: Annotated[
        int, typer.Option(help="Attempts per row before it is recorded as failed.")
    ] = 3,
    structured: Annotated[
        bool, typer.Option(help="Constrain replies to a JSON object (vllm backends).")
    ] = True,
    seed: Annotated[
        int, typer.Option(help="Global seed; each attempt's seed derives from it.")
    ] = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward batch (hf).")] = 8,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows per saved chunk: the unit of resume after a crash.")
    ] = 32,
    limit: Annotated[int | None, typer.Option(help="Use only the first N source rows.")] = None,
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
    """Infer user contexts from users' choices, or rewrite system messages (seed 004 App. C.2)."""
    from mipo_engine.stages.contexts import ContextsConfig, run_contexts

    def run() -> Path:
        config = ContextsConfig.from_options(
            **engine_options(engine, workers, ray_address),
            preferences=preferences,
            out=out,
            mode=mode,
            layout=layout,
            as_prompts=as_prompts,
            id_column=id_column,
            user_column=user_column,
            prompt_column=prompt_column,
            option_columns=_column_list(option_columns),
            preferred_column=preferred_column,
            feedback_column=feedback_column,
            turn=turn,
            backend=backend,
            model=model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            retry_temperature=retry_temperature,
            max_attempts=max_attempts,
            structured=structured,
            seed=seed,
            batch_size=batch_size,
            chunk_rows=chunk_rows,
            limit=limit,
            base_url=base_url,
            concurrency=concurrency,
        )
        return run_contexts(config)

    done(call_stage(run), "contexts")
