"""The report's figures: matplotlib PNGs drawn from a ``RunData`` (Agg, no display needed).

Each function draws one figure and returns its PNG bytes, or None when the run lacks the data;
``run_figures`` gathers them under stable names. Chosen is always green, rejected always
orange, the reference grey, so the figures read alike.

The training figures are the point of the report for the MI losses: seeds 000 (MIO sec. 3),
001 (InfoPO sec. 3) and 002 (sec. 4) describe *likelihood displacement*, DPO lowering the
log-probability of the chosen response along with the rejected one. It shows as a chosen
log-prob shift from the reference (``logps/chosen_shift``) that falls below 0.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

from mipo_engine.report.data import EvalGroup, PairStats, RunData, TrainingData

CHOSEN = "#1b9e77"
REJECTED = "#d95f02"
NEUTRAL = "#7570b3"
REFERENCE = "#888888"
DPI = 110


@dataclass(frozen=True)
class Figure:
    """A rendered figure: file name in the report folder, title, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes
    wide: bool = True
    """False for one-panel figures, which the page shows two to a row."""


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------


def _new_figure(
    columns: int, *, height: float = 3.3, left_inches: float = 0.75
) -> tuple[MplFigure, list[Axes]]:
    """A figure of ``columns`` panels side by side, with fixed margins.

    Fixed margins (in inches, so they fit any width) instead of a layout engine: constrained
    and tight layouts measure every text box and make drawing about 1.5x slower.
    """
    width = 4.6 * columns
    figure = MplFigure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)  # the Agg canvas: PNG output without a display or pyplot state
    axes = figure.subplots(1, columns, squeeze=False)[0]
    figure.subplots_adjust(
        left=left_inches / width,
        right=1 - 0.2 / width,
        bottom=0.55 / height,
        top=1 - 0.38 / height,
        # The gap between panels leaves each the same room for tick labels as the first.
        wspace=max(0.28, (left_inches + 0.1) / (width / columns - left_inches)),
    )
    for axis in axes:
        axis.spines[["top", "right"]].set_visible(False)
        axis.grid(True, color="#e6e6e6", linewidth=0.8)
        axis.set_axisbelow(True)
    return figure, list(axes)


