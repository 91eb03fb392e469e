"""Render a run's report as one self-contained HTML page (inline CSS, PNGs as data URIs).

The page's markup is the Jinja2 template ``templates/report.html.j2``; this module turns a
``RunData`` into the values it shows. Autoescape is on, and every value the template prints
that is not already ``Markup`` goes through ``_t`` (``redact`` then ``html.escape``), so a
prompt holding ``<script>`` shows as text and a token-shaped string never reaches the page.
``Markup`` is made only here, from pieces that went through ``_t`` or are numbers, and for
the style sheet and the figures' base64 data. The page has no JavaScript.

Layout, top to bottom: a header (run, model, strategy, loss), a glance row of key numbers,
then per round: pipeline, filters, training, evaluation, judging, diversity and PMI, sample
pairs; finally the resolved configuration and anything that could not be read.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from mipo_engine.artifacts.manifest import redact
from mipo_engine.report.collect import (
    EvalGroup,
    EvalRow,
    PairStats,
    RunData,
    StageRow,
    TrainingData,
)
from mipo_engine.report.figures import Figure, headline_metric
from mipo_engine.resources import read_prompt

SECTION_TITLES = {
    "pipeline": "Pipeline",
    "filters": "Filters",
    "training": "Training",
    "evaluation": "Evaluation",
    "judging": "Judging",
    "diversity": "Diversity and PMI",
    "samples": "Sample pairs",
}
"""Section ids and headings (tests look for the headings)."""

CSS_FILE = "report.css"
"""The page's style sheet in ``prompts/``, inlined into every page."""

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_FILE = "report.html.j2"


# --------------------------------------------------------------------------------------------
# Text and number formatting
# --------------------------------------------------------------------------------------------


def _t(value: Any) -> str:
    """Any value as safe HTML text: secrets redacted, markup escaped."""
    return html.escape(redact("" if value is None else str(value)), quote=True)


def _finalize(value: Any) -> Any:
    """What the template prints for ``{{ value }}``: Markup as it is, anything else as
    ``_t`` makes it (the same escaping as the rest of the page, secrets redacted)."""
    if isinstance(value, Markup):
        return value
    return Markup(_t(value))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt_number(value: Any, digits: int = 3) -> Markup:
    """Integers with thousands separators, floats with ``digits`` decimals; "—" if missing."""
    if isinstance(value, bool) or value is None:
        return Markup("—")
    if isinstance(value, int):
        return Markup(f"{value:,}")
    if isinstance(value, float):
        if not math.isfinite(value):
            return Markup(str(value))
        return Markup(f"{value:,.{digits}f}")
    return Markup(_t(value))


def fmt_seconds(seconds: float | None) -> str:
    """ "4.2 s", "3 m 05 s", "1 h 02 m"; "—" if unknown."""
    if not _finite(seconds):
        return "—"
    assert seconds is not None
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def fmt_interval(value: Any, *, percent: bool, signed: bool = False) -> str:
    """ "43.5 [36.5, 50.5]" from a {"mean", "low", "high"} dict; "—" if missing."""
    if not isinstance(value, dict) or not all(
        _finite(value.get(k)) for k in ("mean", "low", "high")
    ):
        return "—"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    sign = "+" if signed else ""
    mean, low, high = (value[k] * scale for k in ("mean", "low", "high"))
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def interval_cell(value: Any, *, percent: bool, signed: bool = False) -> Markup:
    """A table cell: the mean, and the interval in small print below it (narrow columns).

    Signed values (differences) are coloured when the interval excludes 0.
    """
    text = fmt_interval(value, percent=percent, signed=signed)
    if text == "—":
        return Markup(text)
    mean, interval = text.split(" ", 1)
    if signed:
        css = "up" if value["low"] > 0 else "down" if value["high"] < 0 else ""
        mean = f'<span class="{css}">{mean}</span>' if css else mean
    return Markup(f'{mean}<span class="ci">{interval}</span>')


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if _finite(value) else "—"


