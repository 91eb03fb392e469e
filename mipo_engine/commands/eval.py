"""``mipo eval``: the stage command (options from ``EvalConfig``), or ``--compare`` outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from mipo_engine.commands.shared import call_stage, done
from mipo_engine.errors import ConfigError
from mipo_engine.pipeline.stages import STAGE_KINDS

stdout = Console()


def _compare(outputs: list[Path], out: Path | None, labels: list[str] | None) -> Path | None:
    """Print (and with ``--out``, write) the side-by-side table of eval outputs."""
    from mipo_engine.evaluation.compare import compare_evals, comparison_table, write_comparison

    entries = compare_evals(outputs, labels=labels or None)
    stdout.print(comparison_table(entries))
    return write_comparison(entries, out) if out is not None else None


def __getattr__(name: str) -> Any:
    """``command``: the eval command as a plain function for ``app.command()`` (built on use)."""
    if name != "command":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from mipo_engine.commandline import command_function, option_specs
    from mipo_engine.stages.eval import CompareOptions, EvalConfig

    kind = STAGE_KINDS["eval"]
    specs = option_specs(EvalConfig, optional=kind.cli_optional)
    return command_function(specs, evaluate, extra=option_specs(CompareOptions), doc=kind.help)


def build() -> Any:
    """``mipo eval``: the stage's options (``--task`` and ``--out`` checked here, as
    ``--compare`` needs neither) and the options of ``--compare``."""
    return STAGE_KINDS["eval"].command(evaluate)


def evaluate(
    settings: dict[str, Any],
    outputs: list[Path] | None = None,
    compare: bool = False,
    label: list[str] | None = None,
) -> None:
    """Evaluate a model: math and MCQ accuracy, answer entropy, IFEval, personalization."""
    out = settings.get("out")
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
        if settings.get("task") is None or out is None:
            raise ConfigError("pass --task and --out (or --compare with eval outputs)", key="task")
        config = EvalConfig.from_options(**settings)
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
