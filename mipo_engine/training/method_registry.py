"""The training methods of ``mipo train --method``: one registry, free of torch.

``offline`` trains on preference pairs with a loss of ``loss_registry``; the online methods
sample completions and reward them on TRL's trainers (``training.online``). The CLI, the
settings check and the docs read the names here, so listing them imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OnlineMethod:
    name: str
    trainer: str | None
    """Class name in ``trl``; None: not available in the installed TRL."""
    summary: str


METHODS: dict[str, OnlineMethod] = {
    method.name: method
    for method in (
        OnlineMethod("grpo", "GRPOTrainer", "GRPO: group-normalised advantages"),
        OnlineMethod("rloo", "RLOOTrainer", "RLOO: leave-one-out baseline"),
        OnlineMethod("ppo", None, "PPO with a value model"),
    )
}
# `offline` is the preference-loss trainer of `training.trainer` (mipo train's default).
METHOD_NAMES = ("offline", *METHODS)
