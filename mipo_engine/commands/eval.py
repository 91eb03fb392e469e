"""``mipo eval``: options -> EvalConfig -> run_eval, or ``--compare`` several outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mipo_engine.commands.shared import (
    EngineOption,
    RayAddressOption,
    WorkersOption,
    call_stage,
    done,
    engine_options,
)
from mipo_engine.errors import ConfigError

stdout = Console()


def _compare(outputs: list[Path], out: Path | None, labels: list[str] | None) -> Path | None:
    """Print (and with ``--out``, write) the side-by-side table of eval outputs."""
    from mipo_engine.evaluation.compare import compare_evals, comparison_table, write_comparison

    entries = compare_evals(outputs, labels=labels or None)
    stdout.print(comparison_table(entries))
    return write_comparison(entries, out) if out is not None else None


def command(
    outputs: Annotated[
        list[Path] | None,
        typer.Argument(help="With --compare: the eval outputs (.parquet) to put side by side."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="gsm8k, svamp (8-shot math), mmlu, arc_easy, arc_challenge (zero-shot MCQ), "
            "ifeval (IFEval's 541 prompts, reference verifiers) or personalization (held-out "
            "prompts with user contexts)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Per-item results .parquet (summary JSON written beside it); with --compare, "
            "an optional .md or .json file for the table.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model: a name from `mipo models`, a .gguf file, a folder or a Hub id; default: smollm2-135m-instruct."
        ),
    ] = None,
    adapter: Annotated[
        Path | None,
        typer.Option(
            help="LoRA adapter folder applied on top of --model (PMI uses the model without it)."
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Benchmark file in its original layout, a prompts .parquet, builtin:<set>, or "
            "'hub' (the pinned Hugging Face copy). Default: the Hub copy for benchmarks "
            "(cached after the first run; offline, pass the file), the bundled prompts for "
            "ifeval, builtin:personalization-heldout for personalization."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Evaluate a fixed random subset of N items (--seed).")
    ] = None,
    backend: Annotated[str, typer.Option(help="Model backend: hf or vllm.")] = "hf",
    seed: Annotated[int, typer.Option(help="Seeds the --limit subset and sampling.")] = 0,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="Generation budget; default 256 (math, personalization), 128 (mcq)."),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help="Default 0 (greedy) for benchmarks, 0.7 for personalization."),
    ] = None,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    samples: Annotated[
        int, typer.Option(help="Responses per prompt (personalization; self-BLEU within prompt).")
    ] = 1,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward batch (hf).")] = 8,
    chunk_items: Annotated[
        int, typer.Option(help="Responses per saved chunk: the unit of resume after a crash.")
    ] = 32,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="A previous personalization eval output: judge both and report the win rate "
            "(ties count as wins) against its responses."
        ),
    ] = None,
    judge_mode: Annotated[
        str,
        typer.Option(
            help="rubric (one judge call per preference item), rlaif (one per context) or "
            "verify (programmatic checkers, no model)."
        ),
    ] = "rubric",
    judge_backend: Annotated[str, typer.Option(help="Judge backend: hf, vllm or openai.")] = "hf",
    judge_model: Annotated[
        str | None,
        typer.Option(
            help="Judge model (a name from `mipo models`, a file, folder or Hub id); default: smollm2-135m-instruct."
        ),
    ] = None,
    judge_base_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible judge server URL; key from OPENAI_API_KEY."),
    ] = None,
    rubrics: Annotated[
        Path | None,
        typer.Option(
            help="Rubrics artifact (mipo rubrics) for rubric mode; made with the judge if absent."
        ),
    ] = None,
    responses: Annotated[
        Path | None,
        typer.Option(
            help="ifeval: score these responses instead of running a model: JSONL with "
            "'prompt' and 'response' per line (IFEval's format) or a .parquet with those "
            "columns (e.g. an ifeval eval output)."
        ),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Compare eval outputs given as arguments instead of evaluating: side-by-side "
            "table with bootstrap 95% intervals and paired differences to the first.",
        ),
    ] = False,
    label: Annotated[
        list[str] | None, typer.Option(help="With --compare: a name per output (repeat).")
    ] = None,
    engine: EngineOption = "local",
    workers: WorkersOption = 1,
    ray_address: RayAddressOption = None,
) -> None:
    """Evaluate a model: math and MCQ accuracy, answer entropy, IFEval, personalization."""
    if compare:
        written = call_stage(lambda: _compare_checked(outputs, out, label))
        if written is not None:
            done(written, "comparison")
        return

    from mipo_engine.evaluation.compare import (
        compare_evals,
        comparison_table,
        per_instruction_table,
    )
    from mipo_engine.stages.eval import EvalConfig, run_eval

    def run() -> Path:
        if outputs:
            raise ConfigError(
                "eval outputs as arguments need --compare; to evaluate, pass --task and --out",
                key="compare",
            )
        if task is None or out is None:
            raise ConfigError("pass --task and --out (or --compare with eval outputs)", key="task")
        config = EvalConfig.from_options(
            **engine_options(engine, workers, ray_address),
            task=task,
            out=out,
            model=model,
            adapter=adapter,
            data=data,
            limit=limit,
            backend=backend,
            seed=seed,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            samples=samples,
            batch_size=batch_size,
            chunk_items=chunk_items,
            reference=reference,
            judge_mode=judge_mode,
            judge_backend=judge_backend,
            judge_model=judge_model,
            judge_base_url=judge_base_url,
            rubrics=rubrics,
            responses=responses,
        )
        path = run_eval(config)
        entries = compare_evals([path])
        stdout.print(comparison_table(entries))
        if entries[0]["summary"]["kind"] == "ifeval":
            stdout.print(per_instruction_table(entries[0]["summary"]))
        return path

    done(call_stage(run), "eval results")


def _compare_checked(
    outputs: list[Path] | None, out: Path | None, labels: list[str] | None
) -> Path | None:
    if not outputs:
        raise ConfigError("--compare needs eval outputs as arguments", key="compare")
    return _compare(outputs, out, labels)
