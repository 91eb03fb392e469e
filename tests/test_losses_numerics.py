"""Numerical stability of the loss family (DESIGN.md sec. 4).

Every loss must give a finite value and finite gradients for log-probs anywhere in [-1e4, 0]
(so D of either sign up to 1e4 in size), token counts from 1 to 4096, in fp32 and bf16.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mipo_engine.training.losses import (
    INFOPO_EXP_LINEAR_FROM,
    dpo,
    dpo_pg_direction,
    infonce,
    infopo,
    mi_dpo,
    mio,
    preference_metrics,
    sft,
    simpo,
)

Inputs = dict[str, torch.Tensor]


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """These tensors have a handful of elements: extra intra-op threads only add contention
    (on a loaded 2-core machine logsigmoid's backward slows from 0.3 ms to ~15 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LossCall = Callable[[Inputs, float], torch.Tensor]

LOGP_NAMES = ("pc", "pr", "rc", "rr", "xc", "xr", "zc", "zr")


def _tokens(x: Inputs) -> dict[str, torch.Tensor]:
    return {"chosen_tokens": x["nc"], "rejected_tokens": x["nr"]}


def _four(x: Inputs) -> tuple[torch.Tensor, ...]:
    return x["pc"], x["pr"], x["rc"], x["rr"]


# Every loss and every MI-DPO prior, with and without length normalisation.
CASES: dict[str, LossCall] = {
    "dpo": lambda x, b: dpo(*_four(x), beta=b),
    "dpo/norm": lambda x, b: dpo(*_four(x), beta=b, length_normalize=True, **_tokens(x)),
    "mio/norm": lambda x, b: mio(*_four(x), beta=b, **_tokens(x)),
    "mio/sum": lambda x, b: mio(*_four(x), beta=b, length_normalize=False),
    "infopo/norm": lambda x, b: infopo(*_four(x), beta=b, **_tokens(x)),
    "infopo/sum": lambda x, b: infopo(*_four(x), beta=b, length_normalize=False),
    "simpo/norm": lambda x, b: simpo(*_four(x), beta=b, gamma=1.6, **_tokens(x)),
    "simpo/sum": lambda x, b: simpo(*_four(x), beta=b, length_normalize=False),
    "sft/norm": lambda x, b: sft(*_four(x), **_tokens(x)),
    "sft/sum": lambda x, b: sft(*_four(x), length_normalize=False),
    "infonce/sum": lambda x, b: infonce(
        *_four(x),
        beta=b,
        chosen_logps_on_rejected_input=x["xc"],
        rejected_logps_on_rejected_input=x["xr"],
    ),
    "infonce/norm": lambda x, b: infonce(
        *_four(x),
        beta=b,
        chosen_logps_on_rejected_input=x["xc"],
        rejected_logps_on_rejected_input=x["xr"],
        length_normalize=True,
        **_tokens(x),
    ),
    "mi_dpo:ref/norm": lambda x, b: mi_dpo(*_four(x), beta=b, length_normalize=True, **_tokens(x)),
    "mi_dpo:length": lambda x, b: mi_dpo(
        *_four(x), beta=b, prior="length", length_penalty=0.05, **_tokens(x)
    ),
    "mi_dpo:simpo": lambda x, b: mi_dpo(*_four(x), beta=b, prior="simpo", gamma=1.0, **_tokens(x)),
    "mi_dpo:centropy": lambda x, b: mi_dpo(*_four(x), beta=b, prior="centropy", eta=0.5),
    "mi_dpo:tdpo/norm": lambda x, b: mi_dpo(
        *_four(x),
        beta=b,
        prior="tdpo",
        chosen_seq_kl=x["kc"],
        rejected_seq_kl=x["kr"],
        length_normalize=True,
        **_tokens(x),
    ),
    "mi_dpo:dice": lambda x, b: mi_dpo(
        *_four(x), beta=b, prior="dice", prior_chosen_logps=x["zc"], prior_rejected_logps=x["zr"]
    ),
    "mi_dpo:learned/norm": lambda x, b: mi_dpo(
        *_four(x),
        beta=b,
        prior="learned",
        prior_chosen_logps=x["zc"],
        prior_rejected_logps=x["zr"],
        length_normalize=True,
        **_tokens(x),
    ),
}

BETAS = (0.01, 0.1, 1.0, 2.0, 10.0)
EXTREME_LOGPS = (-1e4, -9999.5, -1e-6, 0.0)


@st.composite
def batches(draw: st.DrawFn) -> tuple[dict[str, list[float]], list[int], list[int], float]:
    """A batch of 1-6 examples: log-probs in [-1e4, 0] (extremes drawn often), KL sums in
    [0, 1e4], token counts in [1, 4096], and a beta from 0.01 to 10."""
    size = draw(st.integers(min_value=1, max_value=6))
    logp = st.one_of(
        st.sampled_from(EXTREME_LOGPS),
        st.floats(min_value=-1e4, max_value=0.0, allow_nan=False, width=32),
    )
    flat = draw(st.lists(logp, min_size=len(LOGP_NAMES) * size, max_size=len(LOGP_NAMES) * size))
    columns = {name: flat[i * size : (i + 1) * size] for i, name in enumerate(LOGP_NAMES)}
    kl = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, width=32)
    kls = draw(st.lists(kl, min_size=2 * size, max_size=2 * size))
    columns["kc"], columns["kr"] = kls[:size], kls[size:]
    counts = draw(
        st.lists(st.integers(min_value=1, max_value=4096), min_size=2 * size, max_size=2 * size)
    )
    return columns, counts[:size], counts[size:], draw(st.sampled_from(BETAS))


