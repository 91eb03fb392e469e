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
from collections.abc import Callable, Sequence
from typing import Any

from mipo_engine.artifacts.manifest import redact
from mipo_engine.report.collect import EvalGroup, EvalRow, RunData, StageRow, TrainingData
from mipo_engine.report.figures import Figure, headline_metric

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

CSS = """
:root { --ink:#1f2430; --muted:#5f6b7a; --line:#e3e6ea; --bg:#f5f6f8; --card:#fff;
  --chosen:#1b9e77; --rejected:#d95f02; --accent:#4b4fbf; --warn:#b7791f; --bad:#c53030; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header.hero { background:linear-gradient(120deg,#23265a,#4b4fbf); color:#fff; padding:28px 0 22px; }
.wrap { max-width:1180px; margin:0 auto; padding:0 24px; }
.kicker { text-transform:uppercase; letter-spacing:.08em; font-size:12px; opacity:.8; }
h1 { margin:4px 0 12px; font-size:30px; font-weight:650; word-break:break-word; }
dl.meta { display:flex; flex-wrap:wrap; gap:8px 22px; margin:0; }
dl.meta div { display:flex; gap:6px; } dl.meta dt { opacity:.75; } dl.meta dd { margin:0; font-weight:600; }
nav { background:#fff; border-bottom:1px solid var(--line); position:sticky; top:0; z-index:2; }
nav .wrap { display:flex; flex-wrap:wrap; gap:4px 18px; padding-top:10px; padding-bottom:10px; }
nav a { color:var(--accent); text-decoration:none; font-size:14px; } nav a:hover { text-decoration:underline; }
main { padding:18px 0 40px; }
section.card { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:18px 22px; margin:18px 0; box-shadow:0 1px 2px rgba(0,0,0,.04); }
h2 { font-size:21px; margin:0 0 12px; } h3 { font-size:17px; margin:18px 0 8px; }
h2.round { margin:30px 0 0; font-size:24px; color:#23265a; }
.muted { color:var(--muted); } .small { font-size:13px; }
.glance { display:grid; grid-template-columns:repeat(auto-fit,minmax(170px,1fr)); gap:12px; }
.glance div { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
.glance b { display:block; font-size:22px; font-variant-numeric:tabular-nums; }
.glance span { color:var(--muted); font-size:13px; }
table { border-collapse:collapse; width:100%; font-size:14px; margin:6px 0 4px; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#fafbfc; font-weight:600; color:#3a4250; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tbody tr:nth-child(even) { background:#fcfcfd; }
code, pre { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:13px; }
.badge { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px; font-weight:600;
  background:#edf2f7; color:#4a5568; }
.badge.done { background:#e6f6ef; color:#17694f; } .badge.failed { background:#fde8e8; color:var(--bad); }
.badge.incomplete, .badge.interrupted { background:#fdf3e1; color:var(--warn); }
.badge.kept { background:#e6f6ef; color:#17694f; } .badge.dropped { background:#fde8e8; color:var(--bad); }
.up { color:#17694f; font-weight:600; } .down { color:var(--bad); font-weight:600; }
.callout { border-left:4px solid var(--accent); background:#f3f3fc; padding:10px 14px; border-radius:6px; margin:8px 0 14px; }
.callout.warn { border-color:var(--rejected); background:#fdf4ee; }
.callout.ok { border-color:var(--chosen); background:#eef8f4; }
.absent { color:var(--muted); font-style:italic; }
figure { margin:14px 0; } figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.pair { border:1px solid var(--line); border-radius:10px; margin:14px 0; overflow:hidden; }
.pair-head { display:flex; flex-wrap:wrap; gap:6px 16px; align-items:center; padding:8px 14px;
  background:#fafbfc; border-bottom:1px solid var(--line); font-size:13px; color:var(--muted); }
.pair-head code { color:var(--ink); }
.pair .block { padding:8px 14px; border-bottom:1px solid var(--line); }
.label { text-transform:uppercase; letter-spacing:.06em; font-size:11px; color:var(--muted); font-weight:700; }
.text { white-space:pre-wrap; word-break:break-word; margin:2px 0 0; }
.sides { display:grid; grid-template-columns:1fr 1fr; }
.side { padding:10px 14px; min-width:0; } .side + .side { border-left:1px solid var(--line); }
.side.chosen .label { color:var(--chosen); } .side.rejected .label { color:var(--rejected); }
.side.chosen { border-top:3px solid var(--chosen); } .side.rejected { border-top:3px solid var(--rejected); }
.facts { font-size:12px; color:var(--muted); margin:2px 0 6px; }
details pre { background:#f7f8fa; border:1px solid var(--line); border-radius:6px; padding:10px; overflow:auto; }
@media (max-width: 820px) { .sides { grid-template-columns:1fr; } .side + .side { border-left:0; border-top:1px solid var(--line); } }
"""


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