def _png(figure: MplFigure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _plot_series(
    axis: Axes, steps: Sequence[int], values: Sequence[float], *, color: str, label: str
) -> None:
    marker = "o" if len(steps) <= 40 else None
    axis.plot(steps, values, color=color, label=label, marker=marker, markersize=3, linewidth=1.6)


def _label_steps(axis: Axes) -> None:
    """An x axis of optimizer steps: whole numbers only."""
    axis.set_xlabel("step")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _has(training: TrainingData, key: str) -> bool:
    return bool(training.series(key)[0])


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def loss_figure(training: TrainingData) -> bytes | None:
    """Training loss against the optimizer step, and the gradient norm when logged (a
    diverging run shows there first)."""
    steps, loss = training.series("loss")
    if not steps:
        return None
    with_norm = _has(training, "grad_norm")
    figure, axes = _new_figure(2 if with_norm else 1)
    _plot_series(axes[0], steps, loss, color=NEUTRAL, label="loss")
    name = training.loss.get("loss")
    axes[0].set_title(f"training loss ({name})" if name else "training loss")
    axes[0].set_ylabel("loss")
    if with_norm:
        norm_steps, norms = training.series("grad_norm")
        _plot_series(axes[1], norm_steps, norms, color=REFERENCE, label="gradient norm")
        axes[1].set_title("gradient norm (before clipping)")
    for axis in axes:
        _label_steps(axis)
    return _png(figure)


def logps_figure(training: TrainingData) -> bytes | None:
    """Chosen and rejected log-probs; with a reference, their shift from it (0 = reference).

    A chosen shift below 0 is likelihood displacement: the chosen response became less
    likely than under the reference model (seeds 000, 001, 002).
    """
    if not _has(training, "logps/chosen"):
        return None
    with_shift = _has(training, "logps/chosen_shift")
    figure, axes = _new_figure(2 if with_shift else 1)
    for side, color in (("chosen", CHOSEN), ("rejected", REJECTED)):
        steps, values = training.series(f"logps/{side}")
        _plot_series(axes[0], steps, values, color=color, label=side)
    axes[0].set_title("policy log-probs (summed over response)")
    axes[0].set_ylabel("log π(y | x)")
    if with_shift:
        shift_axis = axes[1]
        for side, color in (("chosen", CHOSEN), ("rejected", REJECTED)):
            steps, values = training.series(f"logps/{side}_shift")
            _plot_series(shift_axis, steps, values, color=color, label=side)
        shift_axis.axhline(0.0, color=REFERENCE, linewidth=1.2, linestyle="--", label="reference")
        low = min(0.0, *(v for v in training.series("logps/chosen_shift")[1] if math.isfinite(v)))
        if low < 0:
            # Shade the displacement zone: chosen less likely than under the reference.
            shift_axis.axhspan(low * 1.05, 0.0, color=REJECTED, alpha=0.06, linewidth=0)
        shift_axis.set_title("shift from the reference (policy − reference)")
        shift_axis.set_ylabel("log π − log π_ref")
    for axis in axes:
        _label_steps(axis)
        axis.legend(frameon=False)
    return _png(figure)


def rewards_figure(training: TrainingData) -> bytes | None:
    """Implicit rewards and their margin, and the reward accuracy (share with D_c > D_r)."""
    if not _has(training, "rewards/margins"):
        return None
    with_accuracy = _has(training, "rewards/accuracies")
    figure, axes = _new_figure(2 if with_accuracy else 1)
    for key, color, label in (
        ("rewards/chosen", CHOSEN, "chosen"),
        ("rewards/rejected", REJECTED, "rejected"),
        ("rewards/margins", NEUTRAL, "margin"),
    ):
        steps, values = training.series(key)
        if steps:
            _plot_series(axes[0], steps, values, color=color, label=label)
    axes[0].axhline(0.0, color=REFERENCE, linewidth=0.8)
    axes[0].set_title("implicit rewards β·(log π − log π_ref)")
    axes[0].legend(frameon=False)
    if with_accuracy:
        steps, values = training.series("rewards/accuracies")
        _plot_series(axes[1], steps, values, color=NEUTRAL, label="accuracy")
        axes[1].axhline(0.5, color=REFERENCE, linewidth=0.8, linestyle="--")
        axes[1].set_ylim(-0.05, 1.05)
        axes[1].set_title("reward accuracy (chosen above rejected)")
    for axis in axes:
        _label_steps(axis)
    return _png(figure)


def online_rewards_figure(training: TrainingData) -> bytes | None:
    """Mean reward of the sampled completions per step (online methods), each named reward
    and their sum, with the spread within a step's completions."""
    steps, means = training.series("reward")
    if not steps:
        return None
    figure, axes = _new_figure(2)
    _plot_series(axes[0], steps, means, color=NEUTRAL, label="total reward")
    names = sorted(
        {k.split("/")[1] for r in training.records for k in r if k.startswith("rewards/")}
        - {"chosen", "rejected", "margins", "accuracies"}
    )
    for name, color in zip(names, (CHOSEN, REJECTED, REFERENCE), strict=False):
        if len(names) > 1:
            name_steps, values = training.series(f"rewards/{name}/mean")
            _plot_series(axes[0], name_steps, values, color=color, label=name)
    axes[0].set_title("mean reward of the sampled completions")
    axes[0].legend(frameon=False)
    std_steps, spread = training.series("reward_std")
    if std_steps:
        _plot_series(axes[1], std_steps, spread, color=NEUTRAL, label="std")
    axes[1].set_title("reward spread within a step")
    for axis in axes:
        _label_steps(axis)
    return _png(figure)


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


def _bins(values: Sequence[float], most: int = 30) -> int:
    return max(5, min(most, int(math.sqrt(max(len(values), 1))) * 2))


def lengths_figure(pairs: PairStats) -> bytes | None:
    """Token counts of chosen and rejected responses, overlaid."""
    if not pairs.chosen_tokens and not pairs.rejected_tokens:
        return None
    figure, (axis,) = _new_figure(1)
    values = [*pairs.chosen_tokens, *pairs.rejected_tokens]
    edges = _edges(min(values), max(values), _bins(values))
    # Side-by-side bars per bin: overlaid ones would hide each other where lengths agree.
    axis.hist(
        [pairs.chosen_tokens, pairs.rejected_tokens],
        bins=edges,
        color=[CHOSEN, REJECTED],
        label=["chosen", "rejected"],
    )
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title("response length")
    axis.set_xlabel("tokens")
    axis.set_ylabel("pairs")
    axis.legend(frameon=False)
    return _png(figure)


def _edges(low: float, high: float, count: int) -> list[float]:
    if high <= low:
        low, high = low - 0.5, high + 0.5
    step = (high - low) / count
    return [low + step * index for index in range(count + 1)]


def pmi_figure(pairs: PairStats) -> bytes | None:
    """Reference PMI of the chosen responses, and the reference log-prob margin."""
    panels = [
        (pairs.pmi, "pointwise MI of chosen (pmi_chosen)", "nats"),
        (pairs.ref_margin, "reference margin log π_ref(y_c) − log π_ref(y_r)", "nats"),
    ]
    panels = [panel for panel in panels if panel[0]]
    if not panels:
        return None
    figure, axes = _new_figure(len(panels))
    for axis, (values, title, unit) in zip(axes, panels, strict=True):
        axis.hist(values, bins=_bins(values), color=NEUTRAL, alpha=0.8)
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.axvline(0.0, color=REFERENCE, linewidth=1.2, linestyle="--")
        axis.set_title(title)
        axis.set_xlabel(unit)
        axis.set_ylabel("pairs")
    return _png(figure)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def headline_metric(group: EvalGroup) -> tuple[str, bool] | None:
    """(summary key, shown in percent) of the metric a task is judged by, if present."""
    candidates = (
        [("accuracy", True)]
        if group.kind in ("math", "mcq")
        else [("adherence", True), ("pmi", False)]
    )
    for key, percent in candidates:
        if any(isinstance(row.summary.get(key), dict) for row in group.rows):
            return key, percent
    return None


def eval_figure(groups: Sequence[EvalGroup]) -> bytes | None:
    """Each task's headline metric per eval output, with its bootstrap 95% interval."""
    drawable = [(group, headline_metric(group)) for group in groups]
    drawable = [(group, metric) for group, metric in drawable if metric is not None]
    if not drawable:
        return None
    longest = max(len(row.label) for group, _ in drawable for row in group.rows)
    figure, axes = _new_figure(
        len(drawable),
        height=1.5 + 0.45 * max(len(g.rows) for g, _ in drawable),
        left_inches=0.3 + 0.085 * longest,  # room for the bar labels
    )
    for axis, (group, (key, percent)) in zip(axes, drawable, strict=True):
        scale = 100.0 if percent else 1.0
        labels, means, errors, colors = [], [], [[], []], []
        for position, row in enumerate(group.rows):
            value = row.summary.get(key)
            if not isinstance(value, dict) or not all(
                isinstance(value.get(k), (int, float)) for k in ("mean", "low", "high")
            ):
                continue
            labels.append(row.label)
            means.append(value["mean"] * scale)
            errors[0].append((value["mean"] - value["low"]) * scale)
            errors[1].append((value["high"] - value["mean"]) * scale)
            colors.append(REFERENCE if position == 0 else NEUTRAL)
        places = list(range(len(labels)))[::-1]  # the baseline on top
        axis.barh(places, means, xerr=errors, color=colors, capsize=4, height=0.6)
        axis.set_yticks(places, labels)
        axis.set_title(f"{group.task}: {key}{' %' if percent else ''} (95% CI)")
        axis.grid(False, axis="y")
    return _png(figure)


# --------------------------------------------------------------------------------------------
# All figures of a run
# --------------------------------------------------------------------------------------------

_Drawer = Callable[[Any], "bytes | None"]


def run_figures(run: RunData, *, prefix: str = "") -> dict[str, Figure]:
    """The figures the run has data for, keyed by name (``prefix`` keeps rounds apart)."""
    plans: list[tuple[str, str, str, Any, _Drawer]] = []
    if run.training is not None:
        plans += [
            (
                "loss",
                "Training loss",
                "Loss per logged step (mean since the previous log), and the gradient norm.",
                run.training,
                loss_figure,
            ),
            (
                "logps",
                "Log-probabilities of chosen and rejected",
                "Left: summed policy log-probs. Right: shift from the reference model; the "
                "dashed line is the reference. A chosen curve below 0 is likelihood "
                "displacement (the chosen response lost probability).",
                run.training,
                logps_figure,
            ),
            (
                "rewards",
                "Implicit rewards and reward accuracy",
                "Rewards are β times the log-ratio to the reference; accuracy is the share of "
                "pairs whose chosen log-ratio exceeds the rejected one.",
                run.training,
                rewards_figure,
            ),
            (
                "online_rewards",
                "Rewards of the sampled completions",
                "Online training (GRPO/RLOO): the mean reward of each step's completions, per "
                "named reward and in total, and its spread within the step.",
                run.training,
                online_rewards_figure,
            ),
        ]
    if run.pairs is not None:
        plans += [
            (
                "lengths",
                "Response lengths",
                "Token counts of the chosen and rejected responses.",
                run.pairs,
                lengths_figure,
            ),
            (
                "pmi",
                "Pointwise mutual information",
                "PMI of each chosen response under the reference model: how much more likely "
                "the conditioning that separates chosen from rejected makes it (above 0 = "
                "the response depends on it).",
                run.pairs,
                pmi_figure,
            ),
        ]
    if run.evals:
        plans.append(
            (
                "eval",
                "Evaluation",
                "Headline metric per eval output; whiskers are percentile-bootstrap 95% "
                "intervals; the first (grey) bar is the baseline.",
                run.evals,
                eval_figure,
            )
        )
    figures = {}
    for key, title, caption, data, draw in plans:
        png = draw(data)
        if png is not None:
            wide = key != "lengths" and not (key == "loss" and not _has(data, "grad_norm"))
            figures[key] = Figure(f"{prefix}{key}.png", title, caption, png, wide)
    return figures