def _general(value: Any) -> str:
    """A number in its shortest form (1e-05, 0.01); "—" if missing."""
    return f"{value:g}" if _finite(value) else "—"


def _logp(value: Any) -> str:
    return f"{value:.2f}" if _finite(value) else "—"


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _lookup(summary: dict[str, Any], dotted: str) -> Any:
    value: Any = summary
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _tag(tag: str, text: Any) -> Markup:
    """``<tag>text</tag>`` with the text escaped (``<code>``, ``<b>``)."""
    return Markup(f"<{tag}>{_t(text)}</{tag}>")


def _table(
    header: Sequence[Any], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()
) -> dict[str, Any]:
    """A table for the template: cells are text (escaped there) or Markup; ``numeric``
    column indices are right-aligned."""
    return {"header": list(header), "rows": [list(row) for row in rows], "numeric": set(numeric)}


def _figure(figure: Figure | None) -> dict[str, Any] | None:
    if figure is None:
        return None
    return {
        # base64 is not text: redacting it could match a token pattern and break the image.
        "data": Markup(base64.b64encode(figure.png).decode("ascii")),
        "wide": figure.wide,
        "title": figure.title,
        "caption": figure.caption,
        "name": figure.name,
    }


# --------------------------------------------------------------------------------------------
# Sections: the values each section of the template shows
# --------------------------------------------------------------------------------------------


def _status(row: StageRow) -> Markup:
    return Markup(f'<span class="badge {_t(row.status)}">{_t(row.status)}</span>')


def pipeline_section(run: RunData) -> dict[str, Any]:
    if not run.stages:
        return {"table": None}
    rows = [
        [
            row.name,
            row.stage,
            _tag("code", row.output),
            fmt_number(row.rows_in),
            fmt_number(row.rows_out),
            fmt_seconds(row.seconds),
            _status(row),
            row.note,
        ]
        for row in run.stages
    ]
    table = _table(
        ["step", "stage", "output", "rows in", "rows out", "time", "status", "notes"],
        rows,
        numeric=(3, 4, 5),
    )
    return {"table": table, "absent": "; ".join(run.absent)}


def filters_section(run: RunData) -> dict[str, Any] | None:
    stats = run.export
    if not stats:
        return None
    remaining = stats.get("input_pairs")
    rows: list[list[Any]] = [["input pairs", "", "", fmt_number(remaining), ""]]
    for entry in stats.get("filters") or []:
        removed = entry.get("removed")
        if isinstance(remaining, int) and isinstance(removed, int):
            remaining -= removed
        rows.append(
            [
                entry.get("filter"),
                entry.get("setting"),
                fmt_number(removed),
                fmt_number(remaining),
                entry.get("description"),
            ]
        )
    rows.append(
        [_tag("b", "exported"), "", "", _tag("b", fmt_number(stats.get("output_pairs"))), ""]
    )
    splits = stats.get("splits") or {}
    split_rows = [
        [name, fmt_number(info.get("pairs")), fmt_number(info.get("prompts"))]
        for name, info in splits.items()
        if isinstance(info, dict)
    ]
    details = [
        Markup(f"format <code>{_t(stats.get('format'))}</code>"),
        "with reference log-probs" if stats.get("reference_logps") else "no reference log-probs",
    ]
    return {
        "table": _table(
            ["filter", "setting", "removed", "remaining", "what it removes"], rows, (2, 3)
        ),
        "splits": _table(["split", "pairs", "prompts"], split_rows, (1, 2)) if splits else None,
        "details": Markup("; ").join(details),
    }