def _delta_cell(value: Any, *, percent: bool) -> str:
    """A paired difference, coloured when its interval excludes 0."""
    text = fmt_interval(value, percent=percent, signed=True)
    if text == "—":
        return text
    css = "up" if value["low"] > 0 else "down" if value["high"] < 0 else ""
    return f'<span class="{css}">{text}</span>' if css else text


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
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(figure: Figure | None) -> str:
    if figure is None:
        return ""
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_t(figure.title)}">'
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
            f"nats from {against}{tail}. The chosen responses became less likely even as the "
            "margin grew (seeds 000, 001, 002); MIO and InfoPO are designed to prevent this.",
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
    for key in ("logps", "loss", "rewards"):
        parts.append(_figure(figures.get(key)))
    return "".join(parts)


def _training_facts(training: TrainingData) -> str:
    manifest = training.manifest
    if manifest is None:
        return f'<p class="small muted">Folder <code>{_t(training.folder)}</code>: no train manifest yet (running, stopped, or killed; rerun mipo train to resume).</p>'
    stats = manifest.get("stats") or {}
    loss = manifest.get("loss") or {}
    facts = [
        f"folder <code>{_t(training.folder)}</code>",
        f"loss <b>{_t(loss.get('loss'))}</b>: <code>{_t(loss.get('formula'))}</code> ({_t(loss.get('citation'))})",
        f"learning rate {fmt_number(manifest.get('learning_rate'), 7)}",
        f"{fmt_number(stats.get('global_step'))} steps on {fmt_number(manifest.get('pairs'))} pairs",
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
        return lambda row, _, __: fmt_interval(_lookup(row.summary, key), percent=percent)

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
        return _delta_cell(row.difference[key], percent=percent)
    ours, base = _lookup(row.summary, key), _lookup(group.rows[0].summary, key)
    if not isinstance(ours, dict) or not isinstance(base, dict):
        return "—"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    return f"{(ours['mean'] - base['mean']) * scale:+.{digits}f} (unpaired)"


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
            f"<h3>{_t(group.task)} <span class='muted small'>({_t(group.kind or 'task')})</span></h3>"
        )
        parts.append(_eval_table(group))
        how = (
            "Δ: mean per-item difference to the baseline with a percentile-bootstrap 95% interval (paired on shared items)."
            if group.paired
            else "Δ: difference of the means (the per-item files were not available for a paired comparison)."
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
    pairs = run.pairs
    if pairs is None:
        parts.append(
            _absent("No generations: pair diversity and PMI need mipo generate (and mipo score).")
        )
    else:
        mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
        rows = [
            [
                "self-BLEU-4 (lower = more diverse)",
                fmt_number(pairs.self_bleu["chosen"]),
                fmt_number(pairs.self_bleu["rejected"]),
            ],
            [
                "distinct-2 (higher = more diverse)",
                fmt_number(pairs.distinct_2["chosen"]),
                fmt_number(pairs.distinct_2["rejected"]),
            ],
            [
                "mean tokens",
                fmt_number(mean(pairs.chosen_tokens), 1),
                fmt_number(mean(pairs.rejected_tokens), 1),
            ],
            [
                "finish reasons",
                _t(_reasons(pairs.finish_reasons.get("chosen", {}))),
                _t(_reasons(pairs.finish_reasons.get("rejected", {}))),
            ],
        ]
        parts.append(f"<h3>Generated pairs ({fmt_number(pairs.pairs)})</h3>")
        parts.append(_table(["", "chosen", "rejected"], rows, (1, 2)))
        parts.append(_pmi_summary(pairs.pmi, pairs.ref_margin))
    eval_rows = [
        [
            _t(group.task),
            _t(row.label),
            fmt_number(_lookup(row.summary, "self_bleu_4.across_prompts")),
            fmt_number(_lookup(row.summary, "self_bleu_4.within_prompt")),
            fmt_interval(row.summary.get("pmi"), percent=False),
        ]
        for group in run.evals
        for row in group.rows
        if group.kind == "personalization"
    ]
    if eval_rows:
        parts.append("<h3>Evaluated models</h3>")
        parts.append(
            _table(
                [
                    "task",
                    "eval",
                    "self-BLEU-4 across prompts",
                    "self-BLEU-4 within prompt",
                    "PMI [95% CI]",
                ],
                eval_rows,
                (2, 3, 4),
            )
        )
    parts.append(
        '<p class="small muted">Self-BLEU-4 scores each response against the others of its set (Texygen; seed 004 Tables 3-4); distinct-2 is the share of unique word bigrams.</p>'
    )
    parts.append(_figure(figures.get("pmi")))
    parts.append(_figure(figures.get("lengths")))
    return "".join(parts)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "—"


def _pmi_summary(pmi: list[float], margins: list[float]) -> str:
    if not pmi and not margins:
        return _absent("No reference scores: PMI needs mipo score.")
    facts = []
    if pmi:
        ordered = sorted(pmi)
        median = ordered[len(ordered) // 2]
        positive = sum(v > 0 for v in pmi) / len(pmi)
        facts.append(
            f"PMI of chosen: mean {sum(pmi) / len(pmi):+.3f}, median {median:+.3f}, "
            f"{100 * positive:.0f}% of {len(pmi)} pairs above 0"
        )
    if margins:
        ahead = sum(v > 0 for v in margins) / len(margins)
        facts.append(f"reference prefers chosen in {100 * ahead:.0f}% of pairs")
    return f"<p>{_t('; '.join(facts))}.</p>"


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
            f'<span class="badge {"kept" if kept else "dropped"}">{"exported" if kept else "filtered out"}</span>'
        )
    if _finite(sample.get("pmi")):
        head.append(f"PMI {sample['pmi']:+.3f}")
    if _finite(sample.get("judge_chosen")) or _finite(sample.get("judge_rejected")):
        head.append(
            f"judge {_logp(sample.get('judge_chosen'))} vs {_logp(sample.get('judge_rejected'))}"
        )
    blocks = []
    if sample.get("context"):
        blocks.append(
            f'<div class="block"><div class="label">User context</div><p class="text">{_t(sample["context"])}</p></div>'
        )
    blocks.append(
        f'<div class="block"><div class="label">Prompt</div><p class="text">{_t(sample["prompt"])}</p></div>'
    )
    sides = "".join(_side(sample, side) for side in ("chosen", "rejected"))
    return f'<article class="pair"><div class="pair-head">{" · ".join(head)}</div>{"".join(blocks)}<div class="sides">{sides}</div></article>'


def _side(sample: dict[str, Any], side: str) -> str:
    facts = [
        f"finish: {_t(sample[f'{side}_finish_reason'])}",
        f"{fmt_number(sample[f'{side}_tokens'])} tokens",
    ]
    if _finite(sample.get(f"ref_{side}_logps")):
        facts.append(f"ref log-prob {_logp(sample[f'ref_{side}_logps'])}")
    return (
        f'<div class="side {side}"><div class="label">{side}</div>'
        f'<div class="facts">{" · ".join(facts)}</div>'
        f'<p class="text">{_t(sample[side])}</p></div>'
    )


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------


def _glance(run: RunData) -> str:
    """Key numbers of the (last) round in a row of cards."""
    cards = []
    if run.pairs is not None:
        cards.append((fmt_number(run.pairs.pairs), "pairs generated"))
    if run.export:
        cards.append((fmt_number(run.export.get("output_pairs")), "pairs exported after filters"))
    if run.training is not None and run.training.records:
        last = run.training.records[-1]
        cards.append((fmt_number(int(last.get("step", 0))), "training steps logged"))
        if "rewards/accuracies" in last:
            cards.append((_percent(last["rewards/accuracies"]) + "%", "final reward accuracy"))
        if "logps/chosen_shift" in last:
            cards.append((f"{last['logps/chosen_shift']:+.2f}", "final chosen log-prob shift"))
    for group in run.evals:
        metric = headline_metric(group)
        if metric is None or len(group.rows) < 2:
            continue
        key, percent = metric
        difference = group.rows[-1].difference.get(key)
        if isinstance(difference, dict) and _finite(difference.get("mean")):
            scale = 100 if percent else 1
            unit = " pts" if percent else ""
            cards.append(
                (
                    f"{difference['mean'] * scale:+.1f}{unit}",
                    f"{group.task} {key}: {group.rows[-1].label} vs {group.rows[0].label}",
                )
            )
    if not cards:
        return ""
    inner = "".join(f"<div><b>{value}</b><span>{_t(label)}</span></div>" for value, label in cards)
    return f'<div class="glance">{inner}</div>'


def _round_sections(run: RunData, figures: dict[str, Figure], *, slug: str, level: int) -> str:
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
            f"<details open><summary>pipeline.yaml (secrets redacted)</summary><pre>{_t(text)}</pre></details>"
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
    last = rounds[-1][0]
    body = [_glance(last)]
    if len(rounds) == 1:
        body.append(_round_sections(top, rounds[0][1], slug="", level=2))
    else:
        for index, (run, figures) in enumerate(rounds):
            slug = _slug(index)
            title = f"Round {index + 1}" + (f": {run.label}" if index else "")
            body.append(f'<h2 class="round" id="{slug}round">{_t(title)}</h2>')
            body.append(_round_sections(run, figures, slug=slug, level=3))
    body.append(_config_section([run for run, _ in rounds]))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>mipo report: {_t(top.header.get('run', top.label))}</title>"
        f"<style>{CSS}</style></head><body>"
        f"{_header(top, generated_at)}{_nav(rounds)}"
        f'<main><div class="wrap">{"".join(body)}</div></main></body></html>\n'
    )