def _leaf_inputs(columns: dict[str, list[float]], dtype: torch.dtype) -> Inputs:
    return {
        name: torch.tensor(values, dtype=dtype).requires_grad_() for name, values in columns.items()
    }


def _assert_finite_value_and_gradients(
    case: str, call: LossCall, x: Inputs, beta: float, dtype: torch.dtype
) -> None:
    for tensor in x.values():
        tensor.grad = None
    value = call(x, beta)
    assert value.shape == x["pc"].shape, case
    assert torch.isfinite(value).all(), f"{case}: non-finite value {value} (beta={beta})"
    value.sum().backward()
    assert x["pc"].grad is not None, f"{case}: no gradient reached the policy log-probs"
    for name, tensor in x.items():
        if tensor.grad is not None:
            assert tensor.grad.dtype == dtype
            assert torch.isfinite(tensor.grad).all(), f"{case}: non-finite d/d{name} (beta={beta})"


def _assert_all_cases_finite(x: Inputs, beta: float, dtype: torch.dtype) -> None:
    """Check every case's value, then all gradients with one backward pass over their sum
    (a NaN or inf in any case's gradient survives the sum); on failure, find the case."""
    for tensor in x.values():
        tensor.grad = None
    values = {case: call(x, beta) for case, call in CASES.items()}
    for case, value in values.items():
        assert value.shape == x["pc"].shape, case
        assert torch.isfinite(value).all(), f"{case}: non-finite value {value} (beta={beta})"
    torch.stack([value.sum() for value in values.values()]).sum().backward()
    grads_finite = all(torch.isfinite(t.grad).all() for t in x.values() if t.grad is not None)
    if not grads_finite:
        for case, call in CASES.items():
            _assert_finite_value_and_gradients(case, call, x, beta, dtype)
    assert grads_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches())
