"""Online training on TRL's trainers: the prompt set, the reward adapter and the trainer.

``mipo train --method grpo|rloo`` samples completions from the policy for each prompt row,
rewards them (``training.rewards``) and updates the policy with TRL's ``GRPOTrainer``
(group-normalised advantages) or ``RLOOTrainer`` (leave-one-out baseline). The installed
TRL (1.x) no longer ships a PPO trainer; ``ppo`` is therefore refused with a pointer to these
two, which seed 004's comparison accepts as "online RL with the same reward".

The policy is conditioned like MIPO's chosen responses: the user turn holds the request and,
when the row has one, the user's context (``chat.build_messages``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine.backends.registry import create_backend
from mipo_engine.training.method_registry import METHOD_NAMES, METHODS, OnlineMethod  # noqa: F401
from mipo_engine.training.rewards import REWARDS, Reward, RewardItem, build_reward


def method_unavailable(name: str) -> str | None:
    """Why ``name`` cannot run with the installed TRL, or None when it can."""
    method = METHODS[name]
    if method.trainer is not None:
        return None
    import trl

    if hasattr(trl, "PPOTrainer"):
        return (
            f"this TRL ({trl.__version__}) has a PPOTrainer, but its value-model interface is "
            "not wired here; use --method grpo or --method rloo"
        )
    return (
        f"the installed TRL ({trl.__version__}) ships no PPO trainer (it was removed from TRL); "
        "use --method grpo or --method rloo, online RL with the same reward"
    )


def alt_prompts(rows: list[dict[str, Any]], seed: int) -> list[str | None]:
    """For each row without a context, another row's prompt x' (seeded by the row id)."""
    prompts = [row["prompt"] for row in rows]
    picked: list[str | None] = []
    for index, row in enumerate(rows):
        others = [i for i, text in enumerate(prompts) if i != index and text != row["prompt"]]
        if (row.get("context") and str(row["context"]).strip()) or not others:
            picked.append(None)
            continue
        rng = random.Random(f"{seed}:{row['id']}:alt-prompt")
        picked.append(prompts[others[rng.randrange(len(others))]])
    return picked


def prompt_records(frame: pl.DataFrame, seed: int) -> list[dict[str, Any]]:
    """The trainer's rows: ``prompt`` as chat messages plus the columns rewards read."""
    from mipo_engine.chat import build_messages

    rows = frame.to_dicts()
    alternatives = alt_prompts(rows, seed)
    return [
        {
            "prompt": build_messages(row["prompt"], row.get("context")),
            "row_id": row["id"],
            "user_prompt": row["prompt"],
            "context": row.get("context"),
            "context_items": row.get("context_items"),
            "task": row.get("task") or "general",
            "answer": row.get("answer"),
            "choices": row.get("choices"),
            "alt_prompt": alt,
        }
        for row, alt in zip(rows, alternatives, strict=True)
    ]


