"""Seed 002's synthetic test of the log-ratio reward (sec. 3.5, App. J.1, Fig. 1 and Fig. 7).

Policies are softmaxes over K classes, pi_theta(i) = exp(theta_i) / sum_j exp(theta_j):

    theta_ref ~ N(0, I)              the reference policy pi_ref
    theta*    = theta_ref / tau      the target pi* (tau > 1 smooths pi_ref, tau < 1 sharpens it)
    theta_l   = 2 theta_ref - theta* the rejected-sampling policy pi_l

With these logits the differential information distributions (DID, Def. 3.1 / Thm. 3.2,
q_{a/b} ∝ a / b) line up, q_{pi_ref/pi_l} = q_{pi*/pi_ref}, so pairs y_w ~ pi_ref,
y_l ~ pi_l labelled y_w > y_l encode exactly what turns pi_ref into pi* (Thm. 3.3). Theorem 3.4
then says DPO's reward log(pi / pi_ref) (beta = 1) recovers pi*, and the paper shows it reaching a
lower JS(pi*, pi) than SLiC, ORPO, SimPO and Cal-DPO, each searched over its grid (Fig. 7).
Training with the reward log pi instead (``log_pi``) should land on the DID q_{pi*/pi_ref}
itself (Fig. 1, left).

Training follows App. J.1: float32, K = 32, batch 512, RMSprop with learning rate 1e-3,
gradients clipped to norm 1 per model, each baseline's best hyper-parameters chosen by the
lowest JS(pi*, pi) reached during training. The appendix does not give the number of steps or
the dataset size; here every step draws a fresh batch of pairs (the same batch for every
method), and ``steps`` defaults to 3000. All models (one per method and hyper-parameter
setting) train side by side as rows of one [models, K] logit matrix: RMSprop is elementwise and
clipping is per row, so this is the same as training them one by one.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from mipo_engine.lab.toy_mio import (
    LabConfigError,
    check_names,
    check_steps,
    save_figure,
    single_thread,
)
from mipo_engine.training.losses import dpo

__all__ = [
    "DID_METHODS",
    "HYPERPARAMETER_GRIDS",
    "DidSyntheticSettings",
    "SyntheticPolicies",
    "cal_dpo_loss",
    "differential_information",
    "js_divergence",
    "make_policies",
    "orpo_loss",
    "run_did_synthetic",
    "simpo_loss",
    "slic_loss",
]

DID_METHODS = ("dpo", "slic", "orpo", "simpo", "cal_dpo", "log_pi")
"""Methods of Fig. 7 (DPO and its baselines) plus ``log_pi``, the reward log pi of Fig. 1."""

HYPERPARAMETER_GRIDS: Mapping[str, tuple[dict[str, float], ...]] = {
    # DPO with beta = 1 is the reward log(pi / pi_ref) that Thm. 3.4 names; no search.
    "dpo": ({"beta": 1.0},),
    "log_pi": ({"beta": 1.0},),
    # App. J.1 grids (following SimPO's search). SLiC's "beta" there is the hinge margin delta.
    "slic": tuple(
        {"delta": d, "lam": lam} for d, lam in product((0.1, 0.5, 1.0, 2.0), (0.1, 0.5, 1.0, 10.0))
    ),
    "orpo": tuple({"lam": lam} for lam in (0.1, 0.5, 1.0, 2.0)),
    "simpo": tuple(
        {"beta": b, "gamma": g} for b, g in product((2.0, 2.5), (0.3, 0.5, 1.0, 1.2, 1.4, 1.6))
    ),
    "cal_dpo": tuple({"beta": b} for b in (0.001, 0.002, 0.003, 0.01, 0.1)),
}
"""Hyper-parameter settings tried per method (seed 002 App. J.1)."""


@dataclass(frozen=True, kw_only=True)
class DidSyntheticSettings:
    """Settings of the DID synthetic experiment; defaults follow seed 002 App. J.1.

    Attributes:
        num_classes: K, the number of classes (App. J.1: 32).
        tau: target temperature, theta* = theta_ref / tau (Fig. 1 right and Fig. 7: 4).
        batch_size: preference pairs per step (App. J.1: 512).
        learning_rate: RMSprop learning rate (App. J.1: 1e-3).
        max_grad_norm: per-model gradient clipping norm (App. J.1: 1.0).
        steps: optimisation steps (not given in the paper).
        search_hyperparameters: try every setting of ``HYPERPARAMETER_GRIDS`` (as the paper
            does); False keeps only the first setting of each grid, for quick runs.
    """

    num_classes: int = 32
    tau: float = 4.0
    batch_size: int = 512
    learning_rate: float = 1e-3
    max_grad_norm: float = 1.0
    steps: int = 3000
    search_hyperparameters: bool = True

    def __post_init__(self) -> None:
        for name in ("num_classes", "batch_size", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LabConfigError(f"{name} must be a positive integer; got {value!r}")
        if self.num_classes < 2:
            raise LabConfigError(f"num_classes must be >= 2; got {self.num_classes}")
        for name in ("tau", "learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise LabConfigError(f"{name} must be a finite number > 0; got {value!r}")


# --------------------------------------------------------------------------------------------
# Policies, DID and divergence
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticPolicies:
    """Logits [K] of the reference, target and rejected-sampling policies (sec. 3.5)."""

    reference: Tensor
    target: Tensor
    rejected: Tensor


def make_policies(num_classes: int, tau: float, generator: torch.Generator) -> SyntheticPolicies:
    """theta_ref ~ N(0, I), theta* = theta_ref / tau, theta_l = 2 theta_ref - theta* (sec. 3.5)."""
    reference = torch.randn(num_classes, generator=generator)
    target = reference / tau
    return SyntheticPolicies(reference=reference, target=target, rejected=2 * reference - target)


def differential_information(policy_logits: Tensor, reference_logits: Tensor) -> Tensor:
    """The DID q_{pi/pi_ref} ∝ pi / pi_ref (seed 002 Thm. 3.2), as probabilities."""
    return torch.softmax(policy_logits - reference_logits, dim=-1)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in nats over the last dimension: (KL(p||m) + KL(q||m)) / 2.

    Terms with zero probability contribute 0 (x log x -> 0), so one-hot inputs are fine.
    """
    mixture = 0.5 * (p + q)
    return 0.5 * (_kl(p, mixture) + _kl(q, mixture))


