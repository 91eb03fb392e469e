"""Training curves from ``metrics.jsonl``: chosen and rejected log-probs, and the loss.

The left panel shows ``logps/chosen`` and ``logps/rejected`` against the step: when both fall
together the run shows the likelihood displacement that seeds 000, 001 and 002 describe
(MIO and InfoPO are designed to keep the chosen curve from falling). With reference
log-probs, a middle panel shows ``logps/chosen_shift`` and ``logps/rejected_shift`` (policy
minus reference), where displacement is read directly: a chosen shift below 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mipo_engine.artifacts.metrics_log import read_metrics


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [
        (int(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and "step" in r
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _plot_pair(axis: Any, records: list[dict[str, Any]], key: str, ylabel: str, title: str) -> None:
    """Chosen and rejected curves of the metric ``key`` (with ``{}`` for the side)."""
    for side in ("chosen", "rejected"):
        steps, values = _series(records, key.format(side))
        if steps:
            axis.plot(steps, values, marker=".", label=side)
    axis.set_xlabel("step")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()


def plot_training_curves(
    metrics_path: str | Path, out_path: str | Path, *, title: str = ""
) -> Path:
    """Write a PNG of the log-prob curves and the loss; return its path.

    Raises:
        ValueError: the metrics file holds no logged step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    if not any("loss" in r for r in records):
        raise ValueError(f"{metrics_path} holds no logged training step to plot")
    has_shift = any("logps/chosen_shift" in r for r in records)
    figure, axes = plt.subplots(1, 3 if has_shift else 2, figsize=(14 if has_shift else 10, 4))
    _plot_pair(axes[0], records, "logps/{}", "summed log-prob", "policy log-probs")
    if has_shift:
        _plot_pair(
            axes[1], records, "logps/{}_shift", "policy - reference", "shift from the reference"
        )
        axes[1].axhline(0.0, color="gray", linewidth=0.8)
    steps, loss = _series(records, "loss")
    axes[-1].plot(steps, loss, marker=".")
    axes[-1].set_xlabel("step")
    axes[-1].set_ylabel("loss")
    axes[-1].set_title("training loss")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
    return out_path
