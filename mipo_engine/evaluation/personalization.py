"""Personalization metrics of ``mipo eval`` (seed 004 sec. 5.4 and 6, Tables 1, 3-4).

For responses y to held-out prompts x under user contexts c:

- **verifiable adherence**: the share of a context's checkable items (word limits, bullet
  counts, required phrases...; ``mipo_engine.judging.constraints``) the response satisfies;
- **conditional PMI under the base model**: log pi_base(y | x, c) - log pi_base(y | x), the
  pointwise form of the conditional mutual information I(y; c | x) that MIPO maximises
  (seed 004 sec. 3-4). Positive values mean the response is more likely *because of* the
  context; the base model (without any adapter) is the fixed yardstick, so trained and
  untrained models are measured on the same scale;
- **diversity**: self-BLEU-4 (seed 004 Tables 3-4; lower = more diverse), see ``diversity``;
- **judge win rate**: rubric judge scores against reference responses, ties counted as wins
  (seed 004 sec. 5.4); see ``mipo_engine.stages.eval``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mipo_engine.backends.base import Backend
from mipo_engine.chat import build_messages
from mipo_engine.evaluation.diversity import self_bleu
from mipo_engine.judging.constraints import constraint_adherence


def adherence_counts(context_items: Sequence[str] | None, response: str) -> tuple[int, int]:
    """(verifiable items in the context, items the response satisfies)."""
    outcomes = constraint_adherence(context_items, response)
    return len(outcomes), sum(outcomes.values())


def conditional_logps(
    base: Backend,
    prompts: Sequence[str],
    contexts: Sequence[str],
    responses: Sequence[str],
) -> list[tuple[float, float]]:
    """(log pi_base(y | x, c), log pi_base(y | x)) per response, summed over response tokens.

    Both conditionings are rendered by the base backend's chat template exactly as
    ``mipo generate`` renders the chosen and missing-context inputs, and scored with the
    project's one tokenisation (``encode_pair``, end-of-sequence token included).
    """
    with_context = [
        base.render(build_messages(prompt, context))
        for prompt, context in zip(prompts, contexts, strict=True)
    ]
    without_context = [base.render(build_messages(prompt, None)) for prompt in prompts]
    conditioned = base.score(with_context, responses)
    marginal = base.score(without_context, responses)
    return [(a.logp, b.logp) for a, b in zip(conditioned, marginal, strict=True)]


def diversity(
    responses: Sequence[str], item_ids: Sequence[str], samples: Sequence[int]
) -> dict[str, float | None]:
    """Self-BLEU-4 of a model's personalization responses, two ways.

    - ``across_prompts``: over the first sample of every prompt, each scored against the
      responses to all *other* prompts: how much the model says the same thing whatever it
      is asked or told (the reading of Texygen's self-BLEU over a task's generations, as in
      seed 004 Tables 3-4). Needs at least 2 prompts.
    - ``within_prompt``: when several samples per prompt were drawn (``--samples``), the mean
      over prompts of the self-BLEU among that prompt's samples; None otherwise.
    """
    if not len(responses) == len(item_ids) == len(samples):
        raise ValueError("responses, item_ids and samples must have the same length")
    first = [text for text, sample in zip(responses, samples, strict=True) if sample == 0]
    across = self_bleu(first, 4) if len(first) >= 2 else None
    grouped: dict[str, list[str]] = {}
    for text, item_id in zip(responses, item_ids, strict=True):
        grouped.setdefault(item_id, []).append(text)
    within_scores = [self_bleu(texts, 4) for texts in grouped.values() if len(texts) >= 2]
    within = sum(within_scores) / len(within_scores) if within_scores else None
    return {"across_prompts": across, "within_prompt": within}