def displacement_verdict(training: TrainingData) -> tuple[str, str] | None:
    """(css class, sentence) on whether the chosen log-prob fell: likelihood displacement.

    With reference log-probs the last logged ``logps/chosen_shift`` is the change from the
    reference; without, the change of ``logps/chosen`` from the first logged step.
    """
    _, shift = training.series("logps/chosen_shift")
    finite = [v for v in shift if math.isfinite(v)]
    if finite:
        change, against = finite[-1], "the reference"
    else:
        _, values = training.series("logps/chosen")
        values = [v for v in values if math.isfinite(v)]
        if len(values) < 2:
            return None
        change, against = values[-1] - values[0], "the first logged step"
    rejected = [v for v in training.series("logps/rejected_shift")[1] if math.isfinite(v)]
    tail = f" (rejected: {rejected[-1]:+.2f})" if finite and rejected else ""
    if change < 0:
        return (
            "warn",
            f"Likelihood displacement: by the last step the chosen log-prob is {change:+.2f} "
            f"nats from {against}{tail}: the chosen responses became less likely (seeds 000, "
            "001, 002). MIO and InfoPO are designed to keep the chosen log-prob from falling.",
        )
    return (
        "ok",
        f"No likelihood displacement: by the last step the chosen log-prob is {change:+.2f} "
        f"nats from {against}{tail}.",
    )


_TRAINING_ROWS = (
    ("loss", "loss"),
    ("rewards/accuracies", "reward accuracy"),
    ("rewards/margins", "reward margin"),
    ("logps/chosen", "log-prob chosen"),
    ("logps/rejected", "log-prob rejected"),
    ("logps/chosen_shift", "chosen shift from reference"),
    ("logps/rejected_shift", "rejected shift from reference"),
    ("grad_norm", "gradient norm"),
)


def training_section(run: RunData, figures: dict[str, Figure]) -> dict[str, Any] | None:
    training = run.training
    if training is None:
        return None
    section: dict[str, Any] = {
        "table": None,
        "verdict": None,
        "folder": training.folder,
        "facts": _training_facts(training),
        "figures": [
            _figure(figures.get(k)) for k in ("logps", "rewards", "online_rewards", "loss")
        ],
    }
    if training.records:
        section["verdict"] = displacement_verdict(training)
        first, last = training.records[0], training.records[-1]
        rows = [
            [label, fmt_number(first.get(key)), fmt_number(last.get(key))]
            for key, label in _TRAINING_ROWS
            if key in first or key in last
        ]
        header = [
            "metric",
            f"first logged (step {int(first.get('step', 0))})",
            f"last logged (step {int(last.get('step', 0))})",
        ]
        section["table"] = _table(header, rows, (1, 2))
    return section


def _training_facts(training: TrainingData) -> Markup | None:
    """One line about the training run from its manifest; None before the manifest exists."""
    manifest = training.manifest
    if manifest is None:
        return None
    stats = manifest.get("stats") or {}
    loss = manifest.get("loss") or {}
    if manifest.get("method") not in (None, "offline"):
        trained = [
            f"method <b>{_t(manifest.get('method'))}</b>, reward <b>{_t(manifest.get('reward'))}</b>"
            + (f" (judge {_t(manifest.get('judge'))})" if manifest.get("judge") else ""),
            f"learning rate {_t(_general(manifest.get('learning_rate')))}",
            f"{fmt_number(stats.get('global_step'))} steps "
            f"on {fmt_number(manifest.get('prompts'))} prompts",
        ]
    else:
        trained = [
            f"loss <b>{_t(loss.get('loss'))}</b>: <code>{_t(loss.get('formula'))}</code> "
            f"({_t(loss.get('citation'))})",
            f"learning rate {_t(_general(manifest.get('learning_rate')))}",
            f"{fmt_number(stats.get('global_step'))} steps "
            f"on {fmt_number(manifest.get('pairs'))} pairs",
        ]
    facts = [
        f"folder <code>{_t(training.folder)}</code>",
        *trained,
        f"{fmt_seconds(stats.get('train_runtime_s'))}",
        f"{fmt_number(stats.get('tokens_per_second'), 1)} tokens/s",
    ]
    lora = manifest.get("lora")
    if isinstance(lora, dict):
        facts.append(f"LoRA r={_t(lora.get('r'))}, alpha={_t(lora.get('alpha'))}")
    return Markup("; ".join(facts))


Column = tuple[str, Callable[[EvalRow, int, EvalGroup], Any], bool]


