"""Online rewards (``training.rewards``) against independent computations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mipo_engine.backends.hf import HFBackend
from mipo_engine.training.online import alt_prompts, prompt_records
from mipo_engine.training.rewards import (
    REWARDS,
    JudgeReward,
    MIReward,
    RewardItem,
    VerifyReward,
    WeightedReward,
    build_reward,
    verifiable,
)
from tests.scripted_backend import ScriptedBackend, StructuredScriptedBackend


def _plain_logp(model, tokenizer, messages, response: str) -> float:
    """log p(response + EOS | chat-rendered messages), summed, from one plain forward pass.

    The prompt is the chat template's text with BOS in front, the response its own tokens
    followed by EOS (the completion ends there): the sum over response positions t of
    log softmax(logits[t - 1])[token_t].
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prompt[:1] != [tokenizer.bos_token_id]:
        prompt = [tokenizer.bos_token_id, *prompt]
    answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logps = torch.log_softmax(logits, dim=-1)
    return sum(float(logps[len(prompt) + k - 1, tok]) for k, tok in enumerate(answer))


def test_mi_reward_equals_two_plain_forward_passes(tiny_model_dir: Path) -> None:
    backend = HFBackend(str(tiny_model_dir), device="cpu", dtype="float32", show_progress=False)
    model, tokenizer = backend.model, backend.tokenizer
    items = [
        RewardItem(
            "Give me a tip for learning to cook.", "I prefer short answers.", "Start small."
        ),
        RewardItem("Give me a tip for learning to cook.", "Be formal.", "Practice often."),
        RewardItem("What is the capital of France?", None, "Paris.", alt_prompt="Be formal."),
    ]
    got = MIReward(backend)(items)

    from mipo_engine.chat import build_messages  # the conditioning contract (DESIGN.md sec. 3)

    expected = []
    for item in items:
        first = build_messages(item.prompt, item.context)
        second = build_messages(item.prompt if item.context else item.alt_prompt)
        expected.append(
            _plain_logp(model, tokenizer, first, item.completion)
            - _plain_logp(model, tokenizer, second, item.completion)
        )
    assert got == pytest.approx(expected, abs=1e-4)
    assert all(abs(v) > 1e-6 for v in got)  # the two conditionings really differ
    # The single-item form is the same function.
    one = MIReward(backend).score(items[0].prompt, items[0].context, items[0].completion)
    assert one == pytest.approx(expected[0], abs=1e-4)


def test_mi_reward_needs_an_alternative_prompt_without_context(tiny_model_dir: Path) -> None:
    backend = HFBackend(str(tiny_model_dir), device="cpu", show_progress=False)
    with pytest.raises(ValueError, match="alt_prompt"):
        MIReward(backend)([RewardItem("What is 2+2?", None, "4")])


def _judge_script(text: str, call: int) -> str:
    """Scores by the reply being judged; "garbled" replies are unreadable every time,
    "late" ones only on the first ask."""
    text = text.split("=== Reply to evaluate ===")[-1]
    if "garbled" in text:
        return "I cannot decide, maybe a 3 or 4."
    if "late" in text:
        return "hmm" if call == 0 else "Feedback: ok.\n[RESULT] 2"
    if "- " in text:
        return "Feedback: follows the list request.\n[RESULT] 5"
    return "Feedback: generic.\n[RESULT] 1"


def test_judge_reward_against_a_scripted_backend() -> None:
    backend = ScriptedBackend(_judge_script)
    reward = JudgeReward(backend, retries=1)
    items = [
        RewardItem("Tips?", "Use bullet points.", "- a bullet\n- another bullet"),
        RewardItem("Tips?", "Use bullet points.", "plain prose"),
        RewardItem("Tips?", "Use bullet points.", "garbled reply"),
        RewardItem("Tips?", "Use bullet points.", "late answer"),
    ]
    assert reward(items) == [5.0, 1.0, None, 2.0]
    # Unreadable replies are recorded, not scored 0; only they were asked again.
    assert reward.unparsed == 1
    assert reward.unparsed_replies[0]["reply"].startswith("I cannot decide")
    assert len(backend.requests) == 4 + 2
    asked = ScriptedBackend.text_of(backend.requests[0].messages)
    assert "Use bullet points." in asked and "Tips?" in asked and "[RESULT]" in asked
    assert backend.samplings[0].temperature == 0


def test_judge_reward_uses_constrained_decoding_where_the_backend_offers_it() -> None:
    """A backend with ``generate_structured`` is asked for one of "1".."5" directly."""

    def script(text: str, call: int) -> str:
        return "4" if "- " in text.split("=== Reply to evaluate ===")[-1] else "2"

    backend = StructuredScriptedBackend(script)
    reward = JudgeReward(backend)
    items = [
        RewardItem("Tips?", "Use bullet points.", "- a bullet"),
        RewardItem("Tips?", "Use bullet points.", "prose"),
    ]
    assert reward(items) == [4.0, 2.0]
    assert backend.structured_calls == 1 and reward.unparsed == 0


