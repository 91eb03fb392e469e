"""Tests of the seeds' synthetic experiments (``mipo_engine.lab``).

Hand-worked values are in each test's docstring; the qualitative claims are checked on short
but otherwise default runs (one shared run per experiment).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mipo_engine.lab import (
    DidSyntheticSettings,
    LabConfigError,
    ToyMioSettings,
    run_did_synthetic,
    run_toy_mio,
)
from mipo_engine.lab.did_synthetic import (
    HYPERPARAMETER_GRIDS,
    SyntheticPolicies,
    cal_dpo_loss,
    differential_information,
    js_divergence,
    log_odds,
    make_policies,
    orpo_loss,
    simpo_loss,
    slic_loss,
)
from mipo_engine.lab.toy_mio import (
    fit_reference,
    response_group_probs,
    sample_pairs,
    scenario_targets,
)
from mipo_engine.training import losses

# --------------------------------------------------------------------------------------------
# DID synthetic: pieces
# --------------------------------------------------------------------------------------------


def test_js_divergence_hand_values() -> None:
    """Disjoint supports give log 2; identical inputs give 0.

    p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4),
    KL(p||m) = 1/2 log(2/3) + 1/2 log 2 = 0.143841, KL(q||m) = log(4/3) = 0.287682,
    JS = (0.143841 + 0.287682) / 2 = 0.215762.
    """
    p = torch.tensor([[1.0, 0.0], [0.3, 0.7], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.3, 0.7], [1.0, 0.0]])
    expected = torch.tensor([math.log(2.0), 0.0, 0.215762])
    torch.testing.assert_close(js_divergence(p, q), expected, atol=1e-6, rtol=0)


def test_policies_follow_the_paper_and_align_the_did() -> None:
    """theta_l = 2 theta_ref - theta* makes q_{ref/l} = q_{*/ref} (seed 002 sec. 3.5)."""
    policies = make_policies(32, 4.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(policies.target, policies.reference / 4.0)
    torch.testing.assert_close(policies.rejected, 2 * policies.reference - policies.target)
    torch.testing.assert_close(
        differential_information(policies.reference, policies.rejected),
        differential_information(policies.target, policies.reference),
    )


def _expected_gradient(
    pair_loss, logits: torch.Tensor, policies: SyntheticPolicies
) -> torch.Tensor:
    """Exact gradient at ``logits`` of E_{y_w ~ pi_ref, y_l ~ pi_l}[pair_loss], summing over
    all K x K pairs instead of sampling."""
    p_ref = torch.softmax(policies.reference, dim=-1)
    p_l = torch.softmax(policies.rejected, dim=-1)
    weights = p_ref[:, None] * p_l[None, :]  # (K, K): P(y_w = i, y_l = j)
    logits = logits.clone().requires_grad_(True)
    logps = torch.log_softmax(logits, dim=-1)
    ref_logps = torch.log_softmax(policies.reference, dim=-1)
    values = pair_loss(logps[:, None], logps[None, :], ref_logps[:, None], ref_logps[None, :])
    (weights * values).sum().backward()
    assert logits.grad is not None
    return logits.grad


def _dpo_pair(lw, ll, rw, rl):
    return -torch.nn.functional.logsigmoid((lw - rw) - (ll - rl))


def _log_pi_pair(lw, ll, rw, rl):
    return -torch.nn.functional.logsigmoid(lw - ll)


def test_dpo_is_stationary_at_the_target_and_log_pi_at_the_did() -> None:
    """Thm. 3.4 / 3.3 on this construction: the exact expected gradient of DPO (beta = 1)
    vanishes at pi = pi*, and that of the reward log pi at pi = q_{pi*/pi_ref}; at pi_ref
    itself DPO's gradient does not vanish (so the check can fail)."""
    # Rebuild the construction in float64 so the identities hold to rounding error.
    reference = make_policies(32, 4.0, torch.Generator().manual_seed(0)).reference.double()
    target = reference / 4.0
    policies = SyntheticPolicies(
        reference=reference, target=target, rejected=2 * reference - target
    )
    did_logits = policies.target - policies.reference
    at_target = _expected_gradient(_dpo_pair, policies.target, policies)
    at_did = _expected_gradient(_log_pi_pair, did_logits, policies)
    at_reference = _expected_gradient(_dpo_pair, policies.reference, policies)
    assert at_target.abs().max() < 1e-12
    assert at_did.abs().max() < 1e-12
    assert at_reference.abs().max() > 1e-3