def _metric_columns(kind: str) -> list[Column]:
    """(header, cell function, numeric) per column of an eval table of a task kind."""

    def interval_of(key: str, percent: bool) -> Callable[[EvalRow, int, EvalGroup], Any]:
        return lambda row, _, __: interval_cell(_lookup(row.summary, key), percent=percent)

    def delta_of(key: str, percent: bool) -> Callable[[EvalRow, int, EvalGroup], Any]:
        return lambda row, position, group: _delta(row, position, group, key, percent)

    common: list[Column] = [
        (
            "mean tokens",
            lambda row, _, __: fmt_number(row.summary.get("mean_response_tokens"), 1),
            True,
        ),
        ("hit limit %", lambda row, _, __: _percent(row.summary.get("hit_token_limit")), True),
    ]
    if kind in ("math", "mcq"):
        columns = [
            ("accuracy % [95% CI]", interval_of("accuracy", True), True),
            ("Δ vs baseline", delta_of("accuracy", True), True),
            ("answered %", lambda row, _, __: _percent(row.summary.get("answered")), True),
        ]
        if kind == "mcq":
            columns += [
                ("entropy | correct", lambda row, _, __: _entropy(row, "correct"), True),
                ("entropy | incorrect", lambda row, _, __: _entropy(row, "incorrect"), True),
            ]
        return columns + common
    if kind == "personalization":
        return [
            ("adherence % [95% CI]", interval_of("adherence", True), True),
            ("Δ adherence", delta_of("adherence", True), True),
            ("PMI [95% CI]", interval_of("pmi", False), True),
            ("Δ PMI", delta_of("pmi", False), True),
            (
                "self-BLEU-4",
                lambda row, _, __: fmt_number(_lookup(row.summary, "self_bleu_4.across_prompts")),
                True,
            ),
            ("win rate % [95% CI]", interval_of("judge.win_rate", True), True),
            *common,
        ]
    return common


def _entropy(row: EvalRow, which: str) -> str:
    stats = _lookup(row.summary, f"entropy.{which}")
    if not isinstance(stats, dict) or not _finite(stats.get("mean")):
        return "—"
    return f"{stats['mean']:.3f} (n={int(stats.get('n', 0))})"


def _delta(row: EvalRow, position: int, group: EvalGroup, key: str, percent: bool) -> Any:
    """Paired difference to the baseline when computed, else the difference of the means."""
    if position == 0:
        return "baseline"
    if key in row.difference:
        return interval_cell(row.difference[key], percent=percent, signed=True)
    ours, base = _lookup(row.summary, key), _lookup(group.rows[0].summary, key)
    if not isinstance(ours, dict) or not isinstance(base, dict):
        return "—"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    difference = (ours["mean"] - base["mean"]) * scale
    return Markup(f'{difference:+.{digits}f}<span class="ci">unpaired</span>')


def _eval_table(group: EvalGroup) -> dict[str, Any]:
    columns = _metric_columns(group.kind)
    header = ["eval", "model", "items", *(name for name, _, _ in columns)]
    rows = []
    for position, row in enumerate(group.rows):
        model = row.model + (f" + {row.adapter}" if row.adapter else "")
        cells = [_tag("b", row.label), model, fmt_number(row.summary.get("items"))]
        rows.append(cells + [function(row, position, group) for _, function, _ in columns])
    numeric = [2] + [3 + i for i, (_, _, is_number) in enumerate(columns) if is_number]
    return _table(header, rows, numeric)


def evaluation_section(run: RunData, figures: dict[str, Figure]) -> dict[str, Any] | None:
    if not run.evals:
        return None
    groups = []
    for group in run.evals:
        how = (
            "Δ: mean per-item difference to the baseline with a percentile-bootstrap 95% "
            "interval (paired on shared items)."
            if group.paired
            else "Δ: difference of the means (the per-item files were not available for a "
            "paired comparison)."
        )
        groups.append(
            {
                "task": group.task,
                "kind": group.kind or "task",
                "table": _eval_table(group),
                "how": how if len(group.rows) > 1 else None,
                "no_headline": headline_metric(group) is None,
            }
        )
    return {"groups": groups, "figure": _figure(figures.get("eval"))}


