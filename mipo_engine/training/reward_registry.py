"""The online rewards of ``mipo train --reward``: one registry, free of torch.

Each name says what its reward needs (the frozen reference, a judge, gold answers); the reward
functions themselves live in ``training.rewards``. The CLI and the settings check read the
names here, so listing them imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

JudgeReading = Literal["reply", "expected"]
"""How a judge reward reads the judge's score (``training.rewards.JudgeReward``)."""
JUDGE_READINGS: tuple[str, ...] = get_args(JudgeReading)


@dataclass(frozen=True)
class RewardSpec:
    """What a reward name needs: the frozen reference, a judge model, gold answers."""

    name: str
    needs_reference: bool = False
    needs_judge: bool = False
    needs_gold: bool = False
    summary: str = ""


REWARDS: dict[str, RewardSpec] = {
    spec.name: spec
    for spec in (
        RewardSpec("mi", needs_reference=True, summary="pointwise MI under the reference"),
        RewardSpec("judge", needs_judge=True, summary="RLAIF judge score 1-5"),
        RewardSpec(
            "judge+mi", needs_reference=True, needs_judge=True, summary="RLAIF (MI): weighted sum"
        ),
        RewardSpec("verify", needs_gold=True, summary="RLVR: gold answers, verifiable items"),
    )
}


def get_reward_spec(name: str) -> RewardSpec:
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}") from None


REWARD_NAMES = tuple(REWARDS)
