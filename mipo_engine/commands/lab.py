"""``mipo lab``: the seeds' synthetic experiments (figures + tables, no model needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipo_engine.commands.shared import call_stage, done

app = typer.Typer(
    help="The seeds' synthetic experiments: seed 000's MIO toy model and seed 002's DID "
    "softmax-policy experiment. Each writes results.json, results.md, a CSV and a PNG.",
    no_args_is_help=True,
)


def _methods(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


@app.command("toy-mio")
def toy_mio(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    seed: Annotated[int, typer.Option(help="Seed of the reference network and pairs.")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="Preference-training steps (default: 1000).")
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated losses: dpo, mio, infopo (default dpo,mio).")
    ] = None,
) -> None:
    """Seed 000 sec. 4.1 (Fig. 2): the MIO toy model.

    DPO drags chosen and rejected likelihoods down together once the rejected probability is
    small; MIO does not.
    """

    def run() -> Path:
        from mipo_engine.lab import run_toy_mio

        options: dict[str, object] = {"seed": seed, "steps": steps}
        if methods is not None:
            options["methods"] = _methods(methods)
        run_toy_mio(out, **options)  # type: ignore[arg-type]
        return out

    done(call_stage(run), "toy MIO results")


@app.command("did-synthetic")
def did_synthetic(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    seed: Annotated[int, typer.Option(help="Seed of theta_ref and the sampled pairs.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Optimisation steps (default: 3000).")] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated methods: dpo, slic, orpo, simpo, cal_dpo, log_pi (default: all)."
        ),
    ] = None,
    search: Annotated[
        bool,
        typer.Option(
            help="Try every hyperparameter setting of each baseline, as the paper does "
            "(--no-search keeps the first setting: a quick run)."
        ),
    ] = True,
) -> None:
    """Seed 002 sec. 3.5 (App. J.1): the DID softmax-policy experiment.

    DPO drives JS(pi*, pi) toward 0 on K=32 softmax policies and beats SLiC, ORPO and SimPO
    on it.
    """

    def run() -> Path:
        from mipo_engine.lab import DidSyntheticSettings, run_did_synthetic

        options: dict[str, object] = {
            "seed": seed,
            "steps": steps,
            "settings": DidSyntheticSettings(search_hyperparameters=search),
        }
        if methods is not None:
            options["methods"] = _methods(methods)
        run_did_synthetic(out, **options)  # type: ignore[arg-type]
        return out

    done(call_stage(run), "DID synthetic results")
