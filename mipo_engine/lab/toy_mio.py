"""Seed 000's toy model (sec. 4.1, Fig. 1-2): does DPO drag the chosen likelihood down with the
rejected one once the rejected probability is tiny, and does MIO avoid it?

Setup (seed 000 sec. 4.1, after Yan et al. 2025): 4 prompts, 10 responses. The policy is a
three-layer MLP reading a one-hot prompt and returning a softmax over the responses. Responses
0-3 are the chosen ones (response i is optimal for prompt i: the diagonal preference matrix),
4-7 are rejected, 8-9 are never seen in training. Every mini-batch pairs each prompt with its
optimal response and one rejected response drawn at random.

The four scenarios fix the reference policy's initial probabilities: chosen and rejected
responses each start "small" or "normal". Seed 000 does not give the numbers, the network width,
beta, the optimiser or the number of steps; the choices here (all in ``ToyMioSettings``) are:
"normal" = 0.1 per response (the uniform level over 10 responses, so ``both_normal`` starts
uniform), "small" = 0.001; the rest of each prompt's mass is spread evenly over the other
prompts' chosen responses and the unseen ones. The reference is the MLP fitted to that
distribution by cross-entropy, the policy starts as its copy, and DPO and MIO train with the
same beta = 0.1 (DPO's usual value), Adam at 1e-3, for 1000 steps, on the same sampled pairs.

Seed 000 reports (Fig. 2): once the rejected probability is small, DPO lowers chosen and
rejected likelihoods together; MIO never does, because its chosen-side gradient does not
vanish and changes sign at sigmoid(beta D_c) = 2/3 (Prop. 3.1-3.2).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mipo_engine.errors import ConfigError
from mipo_engine.training.loss_registry import get_loss

__all__ = [
    "CHOSEN_RESPONSES",
    "NUM_PROMPTS",
    "NUM_RESPONSES",
    "REJECTED_RESPONSES",
    "TOY_METHODS",
    "TOY_SCENARIOS",
    "UNSEEN_RESPONSES",
    "LabConfigError",
    "ToyCurves",
    "ToyMioSettings",
    "ToyPolicy",
    "fit_reference",
    "response_group_probs",
    "run_toy_mio",
    "sample_pairs",
    "scenario_targets",
    "train_preference",
]

NUM_PROMPTS = 4
NUM_RESPONSES = 10
CHOSEN_RESPONSES = (0, 1, 2, 3)
"""Response i is the optimal (chosen) response of prompt i."""
REJECTED_RESPONSES = (4, 5, 6, 7)
UNSEEN_RESPONSES = (8, 9)

TOY_SCENARIOS: Mapping[str, tuple[str, str]] = {
    "both_small": ("small", "small"),
    "chosen_normal_rejected_small": ("normal", "small"),
    "chosen_small_rejected_normal": ("small", "normal"),
    "both_normal": ("normal", "normal"),
}
"""Scenario name -> initial (chosen, rejected) probability level, Fig. 2 columns 1-4."""

TOY_METHODS = ("dpo", "mio", "infopo")
"""Losses the toy can train with (from ``mipo_engine.training.losses``)."""


class LabConfigError(ConfigError, ValueError):
    """A bad setting of a ``mipo lab`` experiment; the message says what to change."""


def check_steps(steps: object) -> int:
    """Return ``steps`` if it is a positive integer, else raise ``LabConfigError``."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise LabConfigError(f"steps must be a positive integer; got {steps!r}")
    return steps


def check_names(names: Iterable[str], allowed: Sequence[str], *, what: str) -> tuple[str, ...]:
    """Return ``names`` as a tuple if non-empty, known and without repeats.

    ``what`` names the option in the error message ("methods", "scenarios").
    """
    if isinstance(names, str):
        raise LabConfigError(f"{what} must be a list of names, not the string {names!r}")
    chosen = tuple(names)
    if not chosen:
        raise LabConfigError(f"{what} is empty; choose from {', '.join(allowed)}")
    unknown = [name for name in chosen if name not in allowed]
    if unknown:
        raise LabConfigError(f"unknown {what} {unknown}; choose from {', '.join(allowed)}")
    if len(set(chosen)) != len(chosen):
        raise LabConfigError(f"{what} lists a name twice: {list(chosen)}")
    return chosen


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block (or decorated function), then restore.

    The lab's models are tiny: with several threads the per-operation synchronisation costs
    more than the arithmetic (several times slower on a busy 2-core machine).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG and release it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True, kw_only=True)