def test_slic_hand_value() -> None:
    """delta = 1, lam = 0.5, pi(y_w) = 1/2, pi(y_l) = 1/4:
    max(0, 1 - log 1/2 + log 1/4) - 0.5 log 1/2 = (1 - 0.693147) + 0.346574 = 0.653426."""
    value = slic_loss(
        torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]), delta=1.0, lam=0.5
    )
    torch.testing.assert_close(value, torch.tensor([0.653426]), atol=1e-6, rtol=0)


def test_orpo_hand_value() -> None:
    """pi(y_w) = 1/2 (odds 1, log odds 0), pi(y_l) = 1/5 (odds 1/4, log odds -1.386294):
    -log 1/2 + 0.5 * log(1 + e^-1.386294) = 0.693147 + 0.5 log 1.25 = 0.804719."""
    value = orpo_loss(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)]), lam=0.5)
    torch.testing.assert_close(value, torch.tensor([0.804719]), atol=1e-6, rtol=0)


def test_log_odds_is_finite_near_one() -> None:
    """log odds at p = 1/2 is 0, at p = 0.8 is log 4; p -> 1 stays finite."""
    logps = torch.log(torch.tensor([0.5, 0.8, 1.0]))
    values = log_odds(logps)
    torch.testing.assert_close(values[:2], torch.tensor([0.0, math.log(4.0)]), atol=1e-6, rtol=0)
    assert torch.isfinite(values).all()


def test_simpo_hand_value_and_agreement_with_training_loss() -> None:
    """beta = 2, gamma = 1, log-probs -1 and -2: softplus(-(2 * 1 - 1)) = log(1 + e^-1) =
    0.313262; and the same numbers as ``losses.simpo`` on summed log-probs."""
    value = simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=1.0)
    torch.testing.assert_close(value, torch.tensor([0.313262]), atol=1e-6, rtol=0)
    chosen, rejected = -torch.rand(16) * 5, -torch.rand(16) * 5
    torch.testing.assert_close(
        simpo_loss(chosen, rejected, beta=2.5, gamma=0.3),
        losses.simpo(chosen, rejected, beta=2.5, gamma=0.3, length_normalize=False),
    )


def test_cal_dpo_hand_value() -> None:
    """beta = 0.5 (targets +-1), h_w = 0.5, h_l = -0.5:
    -log sigmoid(1) + (0.5 - 1)^2 + (-0.5 + 1)^2 = 0.313262 + 0.25 + 0.25 = 0.813262."""
    value = cal_dpo_loss(
        torch.tensor([-1.0]),
        torch.tensor([-3.5]),
        torch.tensor([-1.5]),
        torch.tensor([-3.0]),
        beta=0.5,
    )
    torch.testing.assert_close(value, torch.tensor([0.813262]), atol=1e-6, rtol=0)


def test_grids_broadcast_like_one_call_per_setting() -> None:
    """A grid of hyper-parameters as (n, 1) columns equals n scalar calls."""
    chosen, rejected = -torch.rand(2, 8) * 4
    grid = HYPERPARAMETER_GRIDS["slic"]
    delta = torch.tensor([[g["delta"]] for g in grid])
    lam = torch.tensor([[g["lam"]] for g in grid])
    batched = slic_loss(
        chosen.expand(len(grid), 8), rejected.expand(len(grid), 8), delta=delta, lam=lam
    )
    one_by_one = torch.stack([slic_loss(chosen, rejected, **g) for g in grid])
    torch.testing.assert_close(batched, one_by_one)


