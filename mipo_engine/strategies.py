"""Negative strategies: how each preference pair's two responses are conditioned.

Seed 004 section 4, Algorithm 1 and Table 5. For every prompt row and pair index k:

- ``missing-context``: chosen ~ pi(.|x, c), rejected ~ pi(.|x).
- ``random-context``: rejected ~ pi(.|x, c'), c' != c drawn from the contexts eligible for x
  (the row's ``context_group``; rows without a group share the pool of ungrouped contexts).
- ``random-prompt``: chosen ~ pi(.|x), rejected ~ pi(.|x'), x' != x (contexts unused).
- ``prompt``: (x, c) taken together as one prompt unit; rejected ~ pi(.|x', c') for another unit.
- ``both``: two pairs per prompt row and pair index, one ``missing-context`` and one
  ``random-context``, sharing the chosen sample (same conditioning, same seed). Each pair is
  exactly the pair its own strategy plans alone (same seed, same drawn context), under the id
  ``<id>/missing-context`` or ``<id>/random-context``; its row records its own strategy.

Every random pick comes from a generator seeded by the global seed and the pair id, so the
plan is the same on every run and for every subset of rows.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mipo_engine.artifacts.run import derive_seed
from mipo_engine.artifacts.schemas import STRATEGIES
from mipo_engine.chat import Message, build_messages
from mipo_engine.errors import InputError

NO_NEGATIVE_SOURCE = "none"
BOTH = "both"
BOTH_PARTS = ("missing-context", "random-context")
GENERATION_STRATEGIES = (*STRATEGIES, BOTH)


@dataclass(frozen=True)
class PairPlan:
    id: str
    prompt_id: str
    prompt: str
    context: str | None
    strategy: str
    negative_source: str
    chosen_messages: list[Message]
    rejected_messages: list[Message]
    seed: int

    @property
    def chosen_seed(self) -> int:
        return derive_seed(self.seed, "chosen")

    @property
    def rejected_seed(self) -> int:
        return derive_seed(self.seed, "rejected")


def _has_context(row: dict[str, Any]) -> bool:
    return bool(row.get("context") and str(row["context"]).strip())


def _pick(rng: random.Random, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    return candidates[rng.randrange(len(candidates))]


def plan_pairs(
    rows: list[dict[str, Any]],
    strategy: str,
    *,
    n_pairs: int = 1,
    seed: int = 0,
    file: str | Path | None = None,
) -> list[PairPlan]:
    """The pairs to generate for ``rows`` (dicts in the prompts schema), in row order."""
    if strategy not in GENERATION_STRATEGIES:
        raise ValueError(
            f"unknown strategy {strategy!r}; choose one of {', '.join(GENERATION_STRATEGIES)}"
        )
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    parts = BOTH_PARTS if strategy == BOTH else (strategy,)
    needs_context = strategy in ("missing-context", "random-context", BOTH)
    for number, row in enumerate(rows, start=1):
        if needs_context and not _has_context(row):
            raise InputError(
                f"strategy '{strategy}' needs a user context on every row",
                file=file,
                row=number,
                field="context",
            )
    pools = _context_pools(rows) if "random-context" in parts else {}
    plans = []
    for number, row in enumerate(rows, start=1):
        for k in range(n_pairs):
            pair_id = row["id"] if n_pairs == 1 else f"{row['id']}#{k}"
            pair_seed = derive_seed(seed, pair_id)
            for part in parts:
                part_rng = random.Random(derive_seed(seed, pair_id, "negative"))
                chosen, rejected, source = _condition(
                    part, row, rows, pools, part_rng, file, number
                )
                plans.append(
                    PairPlan(
                        id=pair_id if len(parts) == 1 else f"{pair_id}/{part}",
                        prompt_id=row["id"],
                        prompt=row["prompt"],
                        context=row.get("context") if part != "random-prompt" else None,
                        strategy=part,
                        negative_source=source,
                        chosen_messages=chosen,
                        rejected_messages=rejected,
                        seed=pair_seed,
                    )
                )
    return plans


def _context_pools(rows: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    pools: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        pools[row.get("context_group")].append(row)
    return pools


def _condition(
    strategy: str,
    row: dict[str, Any],
    rows: list[dict[str, Any]],
    pools: dict[str | None, list[dict[str, Any]]],
    rng: random.Random,
    file: str | Path | None,
    number: int,
) -> tuple[list[Message], list[Message], str]:
    prompt, context = row["prompt"], row.get("context")
    if strategy == "missing-context":
        return build_messages(prompt, context), build_messages(prompt), NO_NEGATIVE_SOURCE
    if strategy == "random-context":
        group = row.get("context_group")
        own = context.strip()
        candidates = [r for r in pools[group] if r["context"].strip() != own]
        if not candidates:
            where = f"context_group {group!r}" if group else "the ungrouped contexts"
            raise InputError(
                f"no other context to draw from in {where}: random-context needs at least "
                "two distinct contexts per pool",
                file=file,
                row=number,
                field="context_group" if group else "context",
            )
        other = _pick(rng, candidates)
        return (
            build_messages(prompt, context),
            build_messages(prompt, other["context"]),
            other["id"],
        )
    if strategy == "random-prompt":
        candidates = [r for r in rows if r["prompt"].strip() != prompt.strip()]
        if not candidates:
            raise InputError(
                "random-prompt needs at least two distinct prompts", file=file, field="prompt"
            )
        other = _pick(rng, candidates)
        return build_messages(prompt), build_messages(other["prompt"]), other["id"]
    # "prompt": (x, c) is one unit; the negative is another unit.
    unit = (prompt.strip(), (context or "").strip())
    candidates = [
        r for r in rows if (r["prompt"].strip(), (r.get("context") or "").strip()) != unit
    ]
    if not candidates:
        raise InputError(
            "strategy 'prompt' needs at least two distinct (prompt, context) units",
            file=file,
            field="prompt",
        )
    other = _pick(rng, candidates)
    return (
        build_messages(prompt, context),
        build_messages(other["prompt"], other.get("context")),
        other["id"],
    )
