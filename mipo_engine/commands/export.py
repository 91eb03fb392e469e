"""``mipo export``: options -> ExportConfig -> run_export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipo_engine.commands.shared import call_stage, done


def command(
    generations: Annotated[
        Path, typer.Option(help="Input generations .parquet (from mipo generate).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output preferences .parquet.")],
    scores: Annotated[
        Path | None,
        typer.Option(
            help="Scores .parquet (from mipo score): adds ref_chosen_logps/ref_rejected_logps "
            "and enables --min-pmi. Its ids must match the generations exactly."
        ),
    ] = None,
    judgments: Annotated[
        Path | None,
        typer.Option(help="Judgments .parquet (from mipo judge): enables --min-judge-margin."),
    ] = None,
    file_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="trl (rendered prompt + response strings), trl-conversational (message "
            "lists) or openrlhf (chosen/rejected full conversations, implicit prompt).",
        ),
    ] = "trl",
    split: Annotated[
        str,
        typer.Option(
            help="Splits and their fractions, e.g. train=0.95,test=0.05. Whole prompts are "
            "assigned to one split."
        ),
    ] = "train=1",
    seed: Annotated[int, typer.Option(help="Seed of the split assignment.")] = 0,
    drop_empty: Annotated[
        bool,
        typer.Option(
            "--drop-empty/--keep-empty", help="Drop pairs with an empty or blank response."
        ),
    ] = True,
    drop_identical: Annotated[
        bool,
        typer.Option(
            "--drop-identical/--keep-identical",
            help="Drop pairs whose chosen and rejected are equal (edge whitespace ignored).",
        ),
    ] = True,
    drop_truncated: Annotated[
        bool,
        typer.Option(
            "--drop-truncated/--keep-truncated",
            help="Drop pairs with a response cut at max-new-tokens (finish reason length).",
        ),
    ] = False,
    min_tokens: Annotated[
        int | None, typer.Option(help="Drop pairs with a response shorter than this (tokens).")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Drop pairs with a response longer than this (tokens).")
    ] = None,
    drop_duplicates: Annotated[
        bool,
        typer.Option(
            "--drop-duplicates/--keep-duplicates",
            help="Drop exact repeats of (training prompt, chosen, rejected); the first is kept.",
        ),
    ] = True,
    near_duplicates: Annotated[
        str,
        typer.Option(
            help="Near-duplicate pairs: off; normalized (same text after folding case, "
            "punctuation and spaces); minhash (estimated byte-8-gram Jaccard >= "
            "--near-duplicate-threshold)."
        ),
    ] = "off",
    near_duplicate_threshold: Annotated[
        float, typer.Option(help="Jaccard similarity counted as a near-duplicate (minhash).")
    ] = 0.8,
    max_length_ratio: Annotated[
        float | None,
        typer.Option(
            help="Drop pairs whose longer response has more than this many times the other's "
            "tokens."
        ),
    ] = None,
    max_copy: Annotated[
        float | None,
        typer.Option(
            help="Drop pairs whose chosen response repeats at least this share (0-1] of the "
            "user turn's word 4-grams (the copy shortcut)."
        ),
    ] = None,
    min_pmi: Annotated[
        float | None,
        typer.Option(
            help="Drop pairs with pmi_chosen below this (MI-margin filter; needs --scores)."
        ),
    ] = None,
    min_judge_margin: Annotated[
        float | None,
        typer.Option(
            help="Drop pairs whose judge score(chosen) - score(rejected) is below this "
            "(needs --judgments)."
        ),
    ] = None,
) -> None:
    """Filter and split generations into TRL/OpenRLHF preference data."""
    from mipo_engine.stages.export import ExportConfig, run_export

    def run() -> Path:
        config = ExportConfig.from_options(
            generations=generations,
            out=out,
            scores=scores,
            judgments=judgments,
            format=file_format,
            split=split,
            seed=seed,
            drop_empty=drop_empty,
            drop_identical=drop_identical,
            drop_truncated=drop_truncated,
            min_tokens=min_tokens,
            max_tokens=max_tokens,
            drop_duplicates=drop_duplicates,
            near_duplicates=near_duplicates,
            near_duplicate_threshold=near_duplicate_threshold,
            max_length_ratio=max_length_ratio,
            max_copy=max_copy,
            min_pmi=min_pmi,
            min_judge_margin=min_judge_margin,
        )
        return run_export(config)

    done(call_stage(run), "preferences")
