"""Pairing rules of the negative strategies (seed 004 sec. 4, Table 5; DESIGN.md sec. 3)."""

from __future__ import annotations

import dataclasses

import pytest

from mipo_engine.errors import InputError
from mipo_engine.strategies import NO_NEGATIVE_SOURCE, plan_pairs


def _row(i: int, context: str | None = None, group: str | None = None, prompt: str | None = None):
    return {
        "id": f"r{i}",
        "prompt": prompt or f"prompt number {i}",
        "context": context,
        "context_items": [context] if context else None,
        "context_group": group,
        "task": "personalization" if context else "general",
        "answer": None,
        "choices": None,
        "source": "test",
    }


def _user_text(messages: list[dict[str, str]]) -> str:
    assert len(messages) == 1 and messages[0]["role"] == "user"
    return messages[0]["content"]


@pytest.fixture
def grouped_rows():
    rows = [_row(i, f"independent context {i}") for i in range(6)]
    rows += [_row(10 + i, f"cooking context {i}", "cooking") for i in range(4)]
    rows += [_row(20 + i, f"travel context {i}", "travel") for i in range(3)]
    return rows


def test_missing_context_conditions_chosen_on_context_only(grouped_rows):
    plans = plan_pairs(grouped_rows, "missing-context", seed=1)
    assert [p.id for p in plans] == [r["id"] for r in grouped_rows]
    for plan, row in zip(plans, grouped_rows, strict=True):
        assert row["context"] in _user_text(plan.chosen_messages)
        assert _user_text(plan.rejected_messages) == row["prompt"]
        assert plan.negative_source == NO_NEGATIVE_SOURCE


def test_random_context_draws_another_context_from_the_eligible_pool(grouped_rows):
    by_id = {r["id"]: r for r in grouped_rows}
    for seed in range(5):
        for plan in plan_pairs(grouped_rows, "random-context", seed=seed, n_pairs=3):
            row = by_id[plan.prompt_id]
            donor = by_id[plan.negative_source]
            assert donor["context"] != row["context"]
            # Grouped rows borrow only from their group; ungrouped only from ungrouped rows.
            assert donor["context_group"] == row["context_group"]
            rejected = _user_text(plan.rejected_messages)
            assert donor["context"] in rejected and row["prompt"] in rejected
            assert row["context"] not in rejected


def test_random_prompt_never_pairs_a_prompt_with_itself():
    rows = [_row(i) for i in range(5)] + [_row(9, prompt="prompt number 0")]  # a repeated text
    by_id = {r["id"]: r for r in rows}
    for seed in range(20):
        for plan in plan_pairs(rows, "random-prompt", seed=seed):
            other = by_id[plan.negative_source]
            assert other["prompt"] != plan.prompt
            assert _user_text(plan.chosen_messages) == plan.prompt
            assert _user_text(plan.rejected_messages) == other["prompt"]


def test_prompt_strategy_uses_joint_units(grouped_rows):
    by_id = {r["id"]: r for r in grouped_rows}
    for plan in plan_pairs(grouped_rows, "prompt", seed=3):
        other = by_id[plan.negative_source]
        assert (other["prompt"], other["context"]) != (plan.prompt, plan.context)
        assert other["context"] in _user_text(plan.rejected_messages)


def test_plans_are_deterministic_for_a_seed_and_independent_of_other_rows(grouped_rows):
    first = plan_pairs(grouped_rows, "random-context", seed=7, n_pairs=2)
    again = plan_pairs(grouped_rows, "random-context", seed=7, n_pairs=2)
    assert first == again
    other_seed = plan_pairs(grouped_rows, "random-context", seed=8, n_pairs=2)
    assert [p.negative_source for p in first] != [p.negative_source for p in other_seed]
    assert len({p.chosen_seed for p in first}) == len(first)
    assert all(p.chosen_seed != p.rejected_seed for p in first)


def test_n_pairs_gives_distinct_ids_and_seeds(grouped_rows):
    plans = plan_pairs(grouped_rows[:2], "missing-context", n_pairs=3)
    assert [p.id for p in plans] == ["r0#0", "r0#1", "r0#2", "r1#0", "r1#1", "r1#2"]
    assert len({p.seed for p in plans}) == 6


def test_both_plans_each_context_strategy_exactly_as_alone(grouped_rows):
    both = plan_pairs(grouped_rows, "both", seed=5, n_pairs=2)
    missing = plan_pairs(grouped_rows, "missing-context", seed=5, n_pairs=2)
    random_context = plan_pairs(grouped_rows, "random-context", seed=5, n_pairs=2)
    assert len(both) == 2 * len(missing)
    for index, (m, r) in enumerate(zip(missing, random_context, strict=True)):
        pair_m, pair_r = both[2 * index], both[2 * index + 1]
        assert pair_m == dataclasses.replace(m, id=f"{m.id}/missing-context")
        assert pair_r == dataclasses.replace(r, id=f"{r.id}/random-context")
        assert pair_m.chosen_messages == pair_r.chosen_messages
        assert pair_m.chosen_seed == pair_r.chosen_seed
    assert len({p.id for p in both}) == len(both)


def test_both_needs_a_context_on_every_row():
    with pytest.raises(InputError) as error:
        plan_pairs([_row(0, "ctx"), _row(1, None)], "both", file="p.parquet")
    assert error.value.row == 2 and error.value.field == "context"


def test_context_strategies_require_a_context_on_every_row():
    rows = [_row(0, "ctx"), _row(1, None)]
    with pytest.raises(InputError) as error:
        plan_pairs(rows, "missing-context", file="p.parquet")
    assert error.value.row == 2 and error.value.field == "context"
    assert "p.parquet" in str(error.value)


def test_random_context_needs_two_distinct_contexts_in_a_group():
    rows = [_row(0, "same", "g"), _row(1, "same", "g"), _row(2, "other")]
    with pytest.raises(InputError, match="context_group 'g'"):
        plan_pairs(rows, "random-context")


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="missing-context, random-context"):
        plan_pairs([_row(0, "c")], "random-contexts")