def test_grids_match_the_appendix() -> None:
    """App. J.1: 16 SLiC, 4 ORPO, 12 SimPO and 5 Cal-DPO settings."""
    sizes = {name: len(HYPERPARAMETER_GRIDS[name]) for name in ("slic", "orpo", "simpo", "cal_dpo")}
    assert sizes == {"slic": 16, "orpo": 4, "simpo": 12, "cal_dpo": 5}


# --------------------------------------------------------------------------------------------
# DID synthetic: the run
# --------------------------------------------------------------------------------------------

DID_TEST_STEPS = 2000


@pytest.fixture(scope="module")
def did_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("did")
    results = run_did_synthetic(out, seed=0, steps=DID_TEST_STEPS, show_progress=False)
    return out, results


def test_did_run_writes_its_files(did_run: tuple[Path, dict]) -> None:
    out, results = did_run
    for name in ("results.json", "results.md", "grid.csv", "config.json", "js_divergence.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text()) == results
    assert set(results) == {"dpo", "slic", "orpo", "simpo", "cal_dpo", "log_pi"}
    grid_rows = (out / "grid.csv").read_text().strip().splitlines()
    assert len(grid_rows) == 1 + 1 + 16 + 4 + 12 + 5 + 1


def test_dpo_reaches_the_lowest_js_to_the_target(did_run: tuple[Path, dict]) -> None:
    """Seed 002 Fig. 7: DPO's final JS(pi*, pi) is below every baseline's best (the lowest
    reached by its best setting at any step), and well below where it started."""
    _, results = did_run
    dpo_js = results["dpo"]["js_to_target"]
    assert dpo_js < 0.5 * results["dpo"]["js_to_target_start"]
    for method in ("slic", "orpo", "simpo", "cal_dpo", "log_pi"):
        assert dpo_js < results[method]["js_to_target_min"], method


def test_log_pi_moves_toward_the_did(did_run: tuple[Path, dict]) -> None:
    """Seed 002 Fig. 1 (left): with the reward log pi the JS to q_{pi*/pi_ref} falls."""
    _, results = did_run
    assert results["log_pi"]["js_to_did"] < 0.5 * results["log_pi"]["js_to_did_start"]


# --------------------------------------------------------------------------------------------
# MIO toy: pieces
# --------------------------------------------------------------------------------------------


def test_scenario_targets_hand_values() -> None:
    """Chosen 0.1 and rejected 0.001 leave (1 - 0.1 - 0.004) / 5 = 0.1792 for each of the
    other prompts' chosen responses and the two unseen ones."""
    targets = scenario_targets(0.1, 0.001)
    assert targets.shape == (4, 10)
    torch.testing.assert_close(targets.sum(dim=-1), torch.ones(4))
    assert targets[2, 2] == pytest.approx(0.1)
    assert targets[2, 5] == pytest.approx(0.001)
    assert targets[2, 0] == pytest.approx(0.1792)
    assert targets[2, 9] == pytest.approx(0.1792)


def test_response_group_probs_hand_values() -> None:
    """Uniform rows give 0.1 everywhere; moving prompt 0's mass changes only its groups:
    chosen (0.5 + 3 * 0.1) / 4 = 0.2."""
    probs = torch.full((4, 10), 0.1)
    probs[0] = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.0, 0.0])
    groups = response_group_probs(probs)
    assert float(groups["chosen"]) == pytest.approx(0.2)
    assert float(groups["rejected"]) == pytest.approx((0.05 + 3 * 0.1) / 4)
    assert float(groups["unseen"]) == pytest.approx(0.3 / 4)


def test_sample_pairs_are_diagonal_chosen_and_rejected_from_the_rejected_set() -> None:
    prompts, chosen, rejected = sample_pairs(torch.Generator().manual_seed(0))
    assert prompts.tolist() == [0, 1, 2, 3]
    assert chosen.tolist() == [0, 1, 2, 3]
    assert all(4 <= r <= 7 for r in rejected.tolist())


