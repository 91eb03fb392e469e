"""Side-by-side comparison of several ``mipo eval`` outputs (``mipo eval --compare``).

Typical use: the base model and one or more trained models on the same task and items. Each
output is summarised from its per-item rows with ``summarize`` (the same numbers its own
summary JSON holds), and every output after the first also gets the *paired* difference to
the first on the items both evaluated: the mean per-item difference with a percentile
bootstrap 95% interval, which is tighter than comparing two independent intervals because
item difficulty cancels out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
from rich.table import Table

from mipo_engine.artifacts import location
from mipo_engine.artifacts.schemas import EVAL
from mipo_engine.artifacts.store import read_artifact, read_manifest, write_json_atomic
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.evaluation.results import interval, summarize
from mipo_engine.evaluation.tasks import get_task


def load_eval(path: str | Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Rows of an eval artifact and its manifest; InputError if it is not one."""
    path = location.as_location(path)
    frame = read_artifact(path, EVAL)
    if frame.height == 0:
        raise InputError("eval output has no rows", file=path)
    if frame["task"].n_unique() != 1:
        raise InputError("an eval output must hold one task", file=path, field="task")
    try:
        manifest = read_manifest(path)
    except FileNotFoundError:
        raise InputError(
            "no manifest beside it: the eval did not finish; rerun it", file=path
        ) from None
    return frame, manifest


def _per_item_values(frame: pl.DataFrame, metric: str) -> dict[str, float]:
    """Per-response values of ``metric`` keyed by response id, for paired differences."""
    if metric == "accuracy":
        values = frame.select("id", pl.col("correct").fill_null(False).cast(pl.Float64))
    elif metric in ("prompt_level_strict", "prompt_level_loose"):
        column = "strict_followed" if metric == "prompt_level_strict" else "loose_followed"
        values = frame.select("id", pl.col(column).list.all().cast(pl.Float64))
    elif metric == "adherence":
        values = frame.filter(pl.col("verifiable_items") > 0).select(
            "id", pl.col("items_met") / pl.col("verifiable_items")
        )
    else:  # win rate or PMI: columns of their own
        column = {"win_rate": "win", "pmi": "pmi"}[metric]
        values = frame.filter(pl.col(column).is_not_null()).select("id", column)
    return dict(values.iter_rows())


def _paired_difference(
    frame: pl.DataFrame, baseline: pl.DataFrame, metric: str
) -> dict[str, float | int] | None:
    """Mean per-item difference to the baseline with a bootstrap interval, on shared items."""
    ours = _per_item_values(frame, metric)
    theirs = _per_item_values(baseline, metric)
    shared = [key for key in ours if key in theirs]
    return interval([ours[key] - theirs[key] for key in shared])


def _metrics_of(kind: str) -> list[str]:
    """The metrics with intervals compared for a task kind (first: the headline one)."""
    if kind == "personalization":
        return ["adherence", "pmi", "win_rate"]
    if kind == "ifeval":
        return ["prompt_level_strict", "prompt_level_loose"]
    return ["accuracy"]