def test_every_loss_is_finite_in_value_and_gradient(
    dtype: torch.dtype, batch: tuple[dict[str, list[float]], list[int], list[int], float]
) -> None:
    columns, chosen_tokens, rejected_tokens, beta = batch
    x = _leaf_inputs(columns, dtype)
    x["nc"] = torch.tensor(chosen_tokens)
    x["nr"] = torch.tensor(rejected_tokens)
    _assert_all_cases_finite(x, beta, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_worst_corners_are_finite(dtype: torch.dtype) -> None:
    """All 2^8 corners of {-1e4, 0} for the eight log-prob inputs, largest beta, 1 token."""
    corners = torch.cartesian_prod(*[torch.tensor([-1e4, 0.0])] * len(LOGP_NAMES))  # (256, 8)
    columns = {name: corners[:, i].tolist() for i, name in enumerate(LOGP_NAMES)}
    columns["kc"] = [1e4] * len(corners)
    columns["kr"] = [0.0] * len(corners)
    x = _leaf_inputs(columns, dtype)
    x["nc"] = torch.ones(len(corners), dtype=torch.long)
    x["nr"] = torch.ones(len(corners), dtype=torch.long)
    for case, call in CASES.items():
        _assert_finite_value_and_gradients(case, call, x, 10.0, dtype)


def test_half_precision_inputs_are_computed_in_fp32() -> None:
    """bf16 inputs give the fp32 result of the same (rounded) numbers, returned as fp32."""
    values = torch.tensor([-1234.5, -3.25, -8000.0, -0.5], dtype=torch.bfloat16)
    pc, pr, rc, rr = (values.roll(i) for i in range(4))
    half = dpo(pc, pr, rc, rr, beta=0.1)
    full = dpo(pc.float(), pr.float(), rc.float(), rr.float(), beta=0.1)
    assert half.dtype == torch.float32
    assert torch.equal(half, full)


def test_large_margins_give_exact_limits() -> None:
    """D_c - D_r = +-2e4 with beta = 10: DPO's loss is 0 and 2e5 (log(1 + e^-z) -> 0, -z)."""
    low, high = torch.tensor([-1e4]), torch.tensor([0.0])
    assert dpo(high, low, low, high, beta=10.0).item() == 0.0
    assert dpo(low, high, high, low, beta=10.0).item() == pytest.approx(2e5)


# --------------------------------------------------------------------------------------------
# InfoPO's guard on exp(beta D_r)
# --------------------------------------------------------------------------------------------


def _infopo_value_and_rejected_grad(exponent: float, beta: float = 2.0) -> tuple[float, float]:
    """InfoPO with l_theta(y_c) = 0 and beta D_r = ``exponent``; returns (value, d/d l_theta(y_r))."""
    policy_rejected = torch.tensor([exponent / beta], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    value = infopo(zero, policy_rejected, zero, zero, beta=beta, length_normalize=False)
    value.sum().backward()
    assert policy_rejected.grad is not None
    return value.item(), policy_rejected.grad.item()


def test_infopo_is_exact_below_the_guard() -> None:
    """beta D_r = 19 < 20: value e^19 = 1.78482301e8, gradient beta e^19."""
    value, grad = _infopo_value_and_rejected_grad(19.0)
    assert value == pytest.approx(math.exp(19.0), rel=1e-12)
    assert grad == pytest.approx(2.0 * math.exp(19.0), rel=1e-12)


def test_infopo_continues_linearly_above_the_guard() -> None:
    """beta D_r = 25: value e^20 (1 + 25 - 20) = 6 e^20 = 2.91048e9; gradient beta e^20."""
    assert INFOPO_EXP_LINEAR_FROM == 20.0
    value, grad = _infopo_value_and_rejected_grad(25.0)
    assert value == pytest.approx(6.0 * math.exp(20.0), rel=1e-12)
    assert grad == pytest.approx(2.0 * math.exp(20.0), rel=1e-12)


def test_infopo_guard_is_continuous_in_value_and_slope() -> None:
    below_value, below_grad = _infopo_value_and_rejected_grad(20.0 - 1e-7)
    above_value, above_grad = _infopo_value_and_rejected_grad(20.0 + 1e-7)
    at_value, at_grad = _infopo_value_and_rejected_grad(20.0)
    assert at_value == pytest.approx(math.exp(20.0), rel=1e-12)
    assert below_value == pytest.approx(above_value, rel=1e-6)
    assert below_grad == pytest.approx(above_grad, rel=1e-6)
    assert at_grad == pytest.approx(2.0 * math.exp(20.0), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Metrics and DPO-PG at extreme values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_metrics_are_finite_at_extremes(dtype: torch.dtype) -> None:
    low, high = torch.tensor([-1e4, 0.0], dtype=dtype), torch.tensor([0.0, -1e4], dtype=dtype)
    metrics = preference_metrics(high, low, low, high, beta=10.0)
    for name, value in metrics.items():
        assert torch.isfinite(value).all(), name


@settings(max_examples=200, deadline=None)
@given(
    g_w=st.lists(st.floats(-1e3, 1e3, width=32), min_size=3, max_size=3),
    g_l=st.lists(st.floats(-1e3, 1e3, width=32), min_size=3, max_size=3),
)
# |g_l|^2 underflows to 0 in float32 here; the rule must still remove g_l's component.
@example(g_w=[1.0, 0.0, 0.0], g_l=[8.27e-29, 0.0, 0.0])
def test_dpo_pg_is_finite_and_never_a_descent_direction_for_l_l(
    g_w: list[float], g_l: list[float]
) -> None:
    """Thm. H.5: direction . g_l <= 0 up to rounding, i.e. -direction never lowers L(y_l)
    to first order; and the guard keeps g_l = 0 (or denormal) finite."""
    w, v = torch.tensor(g_w), torch.tensor(g_l)
    direction = dpo_pg_direction(w, v)
    assert isinstance(direction, torch.Tensor)
    assert torch.isfinite(direction).all()
    tolerance = 1e-4 * float(w.norm() * v.norm()) + 1e-30
    assert float(torch.dot(direction.double(), v.double())) <= tolerance