class ToyMioSettings:
    """Settings of the toy experiment (seed 000 leaves them open; see the module docstring).

    Attributes:
        hidden_size: width of the MLP's two hidden layers.
        normal_prob: initial probability of each "normal" response.
        small_prob: initial probability of each "small" response.
        beta: the loss temperature, shared by all methods.
        learning_rate: Adam learning rate of the preference training.
        steps: preference-training steps (one mini-batch of 4 pairs each).
        reference_steps: cross-entropy steps that fit the reference to a scenario.
        reference_learning_rate: Adam learning rate of that fit.
    """

    hidden_size: int = 64
    normal_prob: float = 0.1
    small_prob: float = 1e-3
    beta: float = 0.1
    learning_rate: float = 1e-3
    steps: int = 1000
    reference_steps: int = 300
    reference_learning_rate: float = 1e-2

    def __post_init__(self) -> None:
        for name in ("hidden_size", "steps", "reference_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LabConfigError(f"{name} must be a positive integer; got {value!r}")
        positive = ("beta", "learning_rate", "reference_learning_rate", "normal_prob", "small_prob")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise LabConfigError(f"{name} must be a finite number > 0; got {value!r}")
        if not self.small_prob < self.normal_prob:
            raise LabConfigError(
                f"small_prob ({self.small_prob}) must be below normal_prob ({self.normal_prob})"
            )
        # The largest initial mass (both normal) must leave room for the other responses.
        scenario_targets(self.normal_prob, self.normal_prob)

    def level(self, name: str) -> float:
        """The probability of a level name, "normal" or "small"."""
        return self.normal_prob if name == "normal" else self.small_prob


# --------------------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------------------


class ToyPolicy(nn.Module):
    """Three-layer MLP: one-hot prompt (4) -> hidden -> hidden -> response logits (10)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(NUM_PROMPTS, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, NUM_RESPONSES),
        )

    def forward(self, prompts: Tensor) -> Tensor:
        """Log-probabilities (B, 10) of the responses to prompt indices (B,)."""
        one_hot = nn.functional.one_hot(prompts, NUM_PROMPTS).float()  # (B, 4)
        return torch.log_softmax(self.layers(one_hot), dim=-1)

    def all_probs(self) -> Tensor:
        """pi(y | x) for every prompt, (4, 10)."""
        with torch.no_grad():
            return self(torch.arange(NUM_PROMPTS)).exp()


def scenario_targets(chosen_prob: float, rejected_prob: float) -> Tensor:
    """Initial distribution (4, 10) of a scenario.

    Prompt i gives ``chosen_prob`` to its chosen response i, ``rejected_prob`` to each rejected
    response, and spreads the rest evenly over the other 5 responses (the other prompts'
    chosen ones and the unseen ones), e.g. chosen 0.1 and rejected 0.001 leave
    (1 - 0.1 - 4 * 0.001) / 5 = 0.1792 for each of those.
    """
    leftover = 1.0 - chosen_prob - len(REJECTED_RESPONSES) * rejected_prob
    if not (chosen_prob > 0 and rejected_prob > 0 and leftover > 0):
        raise LabConfigError(
            f"initial probabilities chosen={chosen_prob}, rejected={rejected_prob} (x4) must be "
            "positive and sum below 1; lower normal_prob or small_prob"
        )
    targets = torch.empty(NUM_PROMPTS, NUM_RESPONSES)
    for prompt in range(NUM_PROMPTS):
        others = [r for r in range(NUM_RESPONSES) if r != prompt and r not in REJECTED_RESPONSES]
        targets[prompt, others] = leftover / len(others)
        targets[prompt, prompt] = chosen_prob
        targets[prompt, list(REJECTED_RESPONSES)] = rejected_prob
    return targets


@single_thread()
def fit_reference(targets: Tensor, settings: ToyMioSettings, seed: int) -> ToyPolicy:
    """The reference policy: an MLP fitted to ``targets`` (4, 10) by cross-entropy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ToyPolicy(settings.hidden_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.reference_learning_rate)
    prompts = torch.arange(NUM_PROMPTS)
    for _ in range(settings.reference_steps):
        loss = -(targets * model(prompts)).sum(dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def sample_pairs(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """One mini-batch: every prompt, its chosen response and a random rejected one, each (4,)."""
    prompts = torch.arange(NUM_PROMPTS)
    offsets = torch.randint(len(REJECTED_RESPONSES), (NUM_PROMPTS,), generator=generator)
    rejected = torch.tensor(REJECTED_RESPONSES)[offsets]
    return prompts, torch.tensor(CHOSEN_RESPONSES), rejected


def response_group_probs(probs: Tensor) -> dict[str, Tensor]:
    """Mean probability of a prompt's own chosen response, of a rejected and of an unseen one.

    ``probs`` is (..., 4, 10); each value (...) averages over the prompts and over the
    responses of the group, so it reads as "the probability of one such response".
    """
    own_chosen = probs[..., torch.arange(NUM_PROMPTS), torch.tensor(CHOSEN_RESPONSES)]
    return {
        "chosen": own_chosen.mean(dim=-1),
        "rejected": probs[..., list(REJECTED_RESPONSES)].mean(dim=(-2, -1)),
        "unseen": probs[..., list(UNSEEN_RESPONSES)].mean(dim=(-2, -1)),
    }


# --------------------------------------------------------------------------------------------
# Preference training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyCurves:
    """Group probabilities (steps + 1,) before each step and after the last (index 0 = the
    reference), as returned by ``response_group_probs``."""

    chosen: Tensor
    rejected: Tensor
    unseen: Tensor

    def summary(self) -> dict[str, float]:
        return {
            "chosen_prob_start": float(self.chosen[0]),
            "chosen_prob_end": float(self.chosen[-1]),
            "chosen_prob_min": float(self.chosen.min()),
            "chosen_prob_max": float(self.chosen.max()),
            "rejected_prob_start": float(self.rejected[0]),
            "rejected_prob_end": float(self.rejected[-1]),
            "unseen_prob_start": float(self.unseen[0]),
            "unseen_prob_end": float(self.unseen[-1]),
        }


@single_thread()
def train_preference(
    reference: ToyPolicy,
    method: str,
    settings: ToyMioSettings,
    seed: int,
    progress: tqdm | None = None,
) -> ToyCurves:
    """Train a copy of ``reference`` with the named loss; record group probabilities."""
    loss_fn = get_loss(method).fn
    policy = copy.deepcopy(reference)
    optimizer = torch.optim.Adam(policy.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ref_logps = reference(torch.arange(NUM_PROMPTS))  # (4, 10)
    snapshots = []
    for _ in range(settings.steps):
        prompts, chosen, rejected = sample_pairs(generator)
        logps = policy(prompts)  # (4, 10), every prompt once, in order
        snapshots.append(logps.detach().exp())
        losses = loss_fn(
            logps[prompts, chosen],
            logps[prompts, rejected],
            ref_logps[prompts, chosen],
            ref_logps[prompts, rejected],
            beta=settings.beta,
            length_normalize=False,  # a response is one class, not a token sequence
        )
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
        if progress is not None:
            progress.update(1)
    snapshots.append(policy.all_probs())
    groups = response_group_probs(torch.stack(snapshots))  # each (steps + 1,)
    return ToyCurves(**groups)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _write_curves_csv(path: Path, curves: Mapping[str, Mapping[str, ToyCurves]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scenario", "method", "step", "chosen", "rejected", "unseen"])
        for scenario, by_method in curves.items():
            for method, curve in by_method.items():
                rows = zip(
                    curve.chosen.tolist(),
                    curve.rejected.tolist(),
                    curve.unseen.tolist(),
                    strict=True,
                )
                for step, (c, r, u) in enumerate(rows):
                    writer.writerow([scenario, method, step, f"{c:.6g}", f"{r:.6g}", f"{u:.6g}"])


def _markdown_table(results: Mapping[str, Mapping[str, dict]], settings: ToyMioSettings) -> str:
    lines = [
        f"# MIO toy model (seed 000 sec. 4.1): beta={settings.beta:g}, {settings.steps} steps",
        "",
        "Mean probability of one response of each group (over the 4 prompts).",
        "",
        "| scenario | method | chosen start | chosen end | chosen min | rejected start "
        "| rejected end | unseen start | unseen end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, by_method in results.items():
        for method, r in by_method.items():
            lines.append(
                f"| {scenario} | {method} | {r['chosen_prob_start']:.4g} | "
                f"{r['chosen_prob_end']:.4g} | {r['chosen_prob_min']:.4g} | "
                f"{r['rejected_prob_start']:.3g} | {r['rejected_prob_end']:.3g} | "
                f"{r['unseen_prob_start']:.3g} | {r['unseen_prob_end']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def _plot(
    path: Path,
    references: Mapping[str, Tensor],
    curves: Mapping[str, Mapping[str, ToyCurves]],
    methods: Sequence[str],
) -> None:
    """Fig. 2 layout: initial state on top, then one row of likelihood curves per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(curves)
    fig, axes = plt.subplots(
        1 + len(methods), len(scenarios), figsize=(4 * len(scenarios), 3 * (1 + len(methods)))
    )
    axes = axes.reshape(1 + len(methods), len(scenarios))
    for col, scenario in enumerate(scenarios):
        heat = axes[0, col].imshow(references[scenario], cmap="viridis", vmin=0, aspect="auto")
        axes[0, col].set(
            title=f"{scenario}\ninitial pi_ref(y|x)", xlabel="response", ylabel="prompt"
        )
        fig.colorbar(heat, ax=axes[0, col], fraction=0.046)
        for row, method in enumerate(methods, start=1):
            curve = curves[scenario][method]
            ax = axes[row, col]
            ax.plot(curve.chosen, label="chosen", color="C2")
            ax.plot(curve.rejected, label="rejected", color="C3")
            ax.plot(curve.unseen, label="unseen", color="C7", linestyle="--")
            ax.set(yscale="log", ylim=(1e-7, 1.5), xlabel="step", ylabel="probability")
            ax.set_title(f"{method.upper()}: {scenario}", fontsize=9)
            if col == 0:
                ax.legend(fontsize=7)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def run_toy_mio(
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    methods: Sequence[str] = ("dpo", "mio"),
    scenarios: Sequence[str] = tuple(TOY_SCENARIOS),
    settings: ToyMioSettings | None = None,
    show_progress: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """Run the toy model for every scenario and method; write results, table and figure.

    Args:
        out_dir: folder for ``results.json``, ``results.md``, ``curves.csv``, ``config.json``
            and ``toy_mio.png`` (created if missing).
        seed: seeds the reference network and the sampled pairs (the same for every method).
        steps: overrides ``settings.steps``.
        methods: any of ``TOY_METHODS``.
        scenarios: any of ``TOY_SCENARIOS``.
        settings: the remaining settings.
        show_progress: show a progress bar.

    Returns:
        The content of ``results.json``: scenario -> method -> ``chosen_prob_start``,
        ``chosen_prob_end`` (also ``_min``, ``_max``), ``rejected_prob_start``,
        ``rejected_prob_end``, ``unseen_prob_start``, ``unseen_prob_end``; each the mean over
        the 4 prompts of one response's probability in that group.
    """
    settings = settings or ToyMioSettings()
    if steps is not None:
        settings = ToyMioSettings(**{**asdict(settings), "steps": check_steps(steps)})
    methods = check_names(methods, TOY_METHODS, what="methods")
    scenarios = check_names(scenarios, tuple(TOY_SCENARIOS), what="scenarios")

    references: dict[str, Tensor] = {}
    curves: dict[str, dict[str, ToyCurves]] = {}
    total = len(scenarios) * len(methods) * settings.steps
    with tqdm(total=total, desc="toy-mio", disable=not show_progress) as progress:
        for scenario in scenarios:
            chosen_level, rejected_level = TOY_SCENARIOS[scenario]
            targets = scenario_targets(settings.level(chosen_level), settings.level(rejected_level))
            reference = fit_reference(targets, settings, seed)
            references[scenario] = reference.all_probs()
            curves[scenario] = {
                method: train_preference(reference, method, settings, seed + 1, progress)
                for method in methods
            }
    results = {s: {m: c.summary() for m, c in by_m.items()} for s, by_m in curves.items()}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    config = {"experiment": "toy_mio", "seed": seed, "methods": list(methods)}
    config["settings"] = asdict(settings)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(_markdown_table(results, settings), encoding="utf-8")
    _write_curves_csv(out_dir / "curves.csv", curves)
    _plot(out_dir / "toy_mio.png", references, curves, methods)
    return results