def test_reference_fit_reaches_the_scenario() -> None:
    targets = scenario_targets(0.1, 0.001)
    reference = fit_reference(targets, ToyMioSettings(), seed=0)
    torch.testing.assert_close(reference.all_probs(), targets, atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.0}, "beta"),
        ({"steps": 0}, "steps"),
        ({"small_prob": 0.2, "normal_prob": 0.1}, "small_prob"),
        ({"normal_prob": 0.3}, "sum below 1"),
    ],
)
def test_toy_settings_reject_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(LabConfigError, match=message):
        ToyMioSettings(**kwargs)


def test_did_settings_reject_bad_values() -> None:
    with pytest.raises(LabConfigError, match="tau"):
        DidSyntheticSettings(tau=-1.0)


def test_runs_reject_unknown_methods_and_steps(tmp_path: Path) -> None:
    with pytest.raises(LabConfigError, match="unknown methods"):
        run_toy_mio(tmp_path, methods=("dpo", "ppo"), show_progress=False)
    with pytest.raises(LabConfigError, match="steps"):
        run_did_synthetic(tmp_path, steps=0, show_progress=False)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# MIO toy: the run
# --------------------------------------------------------------------------------------------

TOY_TEST_STEPS = 400
DISPLACEMENT_SCENARIO = "chosen_normal_rejected_small"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toy")
    results = run_toy_mio(
        out, seed=0, steps=TOY_TEST_STEPS, scenarios=(DISPLACEMENT_SCENARIO,), show_progress=False
    )
    return out, results


def test_toy_run_writes_its_files(toy_run: tuple[Path, dict]) -> None:
    out, results = toy_run
    for name in ("results.json", "results.md", "curves.csv", "config.json", "toy_mio.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text()) == results
    row = results[DISPLACEMENT_SCENARIO]["dpo"]
    assert {
        "chosen_prob_start",
        "chosen_prob_end",
        "rejected_prob_start",
        "rejected_prob_end",
    } <= set(row)
    # 2 methods x (steps + 1) rows plus the header.
    assert len((out / "curves.csv").read_text().strip().splitlines()) == 1 + 2 * (
        TOY_TEST_STEPS + 1
    )


def test_toy_starts_from_the_scenario(toy_run: tuple[Path, dict]) -> None:
    """Chosen normal (0.1), rejected small (0.001), as fitted into the reference."""
    _, results = toy_run
    for method in ("dpo", "mio"):
        row = results[DISPLACEMENT_SCENARIO][method]
        assert row["chosen_prob_start"] == pytest.approx(0.1, abs=2e-3)
        assert row["rejected_prob_start"] == pytest.approx(0.001, abs=2e-4)


def test_both_methods_drive_the_rejected_probability_down(toy_run: tuple[Path, dict]) -> None:
    _, results = toy_run
    for method in ("dpo", "mio"):
        row = results[DISPLACEMENT_SCENARIO][method]
        assert row["rejected_prob_end"] < 0.01 * row["rejected_prob_start"], method


def test_mio_chosen_probability_does_not_fall(toy_run: tuple[Path, dict]) -> None:
    """Seed 000 Fig. 2 and Prop. 3.1-3.2: with a tiny rejected probability MIO keeps raising
    the chosen likelihood; it never dips below its start."""
    _, results = toy_run
    row = results[DISPLACEMENT_SCENARIO]["mio"]
    assert row["chosen_prob_min"] >= 0.99 * row["chosen_prob_start"]
    assert row["chosen_prob_end"] > 2 * row["chosen_prob_start"]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Seed 000 Fig. 2 reports DPO's chosen likelihood falling together with the rejected "
        "one when the rejected probability starts small. Seed 000 gives no width, beta, "
        "optimiser or step count; with the defaults here (width 64, beta 0.1, Adam 1e-3) "
        "DPO's chosen probability rises from 0.10 to about 0.15 and eases back, staying above "
        "its start, while the mass leaves the rejected and unseen responses for the other "
        "prompts' chosen ones. (With width 256 it does dip below the start, to about 0.07.)"
    ),
)
def test_dpo_chosen_probability_falls_when_rejected_starts_small(
    toy_run: tuple[Path, dict],
) -> None:
    _, results = toy_run
    row = results[DISPLACEMENT_SCENARIO]["dpo"]
    assert row["chosen_prob_end"] < row["chosen_prob_start"]