def _kl(p: Tensor, q: Tensor) -> Tensor:
    ratio = torch.where(p > 0, p / q, torch.ones_like(p))
    return (p * torch.log(ratio)).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# Baseline losses (single-class "responses": |y| = 1, so no length normalisation)
# Hyper-parameters may be floats or tensors broadcasting against the log-probs, so a whole
# grid is evaluated in one call.
# --------------------------------------------------------------------------------------------

Hyper = float | Tensor


def slic_loss(chosen_logps: Tensor, rejected_logps: Tensor, *, delta: Hyper, lam: Hyper) -> Tensor:
    """SLiC-HF: max(0, delta - log pi(y_w) + log pi(y_l)) - lam log pi(y_w).

    Zhao et al. 2023 (seed 002 ref. [23]), the calibration hinge with a likelihood regulariser
    on the chosen response, as run by SimPO and seed 002 App. J.1.
    """
    return torch.relu(delta - chosen_logps + rejected_logps) - lam * chosen_logps


def log_odds(logps: Tensor) -> Tensor:
    """log(p / (1 - p)) from log p, stable near p = 1 (where it tends to +inf)."""
    return logps - torch.log(-torch.expm1(logps.clamp(max=-1e-7)))


def orpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, *, lam: Hyper) -> Tensor:
    """ORPO: -log pi(y_w) - lam log sigmoid(log odds(y_w) - log odds(y_l)).

    Hong et al. 2024 (seed 002 ref. [10]), odds(y) = pi(y) / (1 - pi(y)); App. J.1 calls the
    weight lam "beta".
    """
    odds_ratio_term = -F.logsigmoid(log_odds(chosen_logps) - log_odds(rejected_logps))
    return -chosen_logps + lam * odds_ratio_term


