"""Where the user's context goes in the conversation: the prompted default model on the dev split.

    python scripts/probe_context_placement.py user_block system system_plain

For every row of ``builtin:personalization-dev`` it samples 4 responses (vLLM backend,
temperature 0.7, 128 new tokens) with the context written one way, and prints one JSON line
per way: verifiable adherence (over rows with checkable items), the share of responses that
restate the user's message (``evaluation.copying``), the share cut at the token limit and the
mean length. The ways:

- ``user_block``: the request, then the requirements block of ``prompts/user_turn_with_context.txt``
  in the user turn (the project's default);
- ``system``: the context in a system turn after a one-sentence lead-in, the request alone in
  the user turn;
- ``system_plain``: the context alone as the system turn;
- ``none``: no context at all (what the rejected side of a missing-context pair sees).
"""

from __future__ import annotations

import json
import sys
import time

SYSTEM_LEAD_IN = (
    "You are a helpful assistant. The user you are talking to has asked you to follow these "
    "preferences in every answer: "
)


def conversations(row: dict) -> dict[str, list[dict[str, str]]]:
    from mipo_engine.chat import build_messages

    return {
        "user_block": build_messages(row["prompt"], row["context"]),
        "system": [
            {"role": "system", "content": SYSTEM_LEAD_IN + row["context"]},
            {"role": "user", "content": row["prompt"]},
        ],
        "system_plain": [
            {"role": "system", "content": row["context"]},
            {"role": "user", "content": row["prompt"]},
        ],
        "none": build_messages(row["prompt"], None),
    }


def main() -> None:
    from mipo_engine.backends.base import GenerationRequest, SamplingConfig
    from mipo_engine.backends.registry import create_backend
    from mipo_engine.chat import user_turn
    from mipo_engine.evaluation.copying import RESTATE_THRESHOLD, copy_overlap
    from mipo_engine.evaluation.personalization import adherence_counts
    from mipo_engine.evaluation.tasks import get_task, load_items

    rows = load_items(get_task("personalization"), "builtin:personalization-dev")
    sampling = SamplingConfig(max_new_tokens=128, temperature=0.7, top_p=1.0)
    backend = create_backend("vllm", None, show_progress=False)
    try:
        for way in sys.argv[1:] or ["user_block", "system", "system_plain", "none"]:
            started = time.perf_counter()
            requests = [
                GenerationRequest(
                    f"{row['id']}#{sample}", conversations(row)[way], 1000 * sample + i
                )
                for i, row in enumerate(rows)
                for sample in range(4)
            ]
            completions = backend.generate(requests, sampling)
            shares, overlaps, cut, tokens = [], [], 0, 0
            for index, completion in enumerate(completions):
                row = rows[index // 4]
                checkable, met = adherence_counts(row["context_items"], completion.text)
                if checkable:
                    shares.append(met / checkable)
                overlaps.append(
                    copy_overlap(completion.text, user_turn(row["prompt"], row["context"]))
                )
                cut += completion.finish_reason == "length"
                tokens += completion.num_tokens
            n = len(completions)
            summary = {
                "way": way,
                "responses": n,
                "checkable_responses": len(shares),
                "adherence": sum(shares) / len(shares),
                "restates": sum(o >= RESTATE_THRESHOLD for o in overlaps) / n,
                "mean_copy_overlap": sum(overlaps) / n,
                "at_token_limit": cut / n,
                "mean_tokens": tokens / n,
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(json.dumps(summary), flush=True)
    finally:
        backend.close()


if __name__ == "__main__":
    main()
