"""Render a run's report as one self-contained HTML page (inline CSS, PNGs as data URIs).

The page's markup is the Jinja2 template ``templates/report.html.j2``; ``report.sections``
turns a ``RunData`` into the values each section shows, and this module puts the page
together. Autoescape is on, and every value the template prints that is not already
``Markup`` goes through ``formatting.esc`` (``redact`` then ``html.escape``), so a prompt
holding ``<script>`` shows as text and a token-shaped string never reaches the page.
``Markup`` is made only by ``report.formatting`` and ``report.sections``, from pieces that
went through ``esc`` or are numbers, and here for the style sheet. The page has no
JavaScript.

Layout, top to bottom: a header (run, model, strategy, loss), a glance row of key numbers,
then per round: pipeline, filters, training, evaluation, judging, diversity and PMI, sample
pairs; finally the resolved configuration and anything that could not be read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from mipo_engine.report.data import EvalGroup, RunData
from mipo_engine.report.figures import Figure, headline_metric
from mipo_engine.report.formatting import finalize, fmt_number, fmt_percent, is_finite
from mipo_engine.report.sections import (
    diversity_section,
    evaluation_section,
    filters_section,
    judging_section,
    pipeline_section,
    samples_section,
    training_section,
)
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
            accuracy = fmt_percent(last["rewards/accuracies"]) + "%"
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
    if not isinstance(difference, dict) or not is_finite(difference.get("mean")):
        return []
    scale = 100 if percent else 1
    value = difference["mean"] * scale
    text = f"{value:+.1f} pts" if percent else f"{value:+.3f}"
    low, high = difference.get("low"), difference.get("high")
    if is_finite(low) and is_finite(high):
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
        finalize=finalize,
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