def judging_section(run: RunData) -> dict[str, Any]:
    rows = []
    for label, stats in run.judging:
        critic = stats.get("critic_accuracy") or {}
        win = (stats.get("win_rate") or {}).get("overall") or {}
        adherence = stats.get("adherence") or {}
        means = stats.get("mean_score") or {}
        rows.append(
            [
                _tag("code", label),
                stats.get("mode"),
                fmt_number(stats.get("responses")),
                fmt_number(means.get("chosen"), 2),
                fmt_number(means.get("rejected"), 2),
                _percent(critic.get("strict")),
                _percent(critic.get("tie_tolerant")),
                _percent(win.get("win_rate")),
                _percent(adherence.get("rate")),
                fmt_number(stats.get("null_scores")),
            ]
        )
    header = [
        "judgments",
        "mode",
        "responses",
        "mean score chosen",
        "mean score rejected",
        "critic acc. strict %",
        "critic acc. ties ok %",
        "win rate %",
        "adherence %",
        "null scores",
    ]
    return {"table": _table(header, rows, tuple(range(2, 10)))}


def diversity_section(run: RunData, figures: dict[str, Figure]) -> dict[str, Any]:
    section: dict[str, Any] = {
        "pairs": None,
        "eval_table": _eval_diversity_table(run),
        "figures": [_figure(figures.get(key)) for key in ("pmi", "lengths")],
    }
    if run.pairs is not None:
        section["pairs"] = fmt_number(run.pairs.pairs)
        section["pair_table"] = _pair_diversity_table(run.pairs)
        section["pmi"] = _pmi_summary(run.pairs.pmi, run.pairs.ref_margin)
    return section


def _pair_diversity_table(pairs: PairStats) -> dict[str, Any]:
    """Diversity, length and finish reasons of the chosen and the rejected responses."""
    rows = [
        ["self-BLEU-4 (lower = more diverse)", pairs.self_bleu, 3],
        ["distinct-2 (higher = more diverse)", pairs.distinct_2, 3],
        [
            "mean tokens",
            {"chosen": _mean(pairs.chosen_tokens), "rejected": _mean(pairs.rejected_tokens)},
            1,
        ],
    ]
    cells: list[list[Any]] = [
        [name, fmt_number(values["chosen"], digits), fmt_number(values["rejected"], digits)]
        for name, values, digits in rows
    ]
    reasons = [_reasons(pairs.finish_reasons.get(side, {})) for side in ("chosen", "rejected")]
    cells.append(["finish reasons", *reasons])
    return _table(["", "chosen", "rejected"], cells, (1, 2))


def _eval_diversity_table(run: RunData) -> dict[str, Any] | None:
    """Self-BLEU and PMI of the personalization eval outputs (before and after training)."""
    rows = [
        [
            group.task,
            row.label,
            fmt_number(_lookup(row.summary, "self_bleu_4.across_prompts")),
            fmt_number(_lookup(row.summary, "self_bleu_4.within_prompt")),
            interval_cell(row.summary.get("pmi"), percent=False),
        ]
        for group in run.evals
        for row in group.rows
        if group.kind == "personalization"
    ]
    if not rows:
        return None
    header = [
        "task",
        "eval",
        "self-BLEU-4 across prompts",
        "self-BLEU-4 within prompt",
        "PMI [95% CI]",
    ]
    return _table(header, rows, (2, 3, 4))


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "—"


def _pmi_summary(pmi: list[float], margins: list[float]) -> str | None:
    """One sentence on PMI and the reference's preference; None without reference scores."""
    if not pmi and not margins:
        return None
    facts = []
    if pmi:
        positive = sum(v > 0 for v in pmi) / len(pmi)
        facts.append(
            f"PMI of chosen: mean {statistics.fmean(pmi):+.3f}, "
            f"median {statistics.median(pmi):+.3f}, "
            f"{100 * positive:.0f}% of {len(pmi)} pairs above 0"
        )
    if margins:
        ahead = sum(v > 0 for v in margins) / len(margins)
        facts.append(f"reference prefers chosen in {100 * ahead:.0f}% of pairs")
    return "; ".join(facts)