def completion_text(completion: Any) -> str:
    """The text of a TRL completion (a string, or a list of assistant messages)."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion)


class TRLRewardFunction:
    """Adapts a ``Reward`` to TRL's reward-function call (prompts, completions, row columns).

    Logs the judge's unreadable replies as ``rewards/<name>/unparsed`` (a count per batch).
    """

    def __init__(self, reward: Reward) -> None:
        self.reward = reward
        self.__name__ = reward.name  # TRL names the reward's metrics after the function

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[Any]:
        items = [
            RewardItem(
                prompt=columns["user_prompt"][i],
                context=columns["context"][i],
                completion=completion_text(completion),
                task=columns["task"][i],
                alt_prompt=columns["alt_prompt"][i],
                answer=columns["answer"][i],
                choices=columns["choices"][i],
                context_items=columns["context_items"][i],
            )
            for i, completion in enumerate(completions)
        ]
        before = unparsed_count(self.reward)
        values = self.reward(items)
        log_metric = columns.get("log_metric")
        if log_metric is not None and has_judge(self.reward):
            log_metric(f"rewards/{self.reward.name}/unparsed", unparsed_count(self.reward) - before)
        return values


def _judges(reward: Reward) -> list[Any]:
    parts = getattr(reward, "parts", None)
    if parts is not None:
        return [r for _, r in parts if hasattr(r, "unparsed")]
    return [reward] if hasattr(reward, "unparsed") else []


def has_judge(reward: Reward) -> bool:
    return bool(_judges(reward))


def unparsed_count(reward: Reward) -> int:
    return sum(judge.unparsed for judge in _judges(reward))


def unparsed_replies(reward: Reward) -> list[dict[str, str]]:
    return [reply for judge in _judges(reward) for reply in judge.unparsed_replies]


def save_unparsed_replies(reward: Reward, path: Path) -> int:
    """Append the judge replies this run could not read to ``path`` (JSON lines, kept for
    inspection); return how many there were."""
    replies = unparsed_replies(reward)
    if replies:
        with open(path, "a", encoding="utf-8") as handle:
            for reply in replies:
                handle.write(json.dumps(reply) + "\n")
    return len(replies)


def online_arguments(config: Any, base: dict[str, Any]) -> Any:
    """``GRPOConfig``/``RLOOConfig`` from the shared Trainer arguments and a ``TrainConfig``'s
    sampling settings (``num_generations``, ``max_completion_length``, ``temperature``,
    ``kl_coef``)."""
    import trl

    config_class = trl.GRPOConfig if config.method == "grpo" else trl.RLOOConfig
    return config_class(
        **base,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.kl_coef,
        disable_dropout=True,
        shuffle_dataset=True,
        log_completions=False,
        # Sampling reuses keys and values; the policy was loaded with the cache off for the
        # training forward passes, and transformers' generate would otherwise follow that.
        generation_kwargs={"use_cache": True},
    )


def build_online_trainer(
    method: str,
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    reward: Reward,
    args: Any,
    callbacks: list[Any],
) -> Any:
    import trl
    from datasets import Dataset

    trainer_class = getattr(trl, METHODS[method].trainer or "")
    tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    return trainer_class(
        model=model,
        reward_funcs=[TRLRewardFunction(reward)],
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def reward_backends(config: Any, *, cuda: bool) -> tuple[Any, Any]:
    """(frozen reference backend or None, judge backend or None) for ``config.reward``.

    The reference is the starting model, served by the hf backend; the judge is the same
    backend (``--judge-model reference``), another local model, or an OpenAI-compatible
    server (``--judge-base-url``).
    """
    spec = REWARDS[config.reward or ""]
    device = "cuda" if cuda else "cpu"
    judge_is_reference = config.judge_model == "reference" and not config.judge_base_url
    reference = None
    if spec.needs_reference or (spec.needs_judge and judge_is_reference):
        reference = create_backend(
            "hf", config.model, device=device, dtype="auto", show_progress=False
        )
    judge = None
    if spec.needs_judge and config.judge_base_url:
        judge = create_backend("openai", config.judge_model, base_url=config.judge_base_url)
    elif spec.needs_judge:
        judge = (
            reference
            if judge_is_reference
            else create_backend("hf", config.judge_model, device=device, show_progress=False)
        )
    return (reference if spec.needs_reference else None), judge


def online_reward(config: Any, *, cuda: bool) -> tuple[Reward, list[Any]]:
    """The reward ``config.reward`` names, and the backends it holds (close them after
    training)."""
    reference, judge = reward_backends(config, cuda=cuda)
    reward = build_reward(
        config.reward or "",
        reference=reference,
        judge=judge,
        judge_weight=config.judge_weight,
        mi_weight=config.mi_weight,
        max_length=config.max_length,
        judge_max_new_tokens=config.judge_max_new_tokens,
        judge_reading=config.judge_reading,
    )
    return reward, list({id(b): b for b in (reference, judge) if b is not None}.values())
