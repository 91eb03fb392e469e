"""Which loss of the registry, with which hyperparameters: validated once, before training.

``LossSettings.resolve`` fills the paper defaults from ``loss_registry.LOSSES`` and rejects
options the chosen loss (and MI-DPO prior) does not use, with errors that name the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mipo_engine.errors import ConfigError
from mipo_engine.training.loss_registry import LOSSES, get_loss, loss_needs_reference
from mipo_engine.training.priors import get_prior

# Scalar options and the (loss, prior) combinations that use them.
_SCALAR_USERS = {
    "gamma": "--loss simpo, or --loss mi_dpo --prior simpo",
    "eta": "--loss mi_dpo --prior centropy",
    "length_penalty": "--loss mi_dpo --prior length",
}
_UNSUPPORTED_PRIORS = {
    "learned": "the learned prior needs a trainable prior model from a restricted family "
    "(seed 003 sec. 5.2), which mipo train does not build",
}


@dataclass(frozen=True, kw_only=True)
class LossSettings:
    """A validated choice of loss and its hyperparameters (build with ``resolve``)."""

    loss: str
    """A name of ``loss_registry.LOSSES``."""
    beta: float
    """The loss temperature (MI-DPO: seed 003's alpha)."""
    length_normalize: bool
    """Average log-probs over response tokens before the loss (DESIGN.md section 4)."""
    prior: str | None = None
    """MI-DPO's prior zeta (``priors.PRIORS``); only with ``loss="mi_dpo"``."""
    gamma: float | None = None
    """SimPO's target margin (``simpo`` loss, or MI-DPO's ``simpo`` prior)."""
    eta: float | None = None
    """The ``centropy`` prior's policy exponent."""
    length_penalty: float | None = None
    """The ``length`` prior's R-DPO coefficient."""

    @classmethod
    def resolve(
        cls,
        loss: str,
        *,
        beta: float | None = None,
        length_normalize: bool | None = None,
        prior: str | None = None,
        gamma: float | None = None,
        eta: float | None = None,
        length_penalty: float | None = None,
    ) -> LossSettings:
        """Fill paper defaults from the registry and check every option is used and valid."""
        try:
            spec = get_loss(loss)
        except ConfigError as error:
            raise ConfigError(str(error), key="loss") from None
        prior = _resolve_prior(loss, prior)
        scalars = {"gamma": gamma, "eta": eta, "length_penalty": length_penalty}
        if loss == "simpo" and gamma is None:
            gamma = float(spec.hyperparameters["gamma"])  # type: ignore[arg-type]
            scalars["gamma"] = gamma
        needed = _needed_scalars(loss, prior)
        for name, value in scalars.items():
            if value is None and name in needed:
                raise ConfigError(
                    f"--{name.replace('_', '-')} is required by {_SCALAR_USERS[name]}", key=name
                )
            if value is not None and name not in needed:
                raise ConfigError(
                    f"--{name.replace('_', '-')} is only used by {_SCALAR_USERS[name]}; "
                    f"remove it for --loss {loss}" + (f" --prior {prior}" if prior else ""),
                    key=name,
                )
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"must be a finite number, got {value}", key=name)
        beta = spec.default_beta if beta is None else beta
        if not (math.isfinite(beta) and beta > 0):
            raise ConfigError(f"beta must be a finite number > 0, got {beta}", key="beta")
        if length_normalize is None:
            length_normalize = spec.length_normalize_default
        return cls(
            loss=loss,
            beta=float(beta),
            length_normalize=bool(length_normalize),
            prior=prior,
            gamma=scalars["gamma"],
            eta=eta,
            length_penalty=length_penalty,
        )

    @property
    def needs_reference(self) -> bool:
        """Reference log-probs enter the loss (from ``scores`` or computed before training)."""
        return loss_needs_reference(self.loss, prior=self.prior)

    @property
    def needs_prior_scores(self) -> bool:
        """MI-DPO's DICE prior: the previous round's policy log-probs (``--prior-scores``)."""
        return self.loss == "mi_dpo" and self.prior == "dice"

    @property
    def needs_cross_inputs(self) -> bool:
        """InfoNCE (seed 004 eq. 14) also scores both responses under ``rejected_input``."""
        return "chosen_logps_on_rejected_input" in LOSSES[self.loss].extra_inputs

    @property
    def needs_reference_logits(self) -> bool:
        """TDPO's prior needs the reference's whole next-token distributions at every step."""
        return self.loss == "mi_dpo" and self.prior == "tdpo"

    @property
    def projected_gradient(self) -> bool:
        """DPO-PG: the update is a gradient rule, not the gradient of the logged loss."""
        return LOSSES[self.loss].projected_gradient

    def describe(self) -> dict[str, Any]:
        spec = LOSSES[self.loss]
        return {
            "loss": self.loss,
            "formula": spec.formula,
            "citation": spec.citation,
            "beta": self.beta,
            "length_normalize": self.length_normalize,
            "prior": self.prior,
            "gamma": self.gamma,
            "eta": self.eta,
            "length_penalty": self.length_penalty,
        }


def _resolve_prior(loss: str, prior: str | None) -> str | None:
    if loss != "mi_dpo":
        if prior is not None:
            raise ConfigError(f"--prior applies only to --loss mi_dpo, not {loss}", key="prior")
        return None
    prior = prior or "ref"
    try:
        get_prior(prior)
    except ValueError as error:
        raise ConfigError(str(error), key="prior") from None
    if prior in _UNSUPPORTED_PRIORS:
        raise ConfigError(
            f"prior {prior!r} is not supported: {_UNSUPPORTED_PRIORS[prior]}", key="prior"
        )
    return prior


def _needed_scalars(loss: str, prior: str | None) -> set[str]:
    if loss == "simpo":
        return {"gamma"}
    return {
        "simpo": {"gamma"},
        "centropy": {"eta"},
        "length": {"length_penalty"},
    }.get(prior or "", set())