def samples_section(run: RunData) -> list[dict[str, Any]]:
    return [_pair(sample) for sample in run.samples]


def _pair(sample: dict[str, Any]) -> dict[str, Any]:
    head = [Markup(f"pair <code>{_t(sample['id'])}</code>"), Markup(_t(sample["strategy"]))]
    if sample.get("kept") is not None:
        kept = sample["kept"]
        head.append(
            Markup(
                f'<span class="badge {"kept" if kept else "dropped"}">'
                f"{'exported' if kept else 'filtered out'}</span>"
            )
        )
    if _finite(sample.get("pmi")):
        head.append(Markup(f"PMI {sample['pmi']:+.3f}"))
    if _finite(sample.get("judge_chosen")) or _finite(sample.get("judge_rejected")):
        head.append(
            Markup(
                f"judge {_logp(sample.get('judge_chosen'))} "
                f"vs {_logp(sample.get('judge_rejected'))}"
            )
        )
    return {
        "head": head,
        "context": sample.get("context") or None,
        "prompt": sample["prompt"],
        "sides": [_side(sample, side) for side in ("chosen", "rejected")],
    }


def _side(sample: dict[str, Any], side: str) -> dict[str, Any]:
    facts = [
        Markup(f"finish: {_t(sample[f'{side}_finish_reason'])}"),
        Markup(f"{fmt_number(sample[f'{side}_tokens'])} tokens"),
    ]
    if _finite(sample.get(f"ref_{side}_logps")):
        facts.append(Markup(f"ref log-prob {_logp(sample[f'ref_{side}_logps'])}"))
    text = sample[side]
    return {"side": side, "facts": facts, "text": text, "empty": not text.strip()}


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------


def _latest(runs: Sequence[RunData], has: Callable[[RunData], bool]) -> RunData | None:
    return next((run for run in reversed(runs) if has(run)), None)


def _glance(runs: Sequence[RunData]) -> list[tuple[Any, str]]:
    """Key numbers for the row of cards, each from the latest round that has it."""
    cards: list[tuple[Any, str]] = []

    def where(run: RunData) -> str:
        if len(runs) == 1:
            return ""
        return " (round 1)" if run is runs[0] else f" ({run.label})"

    generated = _latest(runs, lambda r: r.pairs is not None)
    if generated is not None and generated.pairs is not None:
        cards.append((fmt_number(generated.pairs.pairs), "pairs generated" + where(generated)))
    exported = _latest(runs, lambda r: bool(r.export))
    if exported is not None and exported.export:
        count = fmt_number(exported.export.get("output_pairs"))
        cards.append((count, "pairs exported after filters" + where(exported)))
    trained = _latest(runs, lambda r: r.training is not None and bool(r.training.records))
    if trained is not None and trained.training is not None:
        last = trained.training.records[-1]
        steps = fmt_number(int(last.get("step", 0)))
        cards.append((steps, "training steps logged" + where(trained)))
        if "rewards/accuracies" in last:
            accuracy = _percent(last["rewards/accuracies"]) + "%"
            cards.append((accuracy, "final reward accuracy" + where(trained)))
        if "logps/chosen_shift" in last:
            shift = f"{last['logps/chosen_shift']:+.2f}"
            cards.append((shift, "final chosen log-prob shift" + where(trained)))
    for group in (group for run in runs for group in run.evals):
        cards.extend(_eval_card(group))
    return cards


