"""Values of the loss family against the papers' formulas.

Each loss is checked two ways: against a scalar re-implementation written from the paper's
probability-ratio form with Python's ``math`` (a different route from the library's
softplus/logsigmoid algebra), and against one number worked out by hand in the docstring.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from mipo_engine.errors import ConfigError
from mipo_engine.training import losses
from mipo_engine.training.loss_registry import (
    LOSSES,
    get_loss,
    loss_needs_reference,
    signature_defaults,
)
from mipo_engine.training.losses import (
    INFOPO_EXP_LINEAR_FROM,
    dpo,
    dpo_pg_direction,
    dpo_pg_gradients,
    infonce,
    infopo,
    mi_dpo,
    mio,
    preference_metrics,
    sft,
    simpo,
)
from mipo_engine.training.priors import PRIORS, get_prior, sequence_kl

LN2 = math.log(2.0)


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add contention on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Scalar reference implementations, written from the papers' ratio forms
# --------------------------------------------------------------------------------------------


def ref_dpo(pc: float, pr: float, rc: float, rr: float, beta: float) -> float:
    """Seed 004 eq. 5 as -log(1 / (1 + ((pi_r/ref_r) / (pi_c/ref_c))^beta))."""
    ratio_c = math.exp(pc) / math.exp(rc)
    ratio_r = math.exp(pr) / math.exp(rr)
    return math.log1p((ratio_r / ratio_c) ** beta)


def ref_mio(pc: float, pr: float, rc: float, rr: float, beta: float) -> float:
    """Seed 000 eq. 15 with the sec. 3.3 temperature: probability ratios to the power beta."""
    ratio_c = math.exp(pc) / math.exp(rc)
    ratio_r = math.exp(pr) / math.exp(rr)
    return (
        math.log1p(ratio_c ** (-beta))
        + 0.5 * math.log1p(ratio_c**beta)
        + 0.5 * math.log1p(ratio_r**beta)
    )


def ref_infopo(pc: float, pr: float, rr: float, beta: float) -> float:
    """Seed 001 eq. 13 with temperature: -beta log pi(y_w) + (pi(y_l) / pi_ref(y_l))^beta."""
    return -beta * pc + (math.exp(pr) / math.exp(rr)) ** beta


def neg_log_sigmoid(z: float) -> float:
    """-log(1 / (1 + e^-z)) = log(1 + e^-z), with log1p so tiny losses keep their digits."""
    return math.log1p(math.exp(-z))


def ref_simpo(pc: float, pr: float, nc: float, nr: float, beta: float, gamma: float) -> float:
    """Seed 003 sec. 4 J_SimPO: -log sigmoid(beta/|y_w| l_w - beta/|y_l| l_l - gamma)."""
    return neg_log_sigmoid(beta / nc * pc - beta / nr * pr - gamma)


def ref_infonce(a: float, b: float, u: float, v: float, beta: float) -> float:
    """Seed 004 eq. 14, K = 2, with p(y_i | x, c_j) = exp(beta * l_ij).

    Sample 1 = (y_c, c) with scores a = l(y_c|c), b = l(y_c|c'); sample 2 = (y_r, c') with
    u = l(y_r|c), v = l(y_r|c').
    """
    k = 2
    p = {(1, 1): a, (1, 2): b, (2, 1): u, (2, 2): v}
    total = 0.0
    for i in (1, 2):
        own = math.exp(beta * p[(i, i)])
        marginal = sum(math.exp(beta * p[(i, j)]) for j in (1, 2)) / k
        total += math.log(own / marginal)
    return -total / k


def random_logps(rng: random.Random, n: int, low: float = -30.0) -> list[float]:
    return [rng.uniform(low, 0.0) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# Each loss against its independent implementation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
def test_dpo_matches_ratio_form(beta: float) -> None:
    rng = random.Random(0)
    pc, pr, rc, rr = (random_logps(rng, 16) for _ in range(4))
    got = dpo(t(*pc), t(*pr), t(*rc), t(*rr), beta=beta)
    want = [ref_dpo(*row, beta) for row in zip(pc, pr, rc, rr, strict=True)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_dpo_hand_value() -> None:
    """beta = 0.5, D_c = -10 - (-11) = 1, D_r = -12 - (-11) = -1.

    loss = -log sigmoid(0.5 * (1 - (-1))) = log(1 + e^-1) = log(1.36787944) = 0.31326169.
    """
    got = dpo(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.5)
    assert got.item() == pytest.approx(0.31326168751822286, abs=1e-12)


def test_dpo_length_normalized_divides_every_logp() -> None:
    """Tokens 2 and 4: D_c = (-10 + 11) / 2 = 0.5, D_r = (-12 + 8) / 4 = -1, beta = 1.

    loss = log(1 + e^-(0.5 + 1)) = log(1 + e^-1.5) = log(1.22313016) = 0.20141328.
    """
    got = dpo(
        t(-10.0),
        t(-12.0),
        t(-11.0),
        t(-8.0),
        beta=1.0,
        length_normalize=True,
        chosen_tokens=torch.tensor([2]),
        rejected_tokens=torch.tensor([4]),
    )
    assert got.item() == pytest.approx(math.log1p(math.exp(-1.5)), abs=1e-12)
    assert got.item() == pytest.approx(0.20141327798275246, abs=1e-12)


@pytest.mark.parametrize("beta", [1.0, 5.0, 8.75])
def test_mio_matches_eq15(beta: float) -> None:
    rng = random.Random(1)
    # Keep beta * D inside +-60 so the ratio form does not overflow a Python float.
    pc, pr, rc, rr = (random_logps(rng, 16, low=-6.0) for _ in range(4))
    got = mio(t(*pc), t(*pr), t(*rc), t(*rr), beta=beta, length_normalize=False)
    want = [ref_mio(*row, beta) for row in zip(pc, pr, rc, rr, strict=True)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_mio_hand_value() -> None:
    """beta = 1, D_c = ln 3, D_r = 0.

    s(-ln 3) = ln(1 + 1/3) = ln(4/3); 1/2 s(ln 3) = 1/2 ln 4 = ln 2; 1/2 s(0) = 1/2 ln 2.
    loss = ln(4/3) + 1.5 ln 2 = 0.28768207 + 1.03972077 = 1.32740284.
    """
    got = mio(t(-2.0 + math.log(3.0)), t(-3.0), t(-2.0), t(-3.0), beta=1.0, length_normalize=False)
    assert got.item() == pytest.approx(1.3274028432916987, abs=1e-12)


def test_mio_default_is_length_normalized() -> None:
    """Tokens 2 and 2 halve every D: D_c = 2 ln 3 / 2 = ln 3, D_r = 0: the value above."""
    got = mio(
        t(-4.0 + 2 * math.log(3.0)),
        t(-6.0),
        t(-4.0),
        t(-6.0),
        beta=1.0,
        chosen_tokens=torch.tensor([2]),
        rejected_tokens=torch.tensor([2]),
    )
    assert got.item() == pytest.approx(1.3274028432916987, abs=1e-12)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_infopo_matches_eq13(beta: float) -> None:
    rng = random.Random(2)
    pc, pr, rc, rr = (random_logps(rng, 16, low=-8.0) for _ in range(4))
    got = infopo(t(*pc), t(*pr), t(*rc), t(*rr), beta=beta, length_normalize=False)
    want = [ref_infopo(c, r, rref, beta) for c, r, rref in zip(pc, pr, rr, strict=True)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_infopo_hand_values() -> None:
    """l_theta(y_c) = -2, D_r = -3 - (-3 - ln 2) = ln 2.

    beta = 1 (eq. 13): 2 + e^(ln 2) = 2 + 2 = 4.  beta = 2: 2 * 2 + e^(2 ln 2) = 4 + 4 = 8.
    """
    args = (t(-2.0), t(-3.0), t(-5.0), t(-3.0 - math.log(2.0)))
    assert infopo(*args, beta=1.0, length_normalize=False).item() == pytest.approx(4.0, abs=1e-12)
    assert infopo(*args, beta=2.0, length_normalize=False).item() == pytest.approx(8.0, abs=1e-12)


def test_infopo_needs_only_rejected_reference() -> None:
    """ref_chosen_logps is unused by eq. 13, so None is accepted there; ref_rejected is not."""
    got = infopo(t(-2.0), t(-3.0), None, t(-3.0), beta=1.0, length_normalize=False)
    assert got.item() == pytest.approx(2.0 + 1.0, abs=1e-12)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        infopo(t(-2.0), t(-3.0), t(-3.0), None, beta=1.0, length_normalize=False)


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 1.0), (2.5, 0.3), (1.0, 0.0)])
def test_simpo_matches_paper_form(beta: float, gamma: float) -> None:
    rng = random.Random(3)
    pc, pr = random_logps(rng, 16, low=-200.0), random_logps(rng, 16, low=-200.0)
    nc = [float(rng.randint(1, 64)) for _ in range(16)]
    nr = [float(rng.randint(1, 64)) for _ in range(16)]
    got = simpo(
        t(*pc), t(*pr), beta=beta, gamma=gamma, chosen_tokens=t(*nc), rejected_tokens=t(*nr)
    )
    want = [ref_simpo(*row, beta, gamma) for row in zip(pc, pr, nc, nr, strict=True)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_simpo_hand_value() -> None:
    """beta = 2, gamma = 1: means -10/5 = -2 and -12/4 = -3.

    loss = -log sigmoid(2 * (-2 + 3) - 1) = log(1 + e^-1) = 0.31326169.
    """
    got = simpo(
        t(-10.0), t(-12.0), beta=2.0, gamma=1.0, chosen_tokens=t(5.0), rejected_tokens=t(4.0)
    )
    assert got.item() == pytest.approx(0.31326168751822286, abs=1e-12)


def test_sft_hand_values() -> None:
    """Seed 004 eq. 3: -(-12) / 4 tokens = 3 (mean NLL); summed: 12."""
    assert sft(t(-12.0), chosen_tokens=t(4.0)).item() == pytest.approx(3.0)
    assert sft(t(-12.0), length_normalize=False).item() == pytest.approx(12.0)


def test_sft_ignores_rejected_and_reference() -> None:
    a = sft(t(-12.0), t(-1.0), t(-5.0), t(-6.0), beta=3.0, chosen_tokens=t(4.0))
    b = sft(t(-12.0), None, None, None, chosen_tokens=t(4.0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_infonce_matches_eq14(beta: float) -> None:
    rng = random.Random(4)
    a, b, u, v = (random_logps(rng, 16) for _ in range(4))
    got = infonce(
        t(*a),
        t(*u),
        chosen_logps_on_rejected_input=t(*b),
        rejected_logps_on_rejected_input=t(*v),
        beta=beta,
    )
    want = [ref_infonce(*row, beta) for row in zip(a, b, u, v, strict=True)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


def test_infonce_hand_value() -> None:
    """a = l(y_c|c) = -1, b = l(y_c|c') = -1 - ln 3, u = l(y_r|c) = -2, v = l(y_r|c') = -2.

    Sample 1: log(e^-1 / ((e^-1 + e^-1/3) / 2)) = log(1 / (2/3)) = ln 1.5.
    Sample 2: log(e^-2 / ((e^-2 + e^-2) / 2)) = 0.
    loss = -(ln 1.5 + 0) / 2 = -0.20273255.
    """
    got = infonce(
        t(-1.0),
        t(-2.0),
        chosen_logps_on_rejected_input=t(-1.0 - math.log(3.0)),
        rejected_logps_on_rejected_input=t(-2.0),
    )
    assert got.item() == pytest.approx(-0.2027325540540822, abs=1e-12)


def test_infonce_is_zero_when_context_is_ignored_and_above_minus_log2() -> None:
    """Equal scores under both contexts give log(1/1) = 0 per sample; the bound is -log 2."""
    same = infonce(
        t(-3.0),
        t(-4.0),
        chosen_logps_on_rejected_input=t(-3.0),
        rejected_logps_on_rejected_input=t(-4.0),
    )
    assert same.item() == pytest.approx(0.0, abs=1e-15)
    sharp = infonce(
        t(0.0),
        t(-900.0),
        chosen_logps_on_rejected_input=t(-900.0),
        rejected_logps_on_rejected_input=t(0.0),
    )
    assert sharp.item() == pytest.approx(-LN2, abs=1e-12)


def test_infonce_length_normalization_pairs_counts_with_responses() -> None:
    """|y_c| = 2 divides a and b, |y_r| = 3 divides u and v: same as passing the means."""
    normalized = infonce(
        t(-2.0),
        t(-6.0),
        chosen_logps_on_rejected_input=t(-4.0),
        rejected_logps_on_rejected_input=t(-3.0),
        length_normalize=True,
        chosen_tokens=t(2.0),
        rejected_tokens=t(3.0),
    )
    means = infonce(
        t(-1.0),
        t(-2.0),
        chosen_logps_on_rejected_input=t(-2.0),
        rejected_logps_on_rejected_input=t(-1.0),
    )
    assert normalized.item() == pytest.approx(means.item(), abs=1e-12)


# --------------------------------------------------------------------------------------------
# MI-DPO: every named prior recovers the loss it claims (seed 003 sec. 4, App. B)
# --------------------------------------------------------------------------------------------


def random_batch(
    seed: int, n: int = 32, dtype: torch.dtype = torch.float64
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def logps() -> torch.Tensor:
        return (-torch.rand(n, generator=gen, dtype=torch.float64) * 300.0).to(dtype)

    return {
        "pc": logps(),
        "pr": logps(),
        "rc": logps(),
        "rr": logps(),
        "prev_c": logps(),
        "prev_r": logps(),
        "nc": torch.randint(1, 200, (n,), generator=gen),
        "nr": torch.randint(1, 200, (n,), generator=gen),
        "kl_c": torch.rand(n, generator=gen, dtype=torch.float64).to(dtype) * 5.0,
        "kl_r": torch.rand(n, generator=gen, dtype=torch.float64).to(dtype) * 5.0,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_ref_prior_is_exactly_dpo(dtype: torch.dtype, length_normalize: bool) -> None:
    b = random_batch(10, dtype=dtype)
    kw = {
        "length_normalize": length_normalize,
        "chosen_tokens": b["nc"],
        "rejected_tokens": b["nr"],
    }
    want = dpo(b["pc"], b["pr"], b["rc"], b["rr"], beta=0.1, **kw)
    got = mi_dpo(b["pc"], b["pr"], b["rc"], b["rr"], beta=0.1, prior="ref", **kw)
    assert torch.equal(got, want)


def test_dice_prior_is_dpo_against_previous_policy() -> None:
    """DICE (seed 003 sec. 4): DPO with the previous round's policy in place of pi_ref."""
    b = random_batch(11)
    want = dpo(b["pc"], b["pr"], b["prev_c"], b["prev_r"], beta=0.3)
    got = mi_dpo(
        b["pc"],
        b["pr"],
        None,
        None,
        beta=0.3,
        prior="dice",
        prior_chosen_logps=b["prev_c"],
        prior_rejected_logps=b["prev_r"],
    )
    assert torch.equal(got, want)


def test_simpo_prior_is_simpo_in_value_and_gradient() -> None:
    b = random_batch(12)
    pc_a, pr_a = b["pc"].clone().requires_grad_(), b["pr"].clone().requires_grad_()
    pc_b, pr_b = b["pc"].clone().requires_grad_(), b["pr"].clone().requires_grad_()
    tokens = {"chosen_tokens": b["nc"], "rejected_tokens": b["nr"]}
    want = simpo(pc_a, pr_a, beta=2.0, gamma=1.2, **tokens)
    got = mi_dpo(pc_b, pr_b, beta=2.0, prior="simpo", gamma=1.2, **tokens)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    want.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(pc_b.grad, pc_a.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(pr_b.grad, pr_a.grad, rtol=1e-12, atol=1e-15)


def test_simpo_prior_with_averaged_inputs_does_not_divide_twice() -> None:
    b = random_batch(13)
    tokens = {"chosen_tokens": b["nc"], "rejected_tokens": b["nr"]}
    want = simpo(b["pc"], b["pr"], beta=2.0, gamma=0.5, **tokens)
    got = mi_dpo(
        b["pc"], b["pr"], beta=2.0, prior="simpo", gamma=0.5, length_normalize=True, **tokens
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_length_prior_is_r_dpo() -> None:
    """R-DPO (Park et al. 2024): -log sigmoid(beta (D_c - D_r) - a (|y_c| - |y_r|))."""
    b = random_batch(14)
    beta, a = 0.1, 0.01
    d_c = (b["pc"] - b["rc"]).tolist()
    d_r = (b["pr"] - b["rr"]).tolist()
    want = [
        neg_log_sigmoid(beta * (dc - dr) - a * (nc - nr))
        for dc, dr, nc, nr in zip(d_c, d_r, b["nc"].tolist(), b["nr"].tolist(), strict=True)
    ]
    got = mi_dpo(
        b["pc"],
        b["pr"],
        b["rc"],
        b["rr"],
        beta=beta,
        prior="length",
        length_penalty=a,
        chosen_tokens=b["nc"],
        rejected_tokens=b["nr"],
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_length_prior_hand_value() -> None:
    """D_c = D_r = 0, |y_c| = 10, |y_r| = 5, a = 0.1, beta = 1: margin = -0.1 * 5 = -0.5.

    loss = -log sigmoid(-0.5) = log(1 + e^0.5) = log(2.64872127) = 0.97407698.
    """
    got = mi_dpo(
        t(-3.0),
        t(-4.0),
        t(-3.0),
        t(-4.0),
        beta=1.0,
        prior="length",
        length_penalty=0.1,
        chosen_tokens=t(10.0),
        rejected_tokens=t(5.0),
    )
    assert got.item() == pytest.approx(0.9740769841801067, abs=1e-12)


def test_tdpo_prior_is_tdpo() -> None:
    """TDPO (seed 003 sec. 4): -log sigmoid(beta (D_c - D_r) - beta (SeqKL_r - SeqKL_c))."""
    b = random_batch(15)
    beta = 0.5
    rows = zip(
        (b["pc"] - b["rc"]).tolist(),
        (b["pr"] - b["rr"]).tolist(),
        b["kl_c"].tolist(),
        b["kl_r"].tolist(),
        strict=True,
    )
    want = [neg_log_sigmoid(beta * (dc - dr) - beta * (kr - kc)) for dc, dr, kc, kr in rows]
    got = mi_dpo(
        b["pc"],
        b["pr"],
        b["rc"],
        b["rr"],
        beta=beta,
        prior="tdpo",
        chosen_seq_kl=b["kl_c"],
        rejected_seq_kl=b["kl_r"],
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


def test_tdpo_prior_hand_value() -> None:
    """D_c = D_r = 0, SeqKL_c = 0.2, SeqKL_r = 0.7, beta = 2: margin = -2 * 0.5 = -1.

    loss = log(1 + e) = 1.31326169.
    """
    got = mi_dpo(
        t(-1.0),
        t(-1.0),
        t(-1.0),
        t(-1.0),
        beta=2.0,
        prior="tdpo",
        chosen_seq_kl=t(0.2),
        rejected_seq_kl=t(0.7),
    )
    assert got.item() == pytest.approx(1.3132616875182228, abs=1e-12)


def test_centropy_prior_is_entropy_controllable_dpo() -> None:
    """H-DPO as in seed 003 App. B: -log sigmoid(beta log(pi^eta/ref)_c - beta log(pi^eta/ref)_r)."""
    b = random_batch(16)
    beta, eta = 0.2, 0.7
    rows = zip(b["pc"].tolist(), b["pr"].tolist(), b["rc"].tolist(), b["rr"].tolist(), strict=True)
    want = [
        neg_log_sigmoid(beta * (eta * pc - rc) - beta * (eta * pr - rr)) for pc, pr, rc, rr in rows
    ]
    got = mi_dpo(b["pc"], b["pr"], b["rc"], b["rr"], beta=beta, prior="centropy", eta=eta)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


def test_centropy_hand_value_and_eta_one_is_dpo() -> None:
    """eta = 0.5, beta = 1: h_c = 0.5 (-4) + 3 = 1, h_r = 0.5 (-6) + 3 = 0, loss = log(1 + e^-1)."""
    got = mi_dpo(t(-4.0), t(-6.0), t(-3.0), t(-3.0), beta=1.0, prior="centropy", eta=0.5)
    assert got.item() == pytest.approx(0.31326168751822286, abs=1e-12)
    b = random_batch(17)
    torch.testing.assert_close(
        mi_dpo(b["pc"], b["pr"], b["rc"], b["rr"], beta=0.1, prior="centropy", eta=1.0),
        dpo(b["pc"], b["pr"], b["rc"], b["rr"], beta=0.1),
    )


def test_learned_prior_passes_gradient_to_the_prior() -> None:
    """With zeta trainable (seed 003 sec. 5.2), d loss / d l_zeta = -d loss / d l_theta."""
    b = random_batch(18, n=4)
    policy = b["pc"].clone().requires_grad_()
    prior = b["prev_c"].clone().requires_grad_()
    loss = mi_dpo(
        policy,
        b["pr"],
        beta=1.0,
        prior="learned",
        prior_chosen_logps=prior,
        prior_rejected_logps=b["prev_r"],
    )
    loss.sum().backward()
    assert prior.grad is not None and policy.grad is not None
    torch.testing.assert_close(prior.grad, -policy.grad)
    assert bool((policy.grad.abs() > 0).all())


def test_every_prior_is_covered_by_a_recovery_test() -> None:
    assert set(PRIORS) == {"ref", "length", "simpo", "centropy", "tdpo", "dice", "learned"}


def test_sequence_kl_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(5)
    ref_logits = torch.randn(2, 4, 7, generator=gen, dtype=torch.float64)
    policy_logits = torch.randn(2, 4, 7, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(ref_logits.numpy()), softmax(policy_logits.numpy())
    per_position = (p * np.log(p / q)).sum(-1)
    want = (per_position * mask.numpy()).sum(-1)
    np.testing.assert_allclose(sequence_kl(ref_logits, policy_logits, mask).numpy(), want)


def test_sequence_kl_is_zero_for_equal_models_and_handles_masked_vocab() -> None:
    logits = torch.tensor([[[0.0, 1.0, -math.inf]]])
    kl = sequence_kl(logits, logits.clone(), torch.ones(1, 1))
    assert kl.item() == 0.0


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_preference_metrics_hand_values() -> None:
    """beta = 0.5. Example 1: D_c = 1, D_r = -1; example 2: D_c = D_r = -2 (a tie).

    rewards/chosen = (0.5, -1), rewards/rejected = (-0.5, -1), margins = (1, 0),
    accuracies = (1, 0) (ties do not count), chosen shift = (1, -2).
    """
    m = preference_metrics(t(-10.0, -7.0), t(-12.0, -9.0), t(-11.0, -5.0), t(-11.0, -7.0), beta=0.5)
    expected = {
        "rewards/chosen": [0.5, -1.0],
        "rewards/rejected": [-0.5, -1.0],
        "rewards/margins": [1.0, 0.0],
        "rewards/accuracies": [1.0, 0.0],
        "logps/chosen": [-10.0, -7.0],
        "logps/rejected": [-12.0, -9.0],
        "logps/chosen_shift": [1.0, -2.0],
        "logps/rejected_shift": [-1.0, -2.0],
    }
    assert set(m) == set(expected)
    for key, values in expected.items():
        assert m[key].tolist() == pytest.approx(values), key
        assert not m[key].requires_grad


def test_preference_metrics_without_reference_use_policy_logps() -> None:
    """SimPO-style rewards: beta * mean l_theta = 2 * (-10/5) = -4 and 2 * (-12/4) = -6."""
    m = preference_metrics(
        t(-10.0).requires_grad_(),
        t(-12.0),
        beta=2.0,
        length_normalize=True,
        chosen_tokens=t(5.0),
        rejected_tokens=t(4.0),
    )
    assert m["rewards/chosen"].item() == pytest.approx(-4.0)
    assert m["rewards/rejected"].item() == pytest.approx(-6.0)
    assert m["rewards/accuracies"].item() == 1.0
    assert "logps/chosen_shift" not in m


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

DESIGN_NAMES = {"dpo", "mio", "infopo", "simpo", "mi_dpo", "infonce", "sft", "dpo_pg"}


def test_registry_holds_the_design_names_and_each_resolves() -> None:
    assert set(LOSSES) == DESIGN_NAMES
    for name in DESIGN_NAMES:
        spec = get_loss(name)
        assert spec.name == name
        assert spec.citation.startswith("seed 00")
        assert spec.default_beta > 0


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ValueError) as excinfo:
        get_loss("dpoo")
    message = str(excinfo.value)
    assert "'dpoo'" in message
    for name in DESIGN_NAMES:
        assert name in message
    assert isinstance(excinfo.value, ConfigError)


def test_unknown_prior_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="centropy, dice, learned, length, ref, simpo, tdpo"):
        get_prior("simpoo")
    with pytest.raises(ValueError, match="unknown MI-DPO prior"):
        mi_dpo(t(-1.0), t(-1.0), t(-1.0), t(-1.0), beta=0.1, prior="reff")


@pytest.mark.parametrize("name", sorted(DESIGN_NAMES))
def test_registry_defaults_match_function_signatures(name: str) -> None:
    spec = get_loss(name)
    defaults = signature_defaults(spec.fn)
    assert defaults["length_normalize"] is spec.length_normalize_default
    for key, value in spec.hyperparameters.items():
        assert defaults[key] == value, key


def test_paper_length_normalisation_defaults() -> None:
    """Seed 000 and seed 001 length-normalise; SimPO and SFT average by definition."""
    normalized = {name for name, spec in LOSSES.items() if spec.length_normalize_default}
    assert normalized == {"mio", "infopo", "simpo", "sft"}


def _call_without_reference(name: str) -> torch.Tensor:
    spec = get_loss(name)
    extra = {key: t(-2.0) for key in spec.extra_inputs}
    return spec.fn(
        t(-1.0),
        t(-2.0),
        None,
        None,
        beta=spec.default_beta,
        chosen_tokens=t(3.0),
        rejected_tokens=t(4.0),
        **extra,
    )


@pytest.mark.parametrize("name", sorted(DESIGN_NAMES))
def test_needs_reference_flag_is_truthful(name: str) -> None:
    if get_loss(name).needs_reference:
        with pytest.raises(ValueError, match="ref_"):
            _call_without_reference(name)
    else:
        assert torch.isfinite(_call_without_reference(name)).all()


def test_reference_need_of_mi_dpo_follows_the_prior() -> None:
    assert loss_needs_reference("mi_dpo") is True
    assert loss_needs_reference("mi_dpo", prior="simpo") is False
    assert loss_needs_reference("mi_dpo", prior="dice") is False
    assert loss_needs_reference("mi_dpo", prior="tdpo") is True
    assert loss_needs_reference("sft") is False


def test_dpo_pg_entry_is_a_gradient_rule() -> None:
    spec = get_loss("dpo_pg")
    assert spec.gradient_rule is dpo_pg_direction
    assert all(s.gradient_rule is None for n, s in LOSSES.items() if n != "dpo_pg")


# --------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"beta must be a finite number > 0"):
        dpo(t(-1.0), t(-1.0), t(-1.0), t(-1.0), beta=0.0)
    with pytest.raises(ValueError, match=r"ref_chosen_logps must have shape \[batch\] = \[2\]"):
        dpo(t(-1.0, -2.0), t(-1.0, -2.0), t(-1.0), t(-1.0, -2.0), beta=0.1)
    with pytest.raises(ValueError, match="floating"):
        dpo(t(-1.0), t(-1.0), torch.tensor([1]), t(-1.0), beta=0.1)
    with pytest.raises(ValueError, match="chosen_tokens and rejected_tokens"):
        mio(t(-1.0), t(-1.0), t(-1.0), t(-1.0), beta=5.0)
    with pytest.raises(ValueError, match=">= 1"):
        simpo(t(-1.0), t(-1.0), beta=2.0, chosen_tokens=t(0.0), rejected_tokens=t(3.0))
    with pytest.raises(ValueError, match="gamma is a target margin"):
        simpo(t(-1.0), t(-1.0), beta=2.0, gamma=-1.0, chosen_tokens=t(1.0), rejected_tokens=t(1.0))
    with pytest.raises(ValueError, match="pass chosen_tokens"):
        sft(t(-1.0))


def test_mi_dpo_prior_arguments_are_checked() -> None:
    args = (t(-1.0), t(-2.0), t(-1.0), t(-1.0))
    with pytest.raises(ValueError, match="prior='length' needs length_penalty"):
        mi_dpo(*args, beta=0.1, prior="length", chosen_tokens=t(1.0), rejected_tokens=t(1.0))
    with pytest.raises(ValueError, match="uses the response lengths"):
        mi_dpo(*args, beta=0.1, prior="length", length_penalty=0.1)
    with pytest.raises(ValueError, match=r"does not use eta; remove it.*centropy"):
        mi_dpo(*args, beta=0.1, prior="tdpo", eta=0.5, chosen_seq_kl=t(0.0), rejected_seq_kl=t(0.0))
    with pytest.raises(ValueError, match="needs prior_rejected_logps"):
        mi_dpo(*args, beta=0.1, prior="dice", prior_chosen_logps=t(-1.0))
    with pytest.raises(ValueError, match=r"eta .* must be > 0"):
        mi_dpo(*args, beta=0.1, prior="centropy", eta=0.0)


# --------------------------------------------------------------------------------------------
# DPO-PG (seed 002 App. H)
# --------------------------------------------------------------------------------------------


def test_dpo_pg_hand_values() -> None:
    """g_w = (1, 1), g_l = (1, 0): g_w.g_l = 1, |g_l|^2 = 1, direction = (1, 1) - (1, 0) = (0, 1).

    With g_l = (-1, 0) the dot product is -1 < 0, so the direction is g_w = (1, 1).
    """
    assert dpo_pg_direction(t(1.0, 1.0), t(1.0, 0.0)).tolist() == [0.0, 1.0]
    assert dpo_pg_direction(t(1.0, 1.0), t(-1.0, 0.0)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("seed", range(20))
def test_dpo_pg_is_orthogonal_to_g_l_when_they_agree(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    g_w = torch.randn(257, generator=gen)
    g_l = torch.randn(257, generator=gen)
    if torch.dot(g_w, g_l) <= 0:
        g_l = -g_l
    direction = dpo_pg_direction(g_w, g_l)
    scale = float(g_w.norm() * g_l.norm())
    assert abs(float(torch.dot(direction, g_l))) <= 1e-5 * scale
    # What was removed is a multiple of g_l, and g_w's descent property survives (Thm. H.4).
    removed = g_w - direction
    assert float(torch.dot(removed, g_l)) == pytest.approx(
        float(removed.norm() * g_l.norm()), rel=1e-4
    )
    assert float(torch.dot(direction, g_w)) > 0


@pytest.mark.parametrize("seed", range(10))
def test_dpo_pg_leaves_g_w_alone_when_they_disagree(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    g_w = torch.randn(64, generator=gen)
    g_l = torch.randn(64, generator=gen)
    if torch.dot(g_w, g_l) > 0:
        g_l = -g_l
    assert torch.equal(dpo_pg_direction(g_w, g_l), g_w)


def test_dpo_pg_zero_g_l_returns_g_w() -> None:
    g_w = t(0.3, -2.0, 5.0)
    assert torch.equal(dpo_pg_direction(g_w, torch.zeros(3, dtype=torch.float64)), g_w)


def test_dpo_pg_per_parameter_lists_match_flat_vectors() -> None:
    gen = torch.Generator().manual_seed(7)
    g_w = [torch.randn(3, 4, generator=gen), None, torch.randn(5, generator=gen), None]
    g_l = [torch.randn(3, 4, generator=gen), torch.randn(2, generator=gen), None, None]
    if sum(float((a * b).sum()) for a, b in zip(g_w[:1], g_l[:1], strict=True)) <= 0:
        g_l[0] = -g_l[0]
    got = dpo_pg_direction(g_w, g_l)
    assert got[3] is None
    zeros = [torch.zeros(3, 4), torch.zeros(2), torch.zeros(5)]
    flat_w = torch.cat(
        [(g if g is not None else z).flatten() for g, z in zip(g_w, zeros, strict=False)]
    )
    flat_l = torch.cat(
        [(g if g is not None else z).flatten() for g, z in zip(g_l, zeros, strict=False)]
    )
    want = dpo_pg_direction(flat_w, flat_l)
    torch.testing.assert_close(torch.cat([g.flatten() for g in got[:3]]), want)


def test_dpo_pg_mismatched_gradients_are_rejected() -> None:
    with pytest.raises(ValueError, match="same parameters"):
        dpo_pg_direction([torch.ones(2)], [torch.ones(2), torch.ones(1)])
    with pytest.raises(ValueError, match="entry 0"):
        dpo_pg_direction([torch.ones(2)], [torch.ones(3)])


def test_dpo_pg_step_raises_chosen_and_does_not_raise_rejected_likelihood() -> None:
    """A small step along -direction lowers L(y_w) and, to first order, leaves L(y_l) alone.

    Two-token responses from a policy with one softmax head per position (6 tokens, one-hot
    prompts). y_w = (0, 1) and y_l = (0, 2) share their first token, so g_w.g_l > 0: a plain
    NLL step on y_w also lowers L(y_l) by about lr * g_w.g_l, here ~7e-4 (uniform start:
    g_w.g_l = |p - e_0|^2 + (p - e_1).(p - e_2) = 30/36 - 6/36 = 2/3 per prompt, over
    3 prompts with the 1/3 batch mean on each NLL). The DPO-PG step must not (Thm. H.5); what
    remains is second order, lr^2 |d|^2 ~ 1e-6.
    """
    heads = [torch.nn.Linear(3, 6, bias=False).double() for _ in range(2)]
    for head in heads:
        torch.nn.init.zeros_(head.weight)
    params = [head.weight for head in heads]
    prompts = torch.eye(3, dtype=torch.float64)
    chosen = torch.tensor([[0, 1]] * 3)
    rejected = torch.tensor([[0, 2]] * 3)

    def nll(targets: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for position, head in enumerate(heads):
            logp = torch.log_softmax(head(prompts), dim=-1)
            total = total - logp.gather(1, targets[:, position : position + 1]).sum()
        return total / len(prompts)

    def step_along(direction: list[torch.Tensor | None]) -> tuple[float, float]:
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, direction, strict=True):
                assert g is not None
                p -= 1e-3 * g
        after = nll(chosen).item(), nll(rejected).item()
        with torch.no_grad():
            for p, old in zip(params, saved, strict=True):
                p.copy_(old)
        return after

    before_w, before_l = nll(chosen).item(), nll(rejected).item()
    plain = list(torch.autograd.grad(nll(chosen), params))
    plain_w, plain_l = step_along(plain)
    assert plain_w < before_w and plain_l < before_l - 1e-4  # the displacement DPO-PG removes

    projected = dpo_pg_gradients(nll(chosen), nll(rejected), params)
    pg_w, pg_l = step_along(projected)
    assert pg_w < before_w
    assert pg_l > before_l - 1e-5


def test_losses_module_exports_what_it_documents() -> None:
    for name in losses.__all__:
        assert hasattr(losses, name), name
    assert INFOPO_EXP_LINEAR_FROM == 20.0
