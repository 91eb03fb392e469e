"""Experiment trackers for ``mipo train --report-to``: checked names, run settings as config.

The names are transformers' reporting integrations (tensorboard, wandb, trackio, mlflow,
...); the Trainer builds their callbacks. The run's settings reach every tracker as part of
the model config the integrations record (key ``mipo_train``), next to the Trainer's own
arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mipo_engine.errors import ConfigError

CONFIG_KEY = "mipo_train"


def check_report_to(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` validated: ``none`` alone, or known integrations whose package is installed.

    Raises:
        ConfigError: an unknown name, ``none`` mixed with others, or a tracker not installed.
    """
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    names = tuple(dict.fromkeys(n.strip() for n in names if n.strip())) or ("none",)
    if "none" in names:
        if len(names) > 1:
            raise ConfigError("'none' cannot be combined with trackers", key="report_to")
        return names
    known = sorted(INTEGRATION_TO_CALLBACK)
    installed = set(get_available_reporting_integrations())
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ConfigError(
                f"unknown tracker {name!r}; choose none or one of {', '.join(known)}",
                key="report_to",
            )
        if name not in installed:
            raise ConfigError(
                f"tracker {name!r} is not installed (pip install {name})", key="report_to"
            )
    return names


def trainer_report_to(names: Sequence[str]) -> str | list[str]:
    """The ``report_to`` value transformers expects."""
    return "none" if tuple(names) == ("none",) else list(names)


def attach_run_config(model: Any, settings: dict[str, Any]) -> None:
    """Put the run's settings where every tracker integration records the model config."""
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, CONFIG_KEY, settings)