def _eval_card(group: EvalGroup) -> list[tuple[str, str]]:
    """The headline difference of the last eval output of a task to its baseline."""
    metric = headline_metric(group)
    if metric is None or len(group.rows) < 2:
        return []
    key, percent = metric
    difference = group.rows[-1].difference.get(key)
    if not isinstance(difference, dict) or not _finite(difference.get("mean")):
        return []
    scale = 100 if percent else 1
    value = difference["mean"] * scale
    text = f"{value:+.1f} pts" if percent else f"{value:+.3f}"
    low, high = difference.get("low"), difference.get("high")
    if _finite(low) and _finite(high):
        text += (
            f" [{low * scale:+.1f}, {high * scale:+.1f}]"
            if percent
            else (f" [{low:+.3f}, {high:+.3f}]")
        )
    label = f"{group.task} {key}: {group.rows[-1].label} vs {group.rows[0].label}"
    return [(text, label + " (paired, bootstrap 95%)")]


SECTION_ORDER = ("pipeline", "filters", "training", "evaluation", "judging", "diversity", "samples")


def _round_sections(
    run: RunData, figures: dict[str, Figure], *, slug: str, level: int, compact: bool = False
) -> list[dict[str, Any]]:
    """The sections of one round; ``compact`` leaves out those without data (later rounds,
    whose pipeline table already says what they lack)."""
    present = {
        "pipeline": True,
        "filters": bool(run.export),
        "training": run.training is not None,
        "evaluation": bool(run.evals),
        "judging": bool(run.judging),
        "diversity": run.pairs is not None or bool(run.evals),
        "samples": bool(run.samples),
    }
    data: dict[str, Any] = {
        "pipeline": pipeline_section(run),
        "filters": filters_section(run),
        "training": training_section(run, figures),
        "evaluation": evaluation_section(run, figures),
        "diversity": diversity_section(run, figures),
        "samples": samples_section(run),
    }
    if run.judging:
        data["judging"] = judging_section(run)
    return [
        {
            "key": key,
            "title": SECTION_TITLES[key],
            "anchor": f"{slug}{key}",
            "level": level,
            "data": data[key],
        }
        for key in SECTION_ORDER
        if key in data and (present[key] or not compact)
    ]


def _nav(rounds: Sequence[tuple[RunData, dict[str, Figure]]]) -> list[tuple[str, str]]:
    if len(rounds) > 1:
        links = [(f"#{_slug(index)}round", run.label) for index, (run, _) in enumerate(rounds)]
    else:
        run = rounds[0][0]
        keys = [k for k in SECTION_TITLES if k != "judging" or run.judging]
        links = [(f"#{key}", SECTION_TITLES[key]) for key in keys]
    links.append(("#config", "Configuration"))
    return links


def _slug(index: int) -> str:
    return "" if index == 0 else f"r{index + 1}-"


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return environment.get_template(TEMPLATE_FILE)


def render_report(rounds: Sequence[tuple[RunData, dict[str, Figure]]], *, generated_at: str) -> str:
    """The whole page for a run (first entry) and its later rounds, with their figures."""
    if not rounds:
        raise ValueError("render_report needs at least the run itself")
    import yaml

    runs = [run for run, _ in rounds]
    top = runs[0]
    sections = []
    for index, (run, figures) in enumerate(rounds):
        slug = _slug(index) if len(rounds) > 1 else ""
        heading = None
        if len(rounds) > 1:
            heading = f"Round {index + 1}" + (f": {run.label}" if index else "")
        sections.append(
            {
                "slug": slug,
                "heading": heading,
                "sections": _round_sections(
                    run, figures, slug=slug, level=2 if len(rounds) == 1 else 3, compact=index > 0
                ),
            }
        )
    meta = [(key, value) for key, value in top.header.items() if key != "run"]
    meta.append(("report", generated_at))
    pipeline_yaml = None
    if top.pipeline is not None:
        pipeline_yaml = yaml.safe_dump(top.pipeline, sort_keys=False, allow_unicode=True)
    return _template().render(
        title=top.header.get("run", top.label),
        css=Markup(read_prompt(CSS_FILE)),
        meta=meta,
        nav=_nav(rounds),
        glance=_glance(runs),
        rounds=sections,
        pipeline_yaml=pipeline_yaml,
        problems=[f"{run.label}: {problem}" for run in runs for problem in run.problems],
    )