def test_expected_judge_reading_against_plain_forward_passes(tiny_model_dir: Path) -> None:
    """reading="expected": sum_k k * p(k) with p(k) proportional to the probability that the
    judge's whole reply is "k" (digit, then EOS), from plain forward passes, one per k."""
    from mipo_engine.training.rewards import rlaif_messages

    backend = HFBackend(str(tiny_model_dir), device="cpu", dtype="float32", show_progress=False)
    model, tokenizer = backend.model, backend.tokenizer
    items = [
        RewardItem("Tips?", "Use bullet points.", "- a bullet\n- another bullet"),
        RewardItem("Tips?", "Use bullet points.", "plain prose"),
        RewardItem("Plan a trip.", "I travel with a dog.", "Pick a pet-friendly hotel."),
    ]
    reward = JudgeReward(backend, reading="expected")
    got = reward(items)

    expected = []
    for item in items:
        logps = torch.tensor(
            [_plain_logp(model, tokenizer, rlaif_messages(item), d) for d in "12345"]
        )
        probs = torch.softmax(logps, dim=0)
        expected.append(float(sum((k + 1) * probs[k] for k in range(5))))
    assert got == pytest.approx(expected, abs=1e-5)
    assert all(1.0 <= v <= 5.0 for v in got)
    assert len({round(v, 6) for v in got}) == 3  # the readings differ by reply
    assert reward.unparsed == 0
    # Built by name, through judge+mi, the same reading reaches the judge part.
    both = build_reward("judge+mi", reference=backend, judge=backend, judge_reading="expected")
    mi = MIReward(backend)(items)
    assert both(items) == pytest.approx(
        [a + b for a, b in zip(expected, mi, strict=True)], abs=1e-4
    )


def test_expected_judge_reading_needs_log_probs() -> None:
    from mipo_engine.backends.base import Backend

    class NoScores(ScriptedBackend):
        score = Backend.score  # a backend that cannot score text

    with pytest.raises(ValueError, match="expected judge reading needs the judge"):
        JudgeReward(NoScores(_judge_script), reading="expected")
    with pytest.raises(ValueError, match="unknown judge reading 'mean'"):
        JudgeReward(ScriptedBackend(_judge_script), reading="mean")  # type: ignore[arg-type]


def test_judge_plus_mi_is_the_weighted_sum(tiny_model_dir: Path) -> None:
    judge = ScriptedBackend(_judge_script)
    reference = HFBackend(str(tiny_model_dir), device="cpu", show_progress=False)
    items = [
        RewardItem("Tips?", "Use bullet points.", "- one bullet"),
        RewardItem("Tips?", "Use bullet points.", "garbled"),
    ]
    mi = MIReward(reference)(items)
    combined = build_reward(
        "judge+mi", reference=reference, judge=judge, judge_weight=0.5, mi_weight=2.0
    )
    assert isinstance(combined, WeightedReward)
    got = combined(items)
    assert got[0] == pytest.approx(0.5 * 5.0 + 2.0 * mi[0], abs=1e-5)
    assert got[1] is None


def test_verify_reward_against_gold_answers() -> None:
    reward = VerifyReward()
    items = [
        RewardItem("2+2?", None, "2 and 2 make 4.\n#### 4", task="math", answer="4"),
        RewardItem("2+3?", None, "#### 6", task="math", answer="5"),
        RewardItem("3*3?", None, "It is 9", task="math", answer="9.0"),
        RewardItem("Pick", None, "The answer is: B", task="mcq", answer="B", choices=["x", "y"]),
        RewardItem("Pick", None, "The answer is: A", task="mcq", answer="B", choices=["x", "y"]),
        RewardItem(
            "Tips?",
            "ctx",
            "one two three",
            task="personalization",
            context_items=[
                "Answer in at most 5 words.",
                "Use exactly 2 bullet points.",
                "Be kind.",
            ],
        ),
    ]
    got = reward(items)
    assert got[:5] == [1.0, 0.0, 1.0, 1.0, 0.0]
    # Two verifiable items (word limit met, bullets missing); "Be kind." is not checkable.
    assert got[5] == pytest.approx(0.5)
    assert verifiable({"task": "math", "answer": "3"})
    assert not verifiable({"task": "math", "answer": None})
    assert not verifiable({"task": "general", "context_items": ["Be kind."]})


def test_registry_and_builder_errors() -> None:
    assert set(REWARDS) == {"mi", "judge", "judge+mi", "verify"}
    with pytest.raises(ValueError, match="unknown reward"):
        build_reward("nope")
    with pytest.raises(ValueError, match="judge backend"):
        build_reward("judge")


def test_alt_prompts_are_other_prompts_and_seeded() -> None:
    rows = [{"id": f"r{i}", "prompt": f"prompt {i}", "context": None} for i in range(5)]
    rows.append({"id": "c", "prompt": "with context", "context": "Be formal."})
    picked = alt_prompts(rows, seed=3)
    assert picked == alt_prompts(rows, seed=3)
    assert picked[-1] is None
    for row, alt in zip(rows[:-1], picked[:-1], strict=True):
        assert alt is not None and alt != row["prompt"]


def test_prompt_records_condition_on_the_context() -> None:
    import polars as pl

    frame = pl.DataFrame(
        {"id": ["a", "b"], "prompt": ["Tips?", "More?"], "context": ["Be formal.", None],
         "task": ["personalization", "general"]}
    )  # fmt: skip
    records = prompt_records(frame, seed=0)
    assert "Be formal." in records[0]["prompt"][0]["content"]
    assert records[1]["prompt"] == [{"role": "user", "content": "More?"}]
    assert records[1]["alt_prompt"] == "Tips?"