def _headline(summary: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """The interval dict of ``metric`` inside a summary."""
    if metric == "win_rate":
        return (summary.get("judge") or {}).get("win_rate")
    return summary.get(metric)


def compare_evals(
    paths: Sequence[str | Path], *, labels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One entry per eval output: label, model, summary, and paired differences to the first.

    All outputs must be of the same task: comparing GSM8K accuracy with ARC accuracy says
    nothing. ``labels`` default to the file names without ``.parquet``.
    """
    if len(paths) < 1:
        raise ConfigError("--compare needs at least one eval output", key="compare")
    if labels is not None and len(labels) != len(paths):
        raise ConfigError(f"got {len(labels)} labels for {len(paths)} outputs", key="labels")
    loaded = [load_eval(path) for path in paths]
    tasks = {frame["task"][0] for frame, _ in loaded}
    if len(tasks) > 1:
        raise ConfigError(
            f"the outputs evaluate different tasks {sorted(tasks)}; compare one task at a time",
            key="compare",
        )
    kind = get_task(tasks.pop()).kind
    baseline = loaded[0][0]
    entries = []
    for position, (path, (frame, manifest)) in enumerate(zip(paths, loaded, strict=True)):
        summary = summarize(frame, kind)
        config = manifest.get("config", {})
        entry: dict[str, Any] = {
            "label": labels[position] if labels else Path(path).stem,
            "path": str(path),
            "model": (
                f"responses {Path(config['responses']).name}"
                if config.get("responses")
                else config.get("model") or "default"
            ),
            "adapter": config.get("adapter"),
            "summary": summary,
            "difference_to_first": {},
        }
        if position > 0:
            for metric in _metrics_of(kind):
                if _headline(summary, metric) is not None:
                    entry["difference_to_first"][metric] = _paired_difference(
                        frame, baseline, metric
                    )
        entries.append(entry)
    return entries


# --------------------------------------------------------------------------------------------
# Rendering


def _format_interval(value: dict[str, Any] | None, *, percent: bool, signed: bool = False) -> str:
    """ "43.5 [36.5, 50.5]" (percent) or "0.123 [0.050, 0.200]"; "-" when missing."""
    if not value:
        return "-"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    sign = "+" if signed else ""
    mean, low, high = (value[key] * scale for key in ("mean", "low", "high"))
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _format_number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _columns(kind: str) -> list[tuple[str, Any]]:
    """(header, function entry -> cell text) for a task kind."""
    if kind in ("math", "mcq"):
        columns: list[tuple[str, Any]] = [
            (
                "accuracy % [95% CI]",
                lambda e: _format_interval(e["summary"]["accuracy"], percent=True),
            ),
            (
                "Δ vs first (paired)",
                lambda e: _format_interval(
                    e["difference_to_first"].get("accuracy"), percent=True, signed=True
                ),
            ),
            ("answered %", lambda e: f"{100 * e['summary']['answered']:.1f}"),
        ]
        if kind == "mcq":
            columns += [
                ("entropy (correct)", lambda e: _entropy_cell(e, "correct")),
                ("entropy (incorrect)", lambda e: _entropy_cell(e, "incorrect")),
            ]
        return columns
    if kind == "ifeval":
        return _ifeval_columns()
    return [
        (
            "adherence % [95% CI]",
            lambda e: _format_interval(e["summary"]["adherence"], percent=True),
        ),
        (
            "Δ adherence",
            lambda e: _format_interval(
                e["difference_to_first"].get("adherence"), percent=True, signed=True
            ),
        ),
        ("PMI [95% CI]", lambda e: _format_interval(e["summary"]["pmi"], percent=False)),
        (
            "self-BLEU-4",
            lambda e: _format_number(e["summary"]["self_bleu_4"]["across_prompts"]),
        ),
        (
            "win rate % [95% CI]",
            lambda e: _format_interval(_headline(e["summary"], "win_rate"), percent=True),
        ),
    ]


def _ifeval_columns() -> list[tuple[str, Any]]:
    """IFEval's four metrics (percent, 95% intervals) and the paired prompt-level change."""

    def metric(name: str) -> Any:
        return lambda e: _format_interval(e["summary"][name], percent=True)

    return [
        ("prompt strict %", metric("prompt_level_strict")),
        ("prompt loose %", metric("prompt_level_loose")),
        ("instruction strict %", metric("instruction_level_strict")),
        ("instruction loose %", metric("instruction_level_loose")),
        (
            "Δ prompt strict",
            lambda e: _format_interval(
                e["difference_to_first"].get("prompt_level_strict"), percent=True, signed=True
            ),
        ),
    ]


def per_instruction_table(summary: dict[str, Any]) -> Table:
    """IFEval accuracy per instruction type of one eval summary."""
    table = Table(title=f"{summary['task']}: accuracy per instruction type")
    for name in ("instruction id", "n", "strict %", "loose %"):
        table.add_column(name)
    for name, entry in summary["per_instruction"].items():
        table.add_row(
            name, str(entry["n"]), f"{100 * entry['strict']:.1f}", f"{100 * entry['loose']:.1f}"
        )
    return table


def _entropy_cell(entry: dict[str, Any], which: str) -> str:
    stats = entry["summary"]["entropy"][which]
    return "-" if stats is None else f"{stats['mean']:.3f} (n={stats['n']})"


def _rows(entries: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cell texts shared by the rich table and the markdown table."""
    kind = entries[0]["summary"]["kind"]
    columns = _columns(kind)
    header = ["eval", "model", "items", *(name for name, _ in columns)]
    rows = []
    for entry in entries:
        model = entry["model"] + (f" + {entry['adapter']}" if entry["adapter"] else "")
        cells = [entry["label"], model, str(entry["summary"]["items"])]
        rows.append(cells + [function(entry) for _, function in columns])
    return header, rows


def comparison_table(entries: Sequence[dict[str, Any]]) -> Table:
    """A rich table of the comparison, one row per eval output."""
    header, rows = _rows(entries)
    table = Table(title=f"mipo eval: {entries[0]['summary']['task']}")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def comparison_markdown(entries: Sequence[dict[str, Any]]) -> str:
    """The comparison as a GitHub-flavoured markdown table."""
    header, rows = _rows(entries)
    lines = [
        f"Task: {entries[0]['summary']['task']}; intervals are percentile-bootstrap 95%.",
        "",
        "| " + " | ".join(cell.replace("|", "\\|") for cell in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_comparison(entries: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Write the comparison as markdown (``.md``) or JSON (``.json``), atomically."""
    out = Path(out)
    if out.suffix == ".json":
        write_json_atomic(out, list(entries))
    elif out.suffix == ".md":
        from mipo_engine.artifacts.store import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(comparison_markdown(entries), encoding="utf-8")
    else:
        raise ConfigError(f"comparison output must end in .md or .json, got {out}", key="out")
    return out
