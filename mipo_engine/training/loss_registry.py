"""The single registry of loss names: their paper settings and citations, without torch.

The CLI, configs and docs read names and defaults from ``LOSSES`` without loading torch; each
entry names its function by dotted path (``fn``), imported the first time it is used, as
torchtune's configs name their components.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any

from mipo_engine.errors import ConfigError

__all__ = [
    "LOSSES",
    "LossSpec",
    "UnknownLossError",
    "get_loss",
    "loss_needs_reference",
    "reference_free_losses",
    "signature_defaults",
]

LossFn = Callable[..., Any]

_PACKAGE = "mipo_engine.training.losses"


class UnknownLossError(ConfigError, ValueError):
    """A loss name that is not in ``LOSSES``; the message lists the valid names."""


@cache
def _load(path: str) -> Callable[..., Any]:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class LossSpec:
    """One entry of the loss registry, for the trainer, the CLI, configs and docs.

    Attributes:
        name: the registry key (``mipo train --loss NAME``).
        function: dotted path of the per-example loss (``fn``). For ``dpo_pg`` it is the DPO
            loss, logged to show that the projected update decreases it (seed 002
            Cor. H.5.1); it is not back-propagated.
        needs_reference: whether reference log-probs must be supplied (for ``mi_dpo``, with
            the default prior; see ``loss_needs_reference``).
        citation: seed and equation.
        formula: the per-example loss in plain text.
        default_beta: the beta to use when the user gives none (from the paper's grid).
        length_normalize_default: whether the paper averages log-probs over tokens.
        extra_inputs: tensor keyword inputs the trainer must supply beyond the four log-prob
            tensors and the token counts (for ``mi_dpo`` they depend on the prior:
            ``priors.PRIORS[prior].inputs``).
        hyperparameters: other scalar keyword options and their defaults.
        rule: for update rules that are not gradients of ``fn`` (``dpo_pg``), the dotted path
            of the function combining per-side NLL gradients (``gradient_rule``); None for
            ordinary losses.
    """

    name: str
    function: str
    needs_reference: bool
    citation: str
    formula: str
    default_beta: float
    length_normalize_default: bool
    extra_inputs: tuple[str, ...] = ()
    hyperparameters: Mapping[str, object] = field(default_factory=dict)
    rule: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))

    @property
    def fn(self) -> LossFn:
        """The per-example loss function (imports torch on first use)."""
        return _load(self.function)

    @property
    def gradient_rule(self) -> Callable[..., object] | None:
        """The gradient rule of ``rule``, or None for ordinary losses."""
        return None if self.rule is None else _load(self.rule)

    @property
    def projected_gradient(self) -> bool:
        """The update is a gradient rule, not the gradient of the logged loss (DPO-PG)."""
        return self.rule is not None


LOSSES: Mapping[str, LossSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            LossSpec(
                name="dpo",
                function=f"{_PACKAGE}.bradley_terry.dpo",
                needs_reference=True,
                citation="seed 004 eq. 5",
                formula="-log sigmoid(beta (D_c - D_r))",
                default_beta=0.1,
                length_normalize_default=False,
            ),
            LossSpec(
                name="mio",
                function=f"{_PACKAGE}.mutual_information.mio",
                needs_reference=True,
                citation="seed 000 eq. 15, sec. 3.3",
                formula="s(-beta D_c) + 1/2 s(beta D_c) + 1/2 s(beta D_r)",
                default_beta=5.0,
                length_normalize_default=True,
            ),
            LossSpec(
                name="infopo",
                function=f"{_PACKAGE}.mutual_information.infopo",
                needs_reference=True,
                citation="seed 001 eq. 13",
                formula="-beta l_theta(y_c) + exp(beta D_r)",
                default_beta=1.0,
                length_normalize_default=True,
            ),
            LossSpec(
                name="simpo",
                function=f"{_PACKAGE}.bradley_terry.simpo",
                needs_reference=False,
                citation="seed 003 sec. 4 (SimPO)",
                formula="-log sigmoid(beta (mean l_theta(y_c) - mean l_theta(y_r)) - gamma)",
                default_beta=2.0,
                length_normalize_default=True,
                hyperparameters={"gamma": 1.0},
            ),
            LossSpec(
                name="mi_dpo",
                function=f"{_PACKAGE}.bradley_terry.mi_dpo",
                needs_reference=True,
                citation="seed 003 sec. 3.2 (J_MI-DPO), sec. 4, App. B",
                formula="-log sigmoid(beta [(l_theta(y_c) - log zeta(y_c)) - (l_theta(y_r) - log zeta(y_r))])",
                default_beta=0.1,
                length_normalize_default=False,
                hyperparameters={
                    "prior": "ref",
                    "length_penalty": None,
                    "gamma": None,
                    "eta": None,
                },
            ),
            LossSpec(
                name="infonce",
                function=f"{_PACKAGE}.mutual_information.infonce",
                needs_reference=False,
                citation="seed 004 eq. 14",
                formula="1/2 [s(beta (b - a)) + s(beta (u - v))] - log 2 (cross-context scores)",
                default_beta=1.0,
                length_normalize_default=False,
                extra_inputs=("chosen_logps_on_rejected_input", "rejected_logps_on_rejected_input"),
            ),
            LossSpec(
                name="sft",
                function=f"{_PACKAGE}.likelihood.sft",
                needs_reference=False,
                citation="seed 004 eq. 3",
                formula="-l_theta(y_c) / |y_c|",
                default_beta=1.0,
                length_normalize_default=True,
            ),
            LossSpec(
                name="dpo_pg",
                function=f"{_PACKAGE}.bradley_terry.dpo",
                needs_reference=True,
                citation="seed 002 App. H (Def. H.1)",
                formula="update g_w - max(0, g_w . g_l) / |g_l|^2 g_l, g = grad of batch NLL",
                default_beta=0.1,
                length_normalize_default=False,
                rule=f"{_PACKAGE}.projected_gradient.dpo_pg_direction",
            ),
        )
    }
)
"""The single registry of loss names; CLI choices, config validation and docs read it."""


def get_loss(name: str) -> LossSpec:
    """Return the registry entry for ``name``.

    Raises:
        UnknownLossError (a ValueError and a ConfigError): the name is not registered; the
            message lists the valid names.
    """
    try:
        return LOSSES[name]
    except KeyError:
        valid = ", ".join(LOSSES)
        raise UnknownLossError(f"unknown loss {name!r}; choose one of: {valid}") from None


def reference_free_losses() -> list[str]:
    """Names of the losses that read no reference log-probs."""
    return [name for name, spec in LOSSES.items() if not spec.needs_reference]


def loss_needs_reference(name: str, *, prior: str | None = None) -> bool:
    """Whether ``name`` (with ``prior`` for ``mi_dpo``) needs reference log-probs."""
    spec = get_loss(name)
    if name == "mi_dpo" and prior is not None:
        from mipo_engine.training.priors import get_prior  # the priors carry torch code

        return get_prior(prior).needs_reference
    return spec.needs_reference


def signature_defaults(fn: LossFn) -> dict[str, object]:
    """Keyword-only defaults of a loss function (the registry's defaults are checked against
    these in the tests, so the two cannot drift apart)."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(fn).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        and parameter.default is not inspect.Parameter.empty
    }
