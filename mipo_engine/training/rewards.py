"""Rewards for online training (``mipo train --method grpo|rloo``): one registry of names.

Each reward maps (prompt x, context c, completion y) to a float, for a batch at once:

- ``mi``: conditional pointwise mutual information under the frozen reference model (seed 004
  sec. 3-4), log pi_ref(y | x, c) - log pi_ref(y | x); for a row without a context,
  log pi_ref(y | x) - log pi_ref(y | x') with x' another prompt of the set (``alt_prompt``,
  picked per row from the seed). Scored by the backend's ``score`` (hf: completions of one
  prompt share that prompt's forward pass, see ``HFBackend.score``).
- ``judge`` (RLAIF, seed 004 sec. 5.2 and App. C): a judge model rates how well y is tailored
  to the user's stated preferences, 1-5 (``prompts/judge_rlaif.txt``). Backends with
  constrained decoding (``generate_structured``) answer one of "1".."5"; others are read with
  ``parse_score``, and an unreadable reply is asked again up to ``retries`` times. A reply that
  stays unreadable gives ``None`` (the trainer leaves that completion out of this reward) and
  is counted in ``unparsed`` and kept in ``unparsed_replies``: never a silent 0. With
  ``reading="expected"`` nothing is generated: the reward is the judge's expected score,
  sum_k k * p(k), with p(k) the judge's probability that its whole reply is "k" (the digit,
  then the end of its turn; ``Backend.score``), renormalised over "1".."5". It is never
  unreadable, and it ranks replies that a greedy reading scores alike.
- ``judge+mi`` (RLAIF (MI)): w_judge * judge + w_mi * mi.
- ``verify`` (RLVR): 1.0 when the completion's final answer equals the gold answer (math: the
  number after ``####`` or the last number; mcq: the stated letter), 0.0 otherwise; for
  personalization rows, the share of the context's verifiable items the completion satisfies
  (``judging.constraints``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mipo_engine.backends.base import Backend, GenerationRequest, SamplingConfig
from mipo_engine.chat import build_messages
from mipo_engine.evaluation.stats import letter_probabilities
from mipo_engine.evaluation.tasks import grade_math, grade_mcq
from mipo_engine.judging.constraints import constraint_adherence
from mipo_engine.judging.scores import parse_score
from mipo_engine.templates import render
from mipo_engine.training.reward_registry import (  # noqa: F401
    JUDGE_READINGS,
    REWARDS,
    JudgeReading,
    RewardSpec,
    get_reward_spec,
)

SCORE_CHOICES = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class RewardItem:
    """One completion to reward, with what its prompt row knows."""

    prompt: str
    context: str | None
    completion: str
    task: str = "general"
    alt_prompt: str | None = None
    """x' for the MI reward of a row without a context."""
    answer: str | None = None
    choices: Sequence[str] | None = None
    context_items: Sequence[str] | None = None


class Reward(ABC):
    """A batched reward: ``reward(items)`` -> one float (or None: not available) per item."""

    name: str = "reward"

    @abstractmethod
    def __call__(self, items: Sequence[RewardItem]) -> list[float | None]: ...

    def score(self, prompt: str, context: str | None, completion: str, **row: Any) -> float | None:
        """The reward of one completion (``row``: the other ``RewardItem`` fields)."""
        return self([RewardItem(prompt, context, completion, **row)])[0]


def _has_context(item: RewardItem) -> bool:
    return bool(item.context and item.context.strip())


class MIReward(Reward):
    """log pi_ref(y | x, c) - log pi_ref(y | x), or log pi_ref(y | x) - log pi_ref(y | x')."""

    name = "mi"

    def __init__(self, reference: Backend, *, max_length: int | None = None) -> None:
        self.reference = reference
        self.max_length = max_length

    def conditionings(self, item: RewardItem) -> tuple[str, str]:
        """(rendered conditioning of the first term, of the second term)."""
        render_chat = self.reference.render
        if _has_context(item):
            with_context = render_chat(build_messages(item.prompt, item.context))
            return with_context, render_chat(build_messages(item.prompt))
        if not item.alt_prompt:
            raise ValueError(
                f"the mi reward of a row without a context needs another prompt x' "
                f"(alt_prompt); none for prompt {item.prompt[:60]!r}"
            )
        return render_chat(build_messages(item.prompt)), render_chat(
            build_messages(item.alt_prompt)
        )

    def __call__(self, items: Sequence[RewardItem]) -> list[float | None]:
        firsts, seconds = zip(*(self.conditionings(item) for item in items), strict=True)
        responses = [item.completion for item in items]
        options = {"max_length": self.max_length} if self.max_length else {}
        # One call for both terms: completions sharing a conditioning share its forward pass.
        scored = self.reference.score([*firsts, *seconds], responses * 2, **options)
        count = len(items)
        return [scored[i].logp - scored[count + i].logp for i in range(count)]


def rlaif_messages(item: RewardItem) -> list[dict[str, str]]:
    """The RLAIF judge question for one completion (the prompt the ``judge`` stage uses)."""
    items = [i for i in (item.context_items or []) if i and i.strip()]
    context = "\n".join(f"- {i}" for i in items) if items else (item.context or "").strip()
    content = render(
        "judge_rlaif.txt",
        context=context or "(none stated)",
        prompt=item.prompt,
        response=item.completion,
    )
    return [{"role": "user", "content": content}]


