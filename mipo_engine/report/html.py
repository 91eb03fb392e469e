"""Render a run's report as one self-contained HTML page (inline CSS, PNGs as data URIs).

The page is written by hand with the standard library: every piece of run, user or model text
passes through ``_t`` (``redact`` then ``html.escape``), so a prompt holding ``<script>`` shows
as text and a token-shaped string never reaches the page. The page has no JavaScript.

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
from typing import Any

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


# --------------------------------------------------------------------------------------------
# Text and number formatting
# --------------------------------------------------------------------------------------------


def _t(value: Any) -> str:
    """Any value as safe HTML text: secrets redacted, markup escaped."""
    return html.escape(redact("" if value is None else str(value)), quote=True)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt_number(value: Any, digits: int = 3) -> str:
    """Integers with thousands separators, floats with ``digits`` decimals; "—" if missing."""
    if isinstance(value, bool) or value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.{digits}f}"
    return _t(value)


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


def interval_cell(value: Any, *, percent: bool, signed: bool = False) -> str:
    """A table cell: the mean, and the interval in small print below it (narrow columns).

    Signed values (differences) are coloured when the interval excludes 0.
    """
    text = fmt_interval(value, percent=percent, signed=signed)
    if text == "—":
        return text
    mean, interval = text.split(" ", 1)
    if signed:
        css = "up" if value["low"] > 0 else "down" if value["high"] < 0 else ""
        mean = f'<span class="{css}">{mean}</span>' if css else mean
    return f'{mean}<span class="ci">{interval}</span>'


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()
) -> str:
    """A table from already-escaped cells; ``numeric`` column indices are right-aligned."""

    def cell(tag: str, index: int, content: str) -> str:
        css = ' class="num"' if index in numeric else ""
        return f"<{tag}{css}>{content}</{tag}>"

    head = "".join(cell("th", i, _t(name)) for i, name in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, content) for i, content in enumerate(row)) + "</tr>"
        for row in rows
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _figure(figure: Figure | None) -> str:
    if figure is None:
        return ""
    data = base64.b64encode(figure.png).decode("ascii")
    css = "" if figure.wide else ' class="half"'
    return (
        f'<figure{css}><img src="data:image/png;base64,{data}" alt="{_t(figure.title)}">'
        f"<figcaption><b>{_t(figure.title)}.</b> {_t(figure.caption)} "
        f'<a href="{_t(figure.name)}">{_t(figure.name)}</a></figcaption></figure>'
    )


def _absent(text: str) -> str:
    return f'<p class="absent">{_t(text)}</p>'


def _section(key: str, body: str, *, anchor: str, level: int) -> str:
    title = SECTION_TITLES[key]
    return (
        f'<section class="card" id="{_t(anchor)}"><h{level}>{_t(title)}</h{level}>{body}</section>'
    )


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _status(row: StageRow) -> str:
    return f'<span class="badge {_t(row.status)}">{_t(row.status)}</span>'


def pipeline_body(run: RunData) -> str:
    if not run.stages:
        return _absent("No stage outputs found in this folder.")
    rows = [
        [
            _t(row.name),
            _t(row.stage),
            f"<code>{_t(row.output)}</code>",
            fmt_number(row.rows_in),
            fmt_number(row.rows_out),
            fmt_seconds(row.seconds),
            _status(row),
            _t(row.note),
        ]
        for row in run.stages
    ]
    table = _table(
        ["step", "stage", "output", "rows in", "rows out", "time", "status", "notes"],
        rows,
        numeric=(3, 4, 5),
    )
    note = ""
    if run.absent:
        note = f'<p class="small muted">Not in this run: {_t("; ".join(run.absent))}.</p>'
    return table + note


def filters_body(run: RunData) -> str:
    stats = run.export
    if not stats:
        return _absent("No export manifest: filter counts appear after mipo export.")
    remaining = stats.get("input_pairs")
    rows = [["input pairs", "", "", fmt_number(remaining), ""]]
    for entry in stats.get("filters") or []:
        removed = entry.get("removed")
        if isinstance(remaining, int) and isinstance(removed, int):
            remaining -= removed
        rows.append(
            [
                _t(entry.get("filter")),
                _t(entry.get("setting")),
                fmt_number(removed),
                fmt_number(remaining),
                _t(entry.get("description")),
            ]
        )
    rows.append(["<b>exported</b>", "", "", f"<b>{fmt_number(stats.get('output_pairs'))}</b>", ""])
    body = _table(["filter", "setting", "removed", "remaining", "what it removes"], rows, (2, 3))
    splits = stats.get("splits") or {}
    if splits:
        split_rows = [
            [_t(name), fmt_number(info.get("pairs")), fmt_number(info.get("prompts"))]
            for name, info in splits.items()
            if isinstance(info, dict)
        ]
        body += "<h3>Splits</h3>" + _table(["split", "pairs", "prompts"], split_rows, (1, 2))
    details = [f"format <code>{_t(stats.get('format'))}</code>"]
    details.append(
        "with reference log-probs" if stats.get("reference_logps") else "no reference log-probs"
    )
    return body + f'<p class="small muted">{"; ".join(details)}.</p>'


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


def training_body(run: RunData, figures: dict[str, Figure]) -> str:
    training = run.training
    if training is None:
        return _absent("No training folder (metrics.jsonl or train_manifest.json).")
    parts = []
    if not training.records:
        parts.append(_absent("The training folder has no logged steps yet."))
    else:
        verdict = displacement_verdict(training)
        if verdict is not None:
            parts.append(f'<div class="callout {verdict[0]}">{_t(verdict[1])}</div>')
        first, last = training.records[0], training.records[-1]
        rows = [
            [_t(label), fmt_number(first.get(key)), fmt_number(last.get(key))]
            for key, label in _TRAINING_ROWS
            if key in first or key in last
        ]
        header = [
            "metric",
            f"first logged (step {int(first.get('step', 0))})",
            f"last logged (step {int(last.get('step', 0))})",
        ]
        parts.append(_table(header, rows, (1, 2)))
    parts.append(_training_facts(training))
    keys = ("logps", "rewards", "online_rewards", "loss")
    shown = "".join(_figure(figures.get(key)) for key in keys)
    return "".join(parts) + f'<div class="figs">{shown}</div>'


def _training_facts(training: TrainingData) -> str:
    manifest = training.manifest
    if manifest is None:
        return (
            f'<p class="small muted">Folder <code>{_t(training.folder)}</code>: no train '
            "manifest yet (running, stopped, or killed; rerun mipo train to resume).</p>"
        )
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
    return f'<p class="small muted">{"; ".join(facts)}.</p>'


def _metric_columns(kind: str) -> list[tuple[str, Callable[[EvalRow, int, EvalGroup], str], bool]]:
    """(header, cell function, numeric) per column of an eval table of a task kind."""

    def interval_of(key: str, percent: bool) -> Callable[[EvalRow, int, EvalGroup], str]:
        return lambda row, _, __: interval_cell(_lookup(row.summary, key), percent=percent)

    def delta_of(key: str, percent: bool) -> Callable[[EvalRow, int, EvalGroup], str]:
        return lambda row, position, group: _delta(row, position, group, key, percent)

    common: list[tuple[str, Callable[[EvalRow, int, EvalGroup], str], bool]] = [
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


def _lookup(summary: dict[str, Any], dotted: str) -> Any:
    value: Any = summary
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if _finite(value) else "—"


def _entropy(row: EvalRow, which: str) -> str:
    stats = _lookup(row.summary, f"entropy.{which}")
    if not isinstance(stats, dict) or not _finite(stats.get("mean")):
        return "—"
    return f"{stats['mean']:.3f} (n={int(stats.get('n', 0))})"


def _delta(row: EvalRow, position: int, group: EvalGroup, key: str, percent: bool) -> str:
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
    return f'{difference:+.{digits}f}<span class="ci">unpaired</span>'


def _eval_table(group: EvalGroup) -> str:
    columns = _metric_columns(group.kind)
    header = ["eval", "model", "items", *(name for name, _, _ in columns)]
    rows = []
    for position, row in enumerate(group.rows):
        model = row.model + (f" + {row.adapter}" if row.adapter else "")
        cells = [f"<b>{_t(row.label)}</b>", _t(model), fmt_number(row.summary.get("items"))]
        rows.append(cells + [function(row, position, group) for _, function, _ in columns])
    numeric = [2] + [3 + i for i, (_, _, is_number) in enumerate(columns) if is_number]
    return _table(header, rows, numeric)


def evaluation_body(run: RunData, figures: dict[str, Figure]) -> str:
    if not run.evals:
        return _absent("No eval outputs (mipo eval) in this run.")
    parts = []
    for group in run.evals:
        parts.append(
            f"<h3>{_t(group.task)} "
            f"<span class='muted small'>({_t(group.kind or 'task')})</span></h3>"
        )
        parts.append(_eval_table(group))
        how = (
            "Δ: mean per-item difference to the baseline with a percentile-bootstrap 95% "
            "interval (paired on shared items)."
            if group.paired
            else "Δ: difference of the means (the per-item files were not available for a "
            "paired comparison)."
        )
        if len(group.rows) > 1:
            parts.append(
                f'<p class="small muted">{_t(how)} Green / red: the interval excludes 0.</p>'
            )
        if headline_metric(group) is None:
            parts.append(_absent("This task has no headline metric with an interval."))
    parts.append(_figure(figures.get("eval")))
    return "".join(parts)


def judging_body(run: RunData) -> str:
    rows = []
    for label, stats in run.judging:
        critic = stats.get("critic_accuracy") or {}
        win = (stats.get("win_rate") or {}).get("overall") or {}
        adherence = stats.get("adherence") or {}
        means = stats.get("mean_score") or {}
        rows.append(
            [
                f"<code>{_t(label)}</code>",
                _t(stats.get("mode")),
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
    return _table(header, rows, tuple(range(2, 10))) + (
        '<p class="small muted">Critic accuracy: how often the judge scores the chosen response '
        "above the rejected one (strict) or at least as high (ties ok), seed 004 Table 6.</p>"
    )


def diversity_body(run: RunData, figures: dict[str, Figure]) -> str:
    parts = []
    if run.pairs is None:
        parts.append(
            _absent("No generations: pair diversity and PMI need mipo generate (and mipo score).")
        )
    else:
        parts.append(f"<h3>Generated pairs ({fmt_number(run.pairs.pairs)})</h3>")
        parts.append(_pair_diversity_table(run.pairs))
        parts.append(_pmi_summary(run.pairs.pmi, run.pairs.ref_margin))
    parts.append(_eval_diversity_table(run))
    parts.append(
        '<p class="small muted">Self-BLEU-4 scores each response against the others of its '
        "set (Texygen; seed 004 Tables 3-4); distinct-2 is the share of unique word bigrams.</p>"
    )
    shown = "".join(_figure(figures.get(key)) for key in ("pmi", "lengths"))
    return "".join(parts) + f'<div class="figs">{shown}</div>'


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _pair_diversity_table(pairs: PairStats) -> str:
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
    cells = [
        [_t(name), fmt_number(values["chosen"], digits), fmt_number(values["rejected"], digits)]
        for name, values, digits in rows
    ]
    reasons = [_t(_reasons(pairs.finish_reasons.get(side, {}))) for side in ("chosen", "rejected")]
    cells.append(["finish reasons", *reasons])
    return _table(["", "chosen", "rejected"], cells, (1, 2))


def _eval_diversity_table(run: RunData) -> str:
    """Self-BLEU and PMI of the personalization eval outputs (before and after training)."""
    rows = [
        [
            _t(group.task),
            _t(row.label),
            fmt_number(_lookup(row.summary, "self_bleu_4.across_prompts")),
            fmt_number(_lookup(row.summary, "self_bleu_4.within_prompt")),
            interval_cell(row.summary.get("pmi"), percent=False),
        ]
        for group in run.evals
        for row in group.rows
        if group.kind == "personalization"
    ]
    if not rows:
        return ""
    header = [
        "task",
        "eval",
        "self-BLEU-4 across prompts",
        "self-BLEU-4 within prompt",
        "PMI [95% CI]",
    ]
    return "<h3>Evaluated models</h3>" + _table(header, rows, (2, 3, 4))


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "—"


def _pmi_summary(pmi: list[float], margins: list[float]) -> str:
    if not pmi and not margins:
        return _absent("No reference scores: PMI needs mipo score.")
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
    return f"<p>{_t('; '.join(facts))}.</p>"


def _general(value: Any) -> str:
    """A number in its shortest form (1e-05, 0.01); "—" if missing."""
    return f"{value:g}" if _finite(value) else "—"


def _logp(value: Any) -> str:
    return f"{value:.2f}" if _finite(value) else "—"


def samples_body(run: RunData) -> str:
    if not run.samples:
        return _absent("No generations to sample pairs from.")
    return "".join(_pair_card(sample) for sample in run.samples)


def _pair_card(sample: dict[str, Any]) -> str:
    head = [f"pair <code>{_t(sample['id'])}</code>", _t(sample["strategy"])]
    if sample.get("kept") is not None:
        kept = sample["kept"]
        head.append(
            f'<span class="badge {"kept" if kept else "dropped"}">'
            f"{'exported' if kept else 'filtered out'}</span>"
        )
    if _finite(sample.get("pmi")):
        head.append(f"PMI {sample['pmi']:+.3f}")
    if _finite(sample.get("judge_chosen")) or _finite(sample.get("judge_rejected")):
        head.append(
            f"judge {_logp(sample.get('judge_chosen'))} vs {_logp(sample.get('judge_rejected'))}"
        )
    blocks = []
    if sample.get("context"):
        blocks.append(_text_block("User context", sample["context"]))
    blocks.append(_text_block("Prompt", sample["prompt"]))
    sides = "".join(_side(sample, side) for side in ("chosen", "rejected"))
    return (
        f'<article class="pair"><div class="pair-head">{" · ".join(head)}</div>'
        f'{"".join(blocks)}<div class="sides">{sides}</div></article>'
    )


def _text_block(label: str, text: str) -> str:
    return (
        f'<div class="block"><div class="label">{_t(label)}</div>'
        f'<p class="text">{_t(text)}</p></div>'
    )


def _side(sample: dict[str, Any], side: str) -> str:
    facts = [
        f"finish: {_t(sample[f'{side}_finish_reason'])}",
        f"{fmt_number(sample[f'{side}_tokens'])} tokens",
    ]
    if _finite(sample.get(f"ref_{side}_logps")):
        facts.append(f"ref log-prob {_logp(sample[f'ref_{side}_logps'])}")
    text = sample[side]
    shown = _t(text) if text.strip() else '<span class="absent">(empty response)</span>'
    return (
        f'<div class="side {side}"><div class="label">{side}</div>'
        f'<div class="facts">{" · ".join(facts)}</div>'
        f'<p class="text">{shown}</p></div>'
    )


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------


def _latest(runs: Sequence[RunData], has: Callable[[RunData], bool]) -> RunData | None:
    return next((run for run in reversed(runs) if has(run)), None)


def _glance(runs: Sequence[RunData]) -> str:
    """Key numbers in a row of cards, each from the latest round that has it."""
    cards: list[tuple[str, str]] = []

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
    if not cards:
        return ""
    inner = "".join(
        f"<div><b>{_t(value)}</b><span>{_t(label)}</span></div>" for value, label in cards
    )
    return f'<div class="glance">{inner}</div>'


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


def _round_sections(
    run: RunData, figures: dict[str, Figure], *, slug: str, level: int, compact: bool = False
) -> str:
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
    bodies = {
        "pipeline": pipeline_body(run),
        "filters": filters_body(run),
        "training": training_body(run, figures),
        "evaluation": evaluation_body(run, figures),
        "diversity": diversity_body(run, figures),
        "samples": samples_body(run),
    }
    if run.judging:
        bodies["judging"] = judging_body(run)
    if compact:
        bodies = {key: body for key, body in bodies.items() if present[key]}
    order = ["pipeline", "filters", "training", "evaluation", "judging", "diversity", "samples"]
    return "".join(
        _section(key, bodies[key], anchor=f"{slug}{key}", level=level)
        for key in order
        if key in bodies
    )


def _header(run: RunData, generated_at: str) -> str:
    meta = [(key, value) for key, value in run.header.items() if key != "run"]
    meta.append(("report", generated_at))
    items = "".join(f"<div><dt>{_t(k)}</dt><dd>{_t(v)}</dd></div>" for k, v in meta)
    title = run.header.get("run", run.label)
    return (
        f'<header class="hero"><div class="wrap"><div class="kicker">mipo-engine run report</div>'
        f"<h1>{_t(title)}</h1><dl class='meta'>{items}</dl></div></header>"
    )


def _nav(rounds: Sequence[tuple[RunData, dict[str, Figure]]]) -> str:
    if len(rounds) > 1:
        links = [(f"#{_slug(index)}round", run.label) for index, (run, _) in enumerate(rounds)]
    else:
        run = rounds[0][0]
        keys = [k for k in SECTION_TITLES if k != "judging" or run.judging]
        links = [(f"#{key}", SECTION_TITLES[key]) for key in keys]
    links.append(("#config", "Configuration"))
    inner = "".join(f'<a href="{_t(href)}">{_t(text)}</a>' for href, text in links)
    return f'<nav><div class="wrap">{inner}</div></nav>'


def _slug(index: int) -> str:
    return "" if index == 0 else f"r{index + 1}-"


def _config_section(runs: Sequence[RunData]) -> str:
    import yaml

    parts = []
    top = runs[0]
    if top.pipeline is not None:
        text = yaml.safe_dump(top.pipeline, sort_keys=False, allow_unicode=True)
        parts.append(
            "<details open><summary>pipeline.yaml (secrets redacted)</summary>"
            f"<pre>{_t(text)}</pre></details>"
        )
    else:
        parts.append(_absent("No pipeline.yaml (stages were run by hand)."))
    problems = [f"{run.label}: {problem}" for run in runs for problem in run.problems]
    if problems:
        items = "".join(f"<li>{_t(problem)}</li>" for problem in problems)
        parts.append(f"<h3>Could not read</h3><ul class='small'>{items}</ul>")
    return f'<section class="card" id="config"><h2>Configuration</h2>{"".join(parts)}</section>'


def render_report(rounds: Sequence[tuple[RunData, dict[str, Figure]]], *, generated_at: str) -> str:
    """The whole page for a run (first entry) and its later rounds, with their figures."""
    if not rounds:
        raise ValueError("render_report needs at least the run itself")
    top = rounds[0][0]
    body = [_glance([run for run, _ in rounds])]
    if len(rounds) == 1:
        body.append(_round_sections(top, rounds[0][1], slug="", level=2))
    else:
        for index, (run, figures) in enumerate(rounds):
            slug = _slug(index)
            title = f"Round {index + 1}" + (f": {run.label}" if index else "")
            body.append(f'<h2 class="round" id="{slug}round">{_t(title)}</h2>')
            body.append(_round_sections(run, figures, slug=slug, level=3, compact=index > 0))
    body.append(_config_section([run for run, _ in rounds]))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>mipo report: {_t(top.header.get('run', top.label))}</title>"
        f"<style>{read_prompt(CSS_FILE)}</style></head><body>"
        f"{_header(top, generated_at)}{_nav(rounds)}"
        f'<main><div class="wrap">{"".join(body)}</div></main></body></html>\n'
    )
