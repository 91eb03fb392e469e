"""The values each section of the report page shows, built from a round's ``RunData``.

Each ``*_section`` function returns plain data (text, numbers, ``Markup`` cells and
``html_table`` dicts) for the macro of the same name in ``templates/report.html.j2``; ``None``
where the template shows its "absent" line instead.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from markupsafe import Markup

from mipo_engine.report.data import (
    EvalGroup,
    EvalRow,
    PairStats,
    RunData,
    StageRow,
    TrainingData,
)
from mipo_engine.report.figures import Figure, headline_metric
from mipo_engine.report.formatting import (
    esc,
    figure_data,
    fmt_general,
    fmt_logp,
    fmt_number,
    fmt_percent,
    fmt_seconds,
    html_table,
    interval_cell,
    is_finite,
    lookup,
    mean_of,
    wrap,
)

# --------------------------------------------------------------------------------------------
# Sections: the values each section of the template shows
# --------------------------------------------------------------------------------------------


def _status(row: StageRow) -> Markup:
    return Markup(f'<span class="badge {esc(row.status)}">{esc(row.status)}</span>')


def pipeline_section(run: RunData) -> dict[str, Any]:
    if not run.stages:
        return {"table": None}
    rows = [
        [
            row.name,
            row.stage,
            wrap("code", row.output),
            fmt_number(row.rows_in),
            fmt_number(row.rows_out),
            fmt_seconds(row.seconds),
            _status(row),
            row.note,
        ]
        for row in run.stages
    ]
    table = html_table(
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
        [wrap("b", "exported"), "", "", wrap("b", fmt_number(stats.get("output_pairs"))), ""]
    )
    splits = stats.get("splits") or {}
    split_rows = [
        [name, fmt_number(info.get("pairs")), fmt_number(info.get("prompts"))]
        for name, info in splits.items()
        if isinstance(info, dict)
    ]
    details = [
        Markup(f"format <code>{esc(stats.get('format'))}</code>"),
        "with reference log-probs" if stats.get("reference_logps") else "no reference log-probs",
    ]
    return {
        "table": html_table(
            ["filter", "setting", "removed", "remaining", "what it removes"], rows, (2, 3)
        ),
        "splits": html_table(["split", "pairs", "prompts"], split_rows, (1, 2)) if splits else None,
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
            figure_data(figures.get(k)) for k in ("logps", "rewards", "online_rewards", "loss")
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
        section["table"] = html_table(header, rows, (1, 2))
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
            f"method <b>{esc(manifest.get('method'))}</b>, reward <b>{esc(manifest.get('reward'))}</b>"
            + (f" (judge {esc(manifest.get('judge'))})" if manifest.get("judge") else ""),
            f"learning rate {esc(fmt_general(manifest.get('learning_rate')))}",
            f"{fmt_number(stats.get('global_step'))} steps "
            f"on {fmt_number(manifest.get('prompts'))} prompts",
        ]
    else:
        trained = [
            f"loss <b>{esc(loss.get('loss'))}</b>: <code>{esc(loss.get('formula'))}</code> "
            f"({esc(loss.get('citation'))})",
            f"learning rate {esc(fmt_general(manifest.get('learning_rate')))}",
            f"{fmt_number(stats.get('global_step'))} steps "
            f"on {fmt_number(manifest.get('pairs'))} pairs",
        ]
    facts = [
        f"folder <code>{esc(training.folder)}</code>",
        *trained,
        f"{fmt_seconds(stats.get('train_runtime_s'))}",
        f"{fmt_number(stats.get('tokens_per_second'), 1)} tokens/s",
    ]
    lora = manifest.get("lora")
    if isinstance(lora, dict):
        facts.append(f"LoRA r={esc(lora.get('r'))}, alpha={esc(lora.get('alpha'))}")
    return Markup("; ".join(facts))


Column = tuple[str, Callable[[EvalRow, int, EvalGroup], Any], bool]


def _metric_columns(kind: str) -> list[Column]:
    """(header, cell function, numeric) per column of an eval table of a task kind."""

    def interval_of(key: str, percent: bool) -> Callable[[EvalRow, int, EvalGroup], Any]:
        return lambda row, _, __: interval_cell(lookup(row.summary, key), percent=percent)

    def delta_of(key: str, percent: bool) -> Callable[[EvalRow, int, EvalGroup], Any]:
        return lambda row, position, group: _delta(row, position, group, key, percent)

    common: list[Column] = [
        (
            "mean tokens",
            lambda row, _, __: fmt_number(row.summary.get("mean_response_tokens"), 1),
            True,
        ),
        ("hit limit %", lambda row, _, __: fmt_percent(row.summary.get("hit_token_limit")), True),
    ]
    if kind in ("math", "mcq"):
        columns = [
            ("accuracy % [95% CI]", interval_of("accuracy", True), True),
            ("Δ vs baseline", delta_of("accuracy", True), True),
            ("answered %", lambda row, _, __: fmt_percent(row.summary.get("answered")), True),
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
                lambda row, _, __: fmt_number(lookup(row.summary, "self_bleu_4.across_prompts")),
                True,
            ),
            ("win rate % [95% CI]", interval_of("judge.win_rate", True), True),
            *common,
        ]
    return common


def _entropy(row: EvalRow, which: str) -> str:
    stats = lookup(row.summary, f"entropy.{which}")
    if not isinstance(stats, dict) or not is_finite(stats.get("mean")):
        return "—"
    return f"{stats['mean']:.3f} (n={int(stats.get('n', 0))})"


def _delta(row: EvalRow, position: int, group: EvalGroup, key: str, percent: bool) -> Any:
    """Paired difference to the baseline when computed, else the difference of the means."""
    if position == 0:
        return "baseline"
    if key in row.difference:
        return interval_cell(row.difference[key], percent=percent, signed=True)
    ours, base = lookup(row.summary, key), lookup(group.rows[0].summary, key)
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
        cells = [wrap("b", row.label), model, fmt_number(row.summary.get("items"))]
        rows.append(cells + [function(row, position, group) for _, function, _ in columns])
    numeric = [2] + [3 + i for i, (_, _, is_number) in enumerate(columns) if is_number]
    return html_table(header, rows, numeric)


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
    return {"groups": groups, "figure": figure_data(figures.get("eval"))}


def judging_section(run: RunData) -> dict[str, Any]:
    rows = []
    for label, stats in run.judging:
        critic = stats.get("critic_accuracy") or {}
        win = (stats.get("win_rate") or {}).get("overall") or {}
        adherence = stats.get("adherence") or {}
        means = stats.get("mean_score") or {}
        rows.append(
            [
                wrap("code", label),
                stats.get("mode"),
                fmt_number(stats.get("responses")),
                fmt_number(means.get("chosen"), 2),
                fmt_number(means.get("rejected"), 2),
                fmt_percent(critic.get("strict")),
                fmt_percent(critic.get("tie_tolerant")),
                fmt_percent(win.get("win_rate")),
                fmt_percent(adherence.get("rate")),
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
    return {"table": html_table(header, rows, tuple(range(2, 10)))}


def diversity_section(run: RunData, figures: dict[str, Figure]) -> dict[str, Any]:
    section: dict[str, Any] = {
        "pairs": None,
        "eval_table": _eval_diversity_table(run),
        "figures": [figure_data(figures.get(key)) for key in ("pmi", "lengths")],
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
            {"chosen": mean_of(pairs.chosen_tokens), "rejected": mean_of(pairs.rejected_tokens)},
            1,
        ],
    ]
    cells: list[list[Any]] = [
        [name, fmt_number(values["chosen"], digits), fmt_number(values["rejected"], digits)]
        for name, values, digits in rows
    ]
    reasons = [_reasons(pairs.finish_reasons.get(side, {})) for side in ("chosen", "rejected")]
    cells.append(["finish reasons", *reasons])
    return html_table(["", "chosen", "rejected"], cells, (1, 2))


def _eval_diversity_table(run: RunData) -> dict[str, Any] | None:
    """Self-BLEU and PMI of the personalization eval outputs (before and after training)."""
    rows = [
        [
            group.task,
            row.label,
            fmt_number(lookup(row.summary, "self_bleu_4.across_prompts")),
            fmt_number(lookup(row.summary, "self_bleu_4.within_prompt")),
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
    return html_table(header, rows, (2, 3, 4))


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
    head = [Markup(f"pair <code>{esc(sample['id'])}</code>"), Markup(esc(sample["strategy"]))]
    if sample.get("kept") is not None:
        kept = sample["kept"]
        head.append(
            Markup(
                f'<span class="badge {"kept" if kept else "dropped"}">'
                f"{'exported' if kept else 'filtered out'}</span>"
            )
        )
    if is_finite(sample.get("pmi")):
        head.append(Markup(f"PMI {sample['pmi']:+.3f}"))
    if is_finite(sample.get("judge_chosen")) or is_finite(sample.get("judge_rejected")):
        head.append(
            Markup(
                f"judge {fmt_logp(sample.get('judge_chosen'))} "
                f"vs {fmt_logp(sample.get('judge_rejected'))}"
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
        Markup(f"finish: {esc(sample[f'{side}_finish_reason'])}"),
        Markup(f"{fmt_number(sample[f'{side}_tokens'])} tokens"),
    ]
    if is_finite(sample.get(f"ref_{side}_logps")):
        facts.append(Markup(f"ref log-prob {fmt_logp(sample[f'ref_{side}_logps'])}"))
    text = sample[side]
    return {"side": side, "facts": facts, "text": text, "empty": not text.strip()}