@dataclass
class JudgeReward(Reward):
    """A 1-5 judge score per completion: the greedy reply's score, or the expected score
    (``reading``; see the module docstring)."""

    judge: Backend
    retries: int = 1
    max_new_tokens: int = 256
    reading: JudgeReading = "reply"
    unparsed: int = 0
    unparsed_replies: list[dict[str, str]] = field(default_factory=list)
    name: str = "judge"

    def __post_init__(self) -> None:
        if self.reading not in JUDGE_READINGS:
            raise ValueError(
                f"unknown judge reading {self.reading!r}; choose one of {', '.join(JUDGE_READINGS)}"
            )
        if self.reading == "expected" and type(self.judge).score is Backend.score:
            raise ValueError(
                f"the expected judge reading needs the judge's log-probabilities, which the "
                f"{self.judge.name} backend does not give; use --judge-reading reply"
            )

    def expected_scores(self, items: Sequence[RewardItem]) -> list[float]:
        """sum_k k * p(k), p(k): the judge's reply being exactly "k", renormalised over 1-5."""
        questions = [self.judge.render(rlaif_messages(item)) for item in items]
        count = len(SCORE_CHOICES)
        scored = self.judge.score(
            [q for q in questions for _ in SCORE_CHOICES], list(SCORE_CHOICES) * len(items)
        )
        scores = []
        for start in range(0, len(scored), count):
            logps = [result.logp for result in scored[start : start + count]]
            probs = letter_probabilities(dict(zip(SCORE_CHOICES, logps, strict=True)))
            scores.append(sum(int(choice) * p for choice, p in probs.items()))
        return scores

    def _ask(self, requests: list[GenerationRequest]) -> list[str]:
        sampling = SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=0.0)
        if self.judge.supports_structured:
            completions = self.judge.generate_structured(requests, sampling, SCORE_CHOICES)
        else:
            completions = self.judge.generate(requests, sampling)
        return [c.text if c.finish_reason != "error" else "" for c in completions]

    def __call__(self, items: Sequence[RewardItem]) -> list[float | None]:
        if self.reading == "expected":
            return list(self.expected_scores(items))
        scores: list[float | None] = [None] * len(items)
        replies = [""] * len(items)
        todo = list(range(len(items)))
        for _attempt in range(1 + self.retries):
            if not todo:
                break
            requests = [GenerationRequest(f"judge-{i}", rlaif_messages(items[i]), 0) for i in todo]
            for index, text in zip(todo, self._ask(requests), strict=True):
                replies[index] = text
                value = parse_score(text)
                if value is not None:
                    scores[index] = float(value)
            todo = [i for i in todo if scores[i] is None]
        for index in todo:
            self.unparsed += 1
            self.unparsed_replies.append(
                {"prompt": items[index].prompt, "reply": replies[index][:2000]}
            )
        return scores


class WeightedReward(Reward):
    """sum_k w_k r_k; None where any part is None."""

    def __init__(self, name: str, parts: Sequence[tuple[float, Reward]]) -> None:
        self.name = name
        self.parts = list(parts)

    def __call__(self, items: Sequence[RewardItem]) -> list[float | None]:
        columns = [(weight, reward(items)) for weight, reward in self.parts]
        totals: list[float | None] = []
        for i in range(len(items)):
            values = [(w, column[i]) for w, column in columns]
            if any(v is None for _, v in values):
                totals.append(None)
            else:
                totals.append(sum(w * v for w, v in values))  # type: ignore[operator]
        return totals


class VerifyReward(Reward):
    """Gold-answer correctness (math, mcq) or verifiable-item adherence (personalization)."""

    name = "verify"

    @staticmethod
    def one(item: RewardItem) -> float | None:
        if item.task == "math" and item.answer is not None:
            return float(grade_math(item.completion, item.answer)[1])
        if item.task == "mcq" and item.answer is not None and item.choices:
            return float(grade_mcq(item.completion, item.answer, list(item.choices))[1])
        outcomes = constraint_adherence(item.context_items, item.completion)
        if outcomes:
            return sum(outcomes.values()) / len(outcomes)
        return None

    def __call__(self, items: Sequence[RewardItem]) -> list[float | None]:
        return [self.one(item) for item in items]


def verifiable(row: dict[str, Any]) -> bool:
    """True when ``verify`` can reward completions of this prompts row."""
    task = row.get("task")
    if task == "math":
        return row.get("answer") not in (None, "")
    if task == "mcq":
        return row.get("answer") not in (None, "") and bool(row.get("choices"))
    return bool(constraint_adherence(row.get("context_items"), ""))


def build_reward(
    name: str,
    *,
    reference: Backend | None = None,
    judge: Backend | None = None,
    judge_weight: float = 1.0,
    mi_weight: float = 1.0,
    max_length: int | None = None,
    judge_retries: int = 1,
    judge_max_new_tokens: int = 256,
    judge_reading: JudgeReading = "reply",
) -> Reward:
    """The reward called ``name`` over the given backends."""
    spec = get_reward_spec(name)
    if spec.needs_reference and reference is None:
        raise ValueError(f"the {name} reward needs the reference backend")
    if spec.needs_judge and judge is None:
        raise ValueError(f"the {name} reward needs a judge backend")
    if name == "mi":
        return MIReward(reference, max_length=max_length)  # type: ignore[arg-type]
    if spec.needs_judge:
        judge_reward = JudgeReward(
            judge,  # type: ignore[arg-type]
            retries=judge_retries,
            max_new_tokens=judge_max_new_tokens,
            reading=judge_reading,
        )
        if name == "judge":
            return judge_reward
        mi = MIReward(reference, max_length=max_length)  # type: ignore[arg-type]
        return WeightedReward(name, [(judge_weight, judge_reward), (mi_weight, mi)])
    return VerifyReward()