def simpo_loss(
    chosen_logps: Tensor, rejected_logps: Tensor, *, beta: Hyper, gamma: Hyper
) -> Tensor:
    """SimPO: -log sigmoid(beta (log pi(y_w) - log pi(y_l)) - gamma), |y| = 1.

    Meng et al. 2024 (seed 002 ref. [12], seed 003 sec. 4). The same formula as
    ``mipo_engine.training.losses.simpo`` with summed log-probs, written here so a whole grid
    of (beta, gamma) broadcasts in one call.
    """
    return -F.logsigmoid(beta * (chosen_logps - rejected_logps) - gamma)


def cal_dpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: Hyper,
) -> Tensor:
    """Cal-DPO: -log sigmoid(h_w - h_l) + (h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2.

    Xiao et al. 2024 (seed 002 ref. [29]), h = log(pi / pi_ref): DPO's contrast plus squared
    terms that pin the implicit rewards to the targets +1/(2 beta) (chosen) and -1/(2 beta)
    (rejected), so the chosen log-ratio cannot drift downwards.
    """
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    calibration = (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
    return -F.logsigmoid(chosen_ratio - rejected_ratio) + calibration


# --------------------------------------------------------------------------------------------
# One loss per method, over a block of models [n, batch]
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairBlock:
    """Log-probs [n, batch] of one method's n models on the step's pairs, and the reference's
    log-probs [batch] of the same pairs."""

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor


BlockLoss = Callable[[PairBlock, dict[str, Tensor]], Tensor]


def _dpo_block(pairs: PairBlock, hyper: dict[str, Tensor], ref_free: bool = False) -> Tensor:
    ref_chosen = torch.zeros_like(pairs.ref_chosen) if ref_free else pairs.ref_chosen
    ref_rejected = torch.zeros_like(pairs.ref_rejected) if ref_free else pairs.ref_rejected
    rows = [
        dpo(chosen, rejected, ref_chosen, ref_rejected, beta=float(beta))
        for chosen, rejected, beta in zip(
            pairs.chosen, pairs.rejected, hyper["beta"].flatten(), strict=True
        )
    ]
    return torch.stack(rows)


_BLOCK_LOSSES: Mapping[str, BlockLoss] = {
    "dpo": _dpo_block,
    # The reward log pi is DPO's log-ratio with a constant reference (seed 002 Fig. 1, left).
    "log_pi": lambda pairs, hyper: _dpo_block(pairs, hyper, ref_free=True),
    "slic": lambda pairs, hyper: slic_loss(pairs.chosen, pairs.rejected, **hyper),
    "orpo": lambda pairs, hyper: orpo_loss(pairs.chosen, pairs.rejected, **hyper),
    "simpo": lambda pairs, hyper: simpo_loss(pairs.chosen, pairs.rejected, **hyper),
    "cal_dpo": lambda pairs, hyper: cal_dpo_loss(
        pairs.chosen, pairs.rejected, pairs.ref_chosen, pairs.ref_rejected, **hyper
    ),
}


@dataclass(frozen=True)
class ModelGroup:
    """The rows [start, start + len(grid)) of the logit matrix: ``method`` with each setting of
    ``grid``."""

    method: str
    start: int
    grid: tuple[dict[str, float], ...]

    @property
    def rows(self) -> slice:
        return slice(self.start, self.start + len(self.grid))

    def hyper_tensors(self) -> dict[str, Tensor]:
        """Each hyper-parameter as a column [n, 1], broadcasting over the batch."""
        names = self.grid[0].keys()
        return {k: torch.tensor([[s[k]] for s in self.grid]) for k in names}


def _model_groups(methods: Sequence[str], search: bool) -> list[ModelGroup]:
    groups, start = [], 0
    for method in methods:
        grid = HYPERPARAMETER_GRIDS[method]
        tried = grid if search else grid[:1]
        groups.append(ModelGroup(method=method, start=start, grid=tried))
        start += len(tried)
    return groups


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingTrace:
    """JS of every model to pi* and to the DID, after each step (index 0 = before training)."""

    js_to_target: Tensor  # (steps + 1, models)
    js_to_did: Tensor  # (steps + 1, models)


def _clip_rows(grad: Tensor, max_norm: float) -> None:
    """Clip each row's gradient to ``max_norm`` in place (one row = one model)."""
    norms = grad.norm(dim=-1, keepdim=True)
    grad.mul_((max_norm / (norms + 1e-6)).clamp(max=1.0))


@single_thread()
def _train(
    policies: SyntheticPolicies,
    groups: Sequence[ModelGroup],
    settings: DidSyntheticSettings,
    generator: torch.Generator,
    show_progress: bool,
) -> TrainingTrace:
    """Train all models from theta_ref side by side on shared batches; record JS each step."""
    num_models = groups[-1].rows.stop
    logits = policies.reference.repeat(num_models, 1).clone().requires_grad_(True)  # (M, K)
    optimizer = torch.optim.RMSprop([logits], lr=settings.learning_rate)
    ref_logps = torch.log_softmax(policies.reference, dim=-1)
    chosen_sampler = torch.softmax(policies.reference, dim=-1)
    rejected_sampler = torch.softmax(policies.rejected, dim=-1)
    target = torch.softmax(policies.target, dim=-1)
    did = differential_information(policies.target, policies.reference)
    hypers = [group.hyper_tensors() for group in groups]

    def measure() -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            return js_divergence(target, probs), js_divergence(did, probs)

    to_target, to_did = [], []
    for step in tqdm(range(settings.steps + 1), desc="did-synthetic", disable=not show_progress):
        js_target, js_did = measure()
        to_target.append(js_target)
        to_did.append(js_did)
        if step == settings.steps:
            break
        n = settings.batch_size
        chosen = torch.multinomial(chosen_sampler, n, replacement=True, generator=generator)
        rejected = torch.multinomial(rejected_sampler, n, replacement=True, generator=generator)
        # Gather by one-hot matmul: its backward is a matmul, far cheaper than the
        # scatter-add behind advanced indexing. Slicing the small (M, K) logits per group
        # keeps the slices' backward small too.
        pick_chosen = F.one_hot(chosen, settings.num_classes).T.float()  # (K, B)
        pick_rejected = F.one_hot(rejected, settings.num_classes).T.float()
        total = logits.new_zeros(())
        for group, hyper in zip(groups, hypers, strict=True):
            logps = torch.log_softmax(logits[group.rows], dim=-1)  # (n_group, K)
            block = PairBlock(
                chosen=logps @ pick_chosen,  # (n_group, B)
                rejected=logps @ pick_rejected,
                ref_chosen=ref_logps[chosen],  # (B,)
                ref_rejected=ref_logps[rejected],
            )
            # Sum over models of each model's batch mean: rows get independent gradients.
            total = total + _BLOCK_LOSSES[group.method](block, hyper).mean(dim=-1).sum()
        optimizer.zero_grad()
        total.backward()
        assert logits.grad is not None
        _clip_rows(logits.grad, settings.max_grad_norm)
        optimizer.step()
    return TrainingTrace(js_to_target=torch.stack(to_target), js_to_did=torch.stack(to_did))


# --------------------------------------------------------------------------------------------
# Summaries and files
# --------------------------------------------------------------------------------------------


def _best_row(trace: TrainingTrace, group: ModelGroup) -> int:
    """The group's row with the lowest JS(pi*, pi) reached during training (App. J.1)."""
    lowest = trace.js_to_target[:, group.rows].min(dim=0).values
    return group.start + int(torch.argmin(lowest))


def _summarise(trace: TrainingTrace, groups: Sequence[ModelGroup]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for group in groups:
        row = _best_row(trace, group)
        curve = trace.js_to_target[:, row]
        results[group.method] = {
            "js_to_target": float(curve[-1]),
            "js_to_target_min": float(curve.min()),
            "js_to_target_start": float(curve[0]),
            "js_to_did": float(trace.js_to_did[-1, row]),
            "js_to_did_start": float(trace.js_to_did[0, row]),
            "hyperparameters": dict(group.grid[row - group.start]),
            "settings_tried": len(group.grid),
        }
    return results


def _write_grid_csv(path: Path, trace: TrainingTrace, groups: Sequence[ModelGroup]) -> None:
    """Every model's final and lowest JS, so the whole search can be inspected."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "hyperparameters", "js_to_target_final", "js_to_target_min"])
        for group in groups:
            for offset, setting in enumerate(group.grid):
                curve = trace.js_to_target[:, group.start + offset]
                params = " ".join(f"{k}={v:g}" for k, v in setting.items())
                writer.writerow([group.method, params, f"{curve[-1]:.6g}", f"{curve.min():.6g}"])


def _markdown_table(results: Mapping[str, dict], settings: DidSyntheticSettings) -> str:
    lines = [
        f"# DID synthetic (seed 002 sec. 3.5): K={settings.num_classes}, tau={settings.tau:g}, "
        f"{settings.steps} steps",
        "",
        "| method | best hyper-parameters | JS(pi*, pi) start | JS(pi*, pi) final "
        "| JS(pi*, pi) min | JS(DID, pi) final |",
        "|---|---|---|---|---|---|",
    ]
    for method, row in results.items():
        params = ", ".join(f"{k}={v:g}" for k, v in row["hyperparameters"].items())
        lines.append(
            f"| {method} | {params} | {row['js_to_target_start']:.5f} | "
            f"{row['js_to_target']:.5f} | {row['js_to_target_min']:.5f} | "
            f"{row['js_to_did']:.5f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(path: Path, trace: TrainingTrace, groups: Sequence[ModelGroup], tau: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps = torch.arange(trace.js_to_target.shape[0])
    for group in groups:
        row = _best_row(trace, group)
        left.plot(steps, trace.js_to_target[:, row], label=group.method, linewidth=1.2)
        if group.method == "log_pi":
            right.plot(steps, trace.js_to_did[:, row], label="log_pi: JS(DID, pi)", color="C5")
    left.set(yscale="log", xlabel="step", ylabel="JS(pi*, pi) [nats]")
    left.set_title(f"Distance to the target pi* (tau={tau:g}; best setting per method)")
    left.legend(fontsize=8)
    right.set(yscale="log", xlabel="step", ylabel="JS(q_{pi*/pi_ref}, pi) [nats]")
    right.set_title("Reward log pi learns the DID (Fig. 1, left)")
    if right.lines:
        right.legend(fontsize=8)
    save_figure(fig, path)


def run_did_synthetic(
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    methods: Sequence[str] = DID_METHODS,
    settings: DidSyntheticSettings | None = None,
    show_progress: bool = True,
) -> dict[str, dict]:
    """Run seed 002's synthetic comparison and write its results, table and figure.

    Args:
        out_dir: folder for ``results.json``, ``results.md``, ``grid.csv``, ``config.json``
            and ``js_divergence.png`` (created if missing).
        seed: seeds theta_ref and the sampled pairs (the paper used 42).
        steps: overrides ``settings.steps``.
        methods: any of ``DID_METHODS``.
        settings: the remaining settings (App. J.1 defaults).
        show_progress: show a progress bar.

    Returns:
        The content of ``results.json``: per method, the best setting's final
        ``js_to_target`` = JS(pi*, pi), its minimum and starting value, ``js_to_did`` (JS to
        q_{pi*/pi_ref}), the chosen ``hyperparameters`` and how many settings were tried.
    """
    settings = settings or DidSyntheticSettings()
    if steps is not None:
        settings = DidSyntheticSettings(**{**asdict(settings), "steps": check_steps(steps)})
    methods = check_names(methods, DID_METHODS, what="methods")
    generator = torch.Generator().manual_seed(seed)
    policies = make_policies(settings.num_classes, settings.tau, generator)
    groups = _model_groups(methods, settings.search_hyperparameters)
    trace = _train(policies, groups, settings, generator, show_progress)
    results = _summarise(trace, groups)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    config = {"experiment": "did_synthetic", "seed": seed, "methods": list(methods)}
    config["settings"] = asdict(settings)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(_markdown_table(results, settings), encoding="utf-8")
    _write_grid_csv(out_dir / "grid.csv", trace, groups)
    _plot(out_dir / "js_divergence.png", trace, groups, settings.tau)
    return results
