"""``mipo score``: options -> ScoreConfig -> run_score."""

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
    generations: Annotated[
        Path,
        typer.Option(
            help="Pairs to score: a generations .parquet (from mipo generate) or a "
            "preferences .parquet (from mipo export)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output scores .parquet.")],
    model: Annotated[
        str | None,
        typer.Option(
            help="Reference model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct."
        ),
    ] = None,
    backend: Annotated[str, typer.Option(help="Scoring backend: hf or vllm.")] = "hf",
    batch_size: Annotated[int, typer.Option(help="Sequences per forward batch (hf).")] = 8,
    max_length: Annotated[
        int,
        typer.Option(help="Tokens per prompt + response; use the same value as mipo train."),
    ] = 1024,
    pmi: Annotated[
        bool,
        typer.Option(
            help="Also compute pmi_chosen (one more forward per pair): log pi_ref(y_c|x,c) - "
            "log pi_ref(y_c|x), or log pi_ref(y_c|x) - log pi_ref(y_c|x') for random-prompt."
        ),
    ] = True,
    chunk_rows: Annotated[
        int, typer.Option(help="Pairs per saved chunk: the unit of resume after a crash.")
    ] = 64,
    adapter: Annotated[
        str | None,
        typer.Option(help="LoRA adapter folder to score with (hf), e.g. a previous policy."),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="Weights dtype (hf): auto (bf16 on GPU), float32, bfloat16.")
    ] = "auto",
    engine: EngineOption = "local",
    workers: WorkersOption = 1,
    ray_address: RayAddressOption = None,
) -> None:
    """Reference log-probs of chosen/rejected under the training prompt, and pointwise MI."""
    from mipo_engine.stages.score import ScoreConfig, run_score

    def run() -> Path:
        config = ScoreConfig.from_options(
            **engine_options(engine, workers, ray_address),
            generations=generations,
            out=out,
            model=model,
            backend=backend,
            batch_size=batch_size,
            max_length=max_length,
            pmi=pmi,
            chunk_rows=chunk_rows,
            adapter=adapter,
            dtype=dtype,
        )
        return run_score(config)

    done(call_stage(run), "scores")
